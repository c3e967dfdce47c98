"""Backbones registered for mmdet and mmseg."""
from .metaformer import (ARCH_SETTINGS, CAFormer, ConvFormer, IdentityFormer, MetaFormer,
                         PoolFormer, PoolFormerV2)
from .smlpnet import SMLPNet

__all__ = ['ARCH_SETTINGS', 'MetaFormer', 'PoolFormer', 'PoolFormerV2', 'IdentityFormer',
           'ConvFormer', 'CAFormer', 'SMLPNet']
