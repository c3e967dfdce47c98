"""The family classes: ``MetaFormer`` (``metaformer.py``) with one family's table of
``presets.py`` as ``arch_settings``.

Each builds only its own presets, by full or short name (``PoolFormer(arch='s12')``), and
refuses another family's (``PoolFormer(arch='caformer_s18')`` is a ``ValueError``);
``MetaFormer`` takes any.
"""
import torch

from ...registry import register_backbone
from .metaformer import NUM_STAGES, MetaFormer
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
class RandFormer(MetaFormer):
    """RandFormer S12/S24/S36/M36/M48 (ImageNet top-1 76.6/78.2/79.5/81.2/81.4) at any size.

    ``image_size`` (int or (H, W)) and ``max_matrix_mb`` (the largest resampled matrix a
    mixer builds, fp32 MB; larger inputs are refused naming the size) set every random
    mixer's (see ``RandomMixing``). The matrices are parameters with ``requires_grad=False``:
    in the state dict (the released checkpoints load unchanged), never trained.
    """
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
    """sMLPNet tiny/small/base (ImageNet top-1 81.9/83.1/83.4) at any input size.

    ``image_size`` is the training resolution the axial weights belong to (224 for the
    released weights); ``resize_mode`` (``'interpolate'`` or ``'window'``) says how they
    apply at other sizes (see :class:`~metaformer_mm.models.mixers.SMLP`). Its mixers hold
    BatchNorm, so detection configs set ``norm_eval=True`` to keep ImageNet statistics
    under small per-GPU batches.
    """
    arch_prefix, default_arch = 'smlpnet_', 'tiny'
    arch_settings = FAMILIES['smlpnet']

