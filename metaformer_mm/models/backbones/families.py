"""The family classes: ``MetaFormer`` restricted to one family's presets (``presets.py``).

Each takes its short names (``PoolFormer(arch='s12')``) and refuses another family's preset
(``PoolFormer(arch='caformer_s18')`` is a ``ValueError``); ``MetaFormer`` takes any.
"""
from ...registry import register_backbone
from .metaformer import MetaFormer
from .presets import FAMILIES


@register_backbone
class PoolFormer(MetaFormer):
    """PoolFormer S12/S24/S36/M36/M48 (https://arxiv.org/abs/2111.11418): pooling mixer,
    GroupNorm(1), layer scale."""
    arch_prefix, default_arch = 'poolformer_', 's12'
    arch_settings = FAMILIES['poolformer']


@register_backbone
class PoolFormerV2(MetaFormer):
    """PoolFormerV2 S12..M48 of the MetaFormer baselines (https://arxiv.org/abs/2210.13452):
    StarReLU, bias-free norms."""
    arch_prefix, default_arch = 'poolformerv2_', 's12'
    arch_settings = FAMILIES['poolformerv2']


@register_backbone
class IdentityFormer(MetaFormer):
    """IdentityFormer S12..M48 of the MetaFormer baselines (no token mixing at all)."""
    arch_prefix, default_arch = 'identityformer_', 's12'
    arch_settings = FAMILIES['identityformer']


@register_backbone
class ConvFormer(MetaFormer):
    """ConvFormer S18/S36/M36/B36: separable-conv mixer in every stage."""
    arch_prefix, default_arch = 'convformer_', 's18'
    arch_settings = FAMILIES['convformer']


@register_backbone
class CAFormer(MetaFormer):
    """CAFormer S18/S36/M36/B36: separable convs in stages 0-1, attention in stages 2-3."""
    arch_prefix, default_arch = 'caformer_', 's18'
    arch_settings = FAMILIES['caformer']
