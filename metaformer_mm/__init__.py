"""MetaFormer backbones (PoolFormer, sMLPNet, PoolFormerV2, ConvFormer, CAFormer) for OpenMMLab 2.0.

``import metaformer_mm`` (or ``custom_imports=dict(imports=['metaformer_mm'])`` in a config)
registers the backbones for mmdet and mmseg and allow-lists the types that mmengine's own
training checkpoints hold, so ``resume`` and ``load_from`` work with ``weights_only=True``.
It also registers ``SafeCheckpointHook`` (all-or-nothing checkpoint writes) and routes
mmengine's loading of local checkpoints through ``metaformer_mm.checkpoint.read_checkpoint``
(errors that name the file and the problem), and lets mmengine find this package's configs
as ``metaformer_mm::detection/...`` in ``_base_`` (see ``metaformer_mm.zoo``).
"""
from .checkpoint import allow_mmengine_checkpoint_types
from .engine import install_checkpoint_loader
from .models import *  # noqa: F401,F403
from .version import __version__
from .zoo import register_package_configs

allow_mmengine_checkpoint_types()
install_checkpoint_loader()
register_package_configs()

__all__ = ['__version__']
