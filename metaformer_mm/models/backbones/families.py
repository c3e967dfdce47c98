"""The family classes: ``MetaFormer`` restricted to one family's presets (``presets.py``).

Each takes its short names (``PoolFormer(arch='s12')``) and refuses another family's preset
(``PoolFormer(arch='caformer_s18')`` is a ``ValueError``); ``MetaFormer`` takes any.
"""
from ...registry import register_backbone
from .metaformer import MetaFormer


@register_backbone
class PoolFormer(MetaFormer, family='poolformer'):
    """PoolFormer S12/S24/S36/M36/M48 (https://arxiv.org/abs/2111.11418): pooling mixer,
    GroupNorm(1), layer scale."""
    default_arch = 's12'


@register_backbone
class PoolFormerV2(MetaFormer, family='poolformerv2'):
    """PoolFormerV2 S12..M48 of the MetaFormer baselines (https://arxiv.org/abs/2210.13452):
    StarReLU, bias-free norms."""
    default_arch = 's12'


@register_backbone
class IdentityFormer(MetaFormer, family='identityformer'):
    """IdentityFormer S12..M48 of the MetaFormer baselines (no token mixing at all)."""
    default_arch = 's12'


@register_backbone
class ConvFormer(MetaFormer, family='convformer'):
    """ConvFormer S18/S36/M36/B36: separable-conv mixer in every stage."""
    default_arch = 's18'


@register_backbone
class CAFormer(MetaFormer, family='caformer'):
    """CAFormer S18/S36/M36/B36: separable convs in stages 0-1, attention in stages 2-3."""
    default_arch = 's18'
