"""Backbones registered for mmdet and mmseg."""
from .families import CAFormer, ConvFormer, IdentityFormer, PoolFormer, PoolFormerV2
from .metaformer import MetaFormer
from .presets import ARCH_SETTINGS
from .randformer import RandFormer
from .smlpnet import SMLPNet

__all__ = ['ARCH_SETTINGS', 'MetaFormer', 'PoolFormer', 'PoolFormerV2', 'IdentityFormer',
           'ConvFormer', 'CAFormer', 'SMLPNet', 'RandFormer']
