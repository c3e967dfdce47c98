"""Backbones registered for mmdet and mmseg."""
from .families import (CAFormer, ConvFormer, IdentityFormer, PoolFormer, PoolFormerV2,
                       RandFormer, SMLPNet)
from .metaformer import MetaFormer
from .presets import ARCH_SETTINGS

__all__ = ['ARCH_SETTINGS', 'MetaFormer', 'PoolFormer', 'PoolFormerV2', 'IdentityFormer',
           'ConvFormer', 'CAFormer', 'SMLPNet', 'RandFormer']
