"""The family classes: ``MetaFormer`` with one family's table of ``presets.py``, built by full or
short name (``PoolFormer(arch='s12')``); another family's preset is refused."""
import torch

from ...registry import register_backbone
from .metaformer import NUM_STAGES, MetaFormer
from .presets import FAMILIES


@register_backbone
class PoolFormer(MetaFormer):
    """PoolFormer S12..M48 (https://arxiv.org/abs/2111.11418): pooling mixer, GroupNorm(1)."""
    arch_prefix, default_arch = 'poolformer_', 's12'
    arch_settings = FAMILIES['poolformer']


@register_backbone
class PoolFormerV2(MetaFormer):
    """PoolFormerV2 S12..M48 of the MetaFormer baselines (https://arxiv.org/abs/2210.13452)."""
    arch_prefix, default_arch = 'poolformerv2_', 's12'
    arch_settings = FAMILIES['poolformerv2']


@register_backbone
class IdentityFormer(MetaFormer):
    """IdentityFormer S12..M48: no token mixing at all."""
    arch_prefix, default_arch = 'identityformer_', 's12'
    arch_settings = FAMILIES['identityformer']


@register_backbone
class RandFormer(MetaFormer):
    """RandFormer S12..M48: frozen random token mixing in stages 2-3, at any input size
    (``image_size`` and ``max_matrix_mb`` set every random mixer's, see ``RandomMixing``)."""
    arch_prefix, default_arch = 'randformer_', 's12'
    arch_settings = FAMILIES['randformer']

    def _check_input(self, x: torch.Tensor) -> None:
        super()._check_input(x)
        stride = self.stem.conv.stride[0] * 2 ** (NUM_STAGES - 1)
        if x.shape[-2] < stride or x.shape[-1] < stride:
            raise ValueError(f'RandFormer needs an input x of at least {stride}x{stride} pixels '
                             f'(one token in stage 4, stride {stride}), got shape '
                             f'{tuple(x.shape)}')


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


@register_backbone
class SMLPNet(MetaFormer):
    """sMLPNet tiny/small/base at any input size: ``image_size`` is the size the axial weights
    were trained at, ``resize_mode`` how they apply at others (see ``SMLP``). Its mixers hold
    BatchNorm, hence ``norm_eval=True`` in the detection configs."""
    arch_prefix, default_arch = 'smlpnet_', 'tiny'
    arch_settings = FAMILIES['smlpnet']
