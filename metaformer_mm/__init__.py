"""MetaFormer backbones (PoolFormer, sMLPNet, PoolFormerV2, ConvFormer, CAFormer) for OpenMMLab 2.0.

``import metaformer_mm`` (or ``custom_imports=dict(imports=['metaformer_mm'])`` in a config)
registers the backbones for mmdet and mmseg and allow-lists the types that mmengine's own
training checkpoints hold, so ``resume`` and ``load_from`` work with ``weights_only=True``.
It also registers ``SafeCheckpointHook`` (all-or-nothing checkpoint writes) and routes
mmengine's loading of local and http(s) checkpoints through
``metaformer_mm.checkpoint.read_checkpoint`` (errors that name the file and the problem;
embedded configs that would run code are refused).
"""
from .checkpoint import allow_mmengine_checkpoint_types
from .engine import install_checkpoint_loader
from .models import *  # noqa: F401,F403
from .version import __version__

allow_mmengine_checkpoint_types()
install_checkpoint_loader()

__all__ = ['__version__']
