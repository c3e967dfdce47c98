"""MetaFormer backbones (PoolFormer, sMLPNet, PoolFormerV2, ConvFormer, CAFormer) for OpenMMLab 2.0.

``import metaformer_mm`` (or ``custom_imports=dict(imports=['metaformer_mm'])`` in a config)
registers the backbones for mmdet and mmseg and allow-lists the types that mmengine's own
training checkpoints hold, so ``resume`` and ``load_from`` work with ``weights_only=True``.
It also registers ``SafeCheckpointHook`` (all-or-nothing checkpoint writes),
``NonFiniteGuardHook`` (stops a run at its first nan/inf), ``CPUAmpOptimWrapper`` and the
``CheckedCompose`` data pipeline (errors that name the file), and routes mmengine's loading
of local and http(s) checkpoints through ``metaformer_mm.checkpoint.read_checkpoint``
(errors that name the file and the problem; embedded configs that would run code are refused).
``enable_bf16_inference(model)`` / ``apply_bf16(cfg)``: bf16 inference with fp32
post-processing (:mod:`metaformer_mm.inference`). mmengine finds this package's configs as
``metaformer_mm::detection/...`` in ``_base_`` (see ``metaformer_mm.startup``).
"""
import torch

from .version import __version__, check_torch

check_torch(torch.__version__)

from . import datasets  # noqa: F401,E402  (registers CheckedCompose)
from .engine import mmengine_internals  # noqa: E402
from .inference import apply_bf16, enable_bf16_inference  # noqa: E402  (registers Bf16InferenceHook)
from .models import *  # noqa: F401,F403,E402
from . import accel  # noqa: F401,E402  (the eager kernels; registers itself with the model)
from .startup import register_package_configs  # noqa: E402

mmengine_internals.install()
register_package_configs()

__all__ = ['__version__', 'apply_bf16', 'enable_bf16_inference']
