"""MetaFormer backbones (PoolFormer, sMLPNet, PoolFormerV2, ConvFormer, CAFormer) for OpenMMLab 2.0.

``import metaformer_mm`` (or ``custom_imports``) registers the backbones for mmdet and mmseg,
the hooks, ``CPUAmpOptimWrapper`` and ``CheckedCompose``, routes mmengine's checkpoint reads
through ``metaformer_mm.checkpoint`` and lets mmengine find ``metaformer_mm::`` configs (see
``engine.mmengine_internals``)."""
import torch

from .version import __version__, check_torch

check_torch(torch.__version__)

from . import datasets  # noqa: F401,E402  (registers CheckedCompose)
from .engine import mmengine_internals  # noqa: E402
from .inference import apply_bf16, enable_bf16_inference  # noqa: E402  (registers Bf16InferenceHook)
from .models import *  # noqa: F401,F403,E402
from . import accel  # noqa: F401,E402  (the eager kernels; registers itself with the model)
from .startup import register_mmengine  # noqa: E402
from mmengine.config import utils as config_utils  # noqa: E402

mmengine_internals.install()
register_mmengine(config_utils)  # the start-up hook's part, for an interpreter without it

__all__ = ['__version__', 'apply_bf16', 'enable_bf16_inference']
