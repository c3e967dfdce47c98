"""The MetaFormer families: each one's presets (a literal table) and its class, side by side.

Each family has the settings its members share (``*_COMMON``) and a table of what differs
per size (depths, widths, layer-scale values), in the style of mmpretrain's
``arch_settings``: ``grep caformer_s18`` finds the line that defines it. A preset is the
family's common settings updated by its row (:func:`family_presets`). The family class
below its table is ``MetaFormer`` (``metaformer.py``) with that table as ``arch_settings``:
it builds those presets only, by full or short name (``PoolFormer(arch='s12')``), and
refuses another family's. ``ARCH_SETTINGS`` holds every preset by full name, for
``MetaFormer`` itself.

The keys are the ``MetaFormer`` architecture arguments (``ARCH_KEYS`` in ``arch.py``).
Norm names: ``GN1`` is GroupNorm with one group (PoolFormer's "modified layer norm", the
baselines' ``LayerNormGeneral(normalized_dim=(1, 2, 3))``), ``LN2d`` the channel LayerNorm of
an NCHW map, ``LN`` LayerNorm of (N, C) head features (see ``models/norms.py``).
"""
from typing import Dict

import torch

from ...registry import register_backbone
from .metaformer import NUM_STAGES, MetaFormer


def family_presets(common: Dict, table: Dict[str, Dict]) -> Dict[str, Dict]:
    """Every preset of a family: its common settings updated by each row of its table."""
    return {name: {**common, **row} for name, row in table.items()}


# --------------------------------------------------------------------------- PoolFormer
# "MetaFormer is Actually What You Need for Vision" (CVPR 2022), sail-sg/poolformer.
POOLFORMER_COMMON = dict(
    token_mixers='pooling', mlp_ratios=4, norm_cfg=dict(type='GN1', eps=1e-5),
    act_cfg=dict(type='GELU'), mlp_bias=True, res_scale_init_values=None,
    stem=dict(kernel_size=7, stride=4, padding=2, bias=True, post_norm=None),
    downsample=dict(kernel_size=3, stride=2, padding=1, bias=True, pre_norm=None),
    out_norm_cfg=dict(type='GN1', eps=1e-5),
    head=dict(norm_cfg=dict(type='GN1', eps=1e-5), pool_first=False, mlp=False))
POOLFORMER = {
    'poolformer_s12': dict(depths=[2, 2, 6, 2], dims=[64, 128, 320, 512],
                           layer_scale_init_value=1e-5),
    'poolformer_s24': dict(depths=[4, 4, 12, 4], dims=[64, 128, 320, 512],
                           layer_scale_init_value=1e-5),
    'poolformer_s36': dict(depths=[6, 6, 18, 6], dims=[64, 128, 320, 512],
                           layer_scale_init_value=1e-6),
    'poolformer_m36': dict(depths=[6, 6, 18, 6], dims=[96, 192, 384, 768],
                           layer_scale_init_value=1e-6),
    'poolformer_m48': dict(depths=[8, 8, 24, 8], dims=[96, 192, 384, 768],
                           layer_scale_init_value=1e-6),
}


@register_backbone
class PoolFormer(MetaFormer):
    """PoolFormer S12/S24/S36/M36/M48 (https://arxiv.org/abs/2111.11418): pooling mixer,
    GroupNorm(1), layer scale."""
    arch_prefix, default_arch = 'poolformer_', 's12'
    arch_settings = family_presets(POOLFORMER_COMMON, POOLFORMER)


# --------------------------------------------------------------------------- MetaFormer baselines
# "MetaFormer Baselines for Vision" (TPAMI 2024), sail-sg/metaformer: StarReLU MLPs without
# bias, bias-free norms, res-scale in stages 3-4, no layer scale, pooled-then-normed head.
_BASELINES = dict(
    mlp_ratios=4, act_cfg=dict(type='StarReLU'), mlp_bias=False, layer_scale_init_value=None,
    res_scale_init_values=[None, None, 1.0, 1.0],
    stem=dict(kernel_size=7, stride=4, padding=2, bias=True,
              post_norm=dict(type='LN2d', eps=1e-6, bias=False)),
    downsample=dict(kernel_size=3, stride=2, padding=1, bias=True,
                    pre_norm=dict(type='LN2d', eps=1e-6, bias=False)),
    out_norm_cfg=dict(type='LN2d', eps=1e-6),
    head=dict(norm_cfg=dict(type='LN', eps=1e-6), pool_first=True, mlp=False))

POOLFORMERV2_COMMON = dict(_BASELINES, token_mixers='pooling',
                           norm_cfg=dict(type='GN1', eps=1e-6, bias=False))
POOLFORMERV2 = {
    'poolformerv2_s12': dict(depths=[2, 2, 6, 2], dims=[64, 128, 320, 512]),
    'poolformerv2_s24': dict(depths=[4, 4, 12, 4], dims=[64, 128, 320, 512]),
    'poolformerv2_s36': dict(depths=[6, 6, 18, 6], dims=[64, 128, 320, 512]),
    'poolformerv2_m36': dict(depths=[6, 6, 18, 6], dims=[96, 192, 384, 768]),
    'poolformerv2_m48': dict(depths=[8, 8, 24, 8], dims=[96, 192, 384, 768]),
}


@register_backbone
class PoolFormerV2(MetaFormer):
    """PoolFormerV2 S12..M48 of the MetaFormer baselines (https://arxiv.org/abs/2210.13452):
    StarReLU, bias-free norms."""
    arch_prefix, default_arch = 'poolformerv2_', 's12'
    arch_settings = family_presets(POOLFORMERV2_COMMON, POOLFORMERV2)


IDENTITYFORMER_COMMON = dict(_BASELINES, token_mixers='identity',
                             norm_cfg=dict(type='GN1', eps=1e-6, bias=False))
IDENTITYFORMER = {
    'identityformer_s12': dict(depths=[2, 2, 6, 2], dims=[64, 128, 320, 512]),
    'identityformer_s24': dict(depths=[4, 4, 12, 4], dims=[64, 128, 320, 512]),
    'identityformer_s36': dict(depths=[6, 6, 18, 6], dims=[64, 128, 320, 512]),
    'identityformer_m36': dict(depths=[6, 6, 18, 6], dims=[96, 192, 384, 768]),
    'identityformer_m48': dict(depths=[8, 8, 24, 8], dims=[96, 192, 384, 768]),
}


@register_backbone
class IdentityFormer(MetaFormer):
    """IdentityFormer S12..M48 of the MetaFormer baselines (no token mixing at all)."""
    arch_prefix, default_arch = 'identityformer_', 's12'
    arch_settings = family_presets(IDENTITYFORMER_COMMON, IDENTITYFORMER)


# RandFormer: identity mixing in stages 1-2, a frozen random token-mixing matrix in stages 3-4
# (:class:`~metaformer_mm.models.random_mixing.RandomMixing`, the "MetaFormer is a
# Synthesizer" member); ``image_size`` is the input size the matrices belong to (224 for the
# released weights: 14x14 and 7x7 tokens), other input sizes resample them.
RANDFORMER_COMMON = dict(
    _BASELINES, norm_cfg=dict(type='GN1', eps=1e-6, bias=False),
    token_mixers=['identity', 'identity', dict(type='random', image_size=224),
                  dict(type='random', image_size=224)])
RANDFORMER = {
    'randformer_s12': dict(depths=[2, 2, 6, 2], dims=[64, 128, 320, 512]),
    'randformer_s24': dict(depths=[4, 4, 12, 4], dims=[64, 128, 320, 512]),
    'randformer_s36': dict(depths=[6, 6, 18, 6], dims=[64, 128, 320, 512]),
    'randformer_m36': dict(depths=[6, 6, 18, 6], dims=[96, 192, 384, 768]),
    'randformer_m48': dict(depths=[8, 8, 24, 8], dims=[96, 192, 384, 768]),
}


@register_backbone
class RandFormer(MetaFormer):
    """RandFormer S12/S24/S36/M36/M48 (ImageNet top-1 76.6/78.2/79.5/81.2/81.4) at any size.

    ``image_size`` (int or (H, W)) and ``max_matrix_mb`` (the largest resampled matrix a
    mixer builds, fp32 MB; larger inputs are refused naming the size) set every random
    mixer's (see ``RandomMixing``). The matrices are parameters with ``requires_grad=False``:
    in the state dict (the released checkpoints load unchanged), never trained.
    """
    arch_prefix, default_arch = 'randformer_', 's12'
    arch_settings = family_presets(RANDFORMER_COMMON, RANDFORMER)


    def _check_input(self, x: torch.Tensor) -> None:
        super()._check_input(x)
        stride = self.stem.conv.stride[0] * 2 ** (NUM_STAGES - 1)
        if x.shape[-2] < stride or x.shape[-1] < stride:
            raise ValueError(f'RandFormer needs an input x of at least {stride}x{stride} pixels '
                             f'(one token in stage 4, stride {stride}), got shape '
                             f'{tuple(x.shape)}')

# ConvFormer/CAFormer: LayerNorm (channels) without bias, MLP classifier head; M36 ends at
# 576 channels, not PoolFormer M's 768.
_MLP_HEAD = dict(norm_cfg=dict(type='LN', eps=1e-6), pool_first=True, mlp=True)
_SEPCONV = dict(type='sepconv')
_ATTENTION = dict(type='attention', head_dim=32)

CONVFORMER_COMMON = dict(_BASELINES, token_mixers=_SEPCONV, head=_MLP_HEAD,
                         norm_cfg=dict(type='LN2d', eps=1e-6, bias=False))
CONVFORMER = {
    'convformer_s18': dict(depths=[3, 3, 9, 3], dims=[64, 128, 320, 512]),
    'convformer_s36': dict(depths=[3, 12, 18, 3], dims=[64, 128, 320, 512]),
    'convformer_m36': dict(depths=[3, 12, 18, 3], dims=[96, 192, 384, 576]),
    'convformer_b36': dict(depths=[3, 12, 18, 3], dims=[128, 256, 512, 768]),
}


@register_backbone
class ConvFormer(MetaFormer):
    """ConvFormer S18/S36/M36/B36: separable-conv mixer in every stage."""
    arch_prefix, default_arch = 'convformer_', 's18'
    arch_settings = family_presets(CONVFORMER_COMMON, CONVFORMER)


CAFORMER_COMMON = dict(CONVFORMER_COMMON,
                       token_mixers=[_SEPCONV, _SEPCONV, _ATTENTION, _ATTENTION])
CAFORMER = {
    'caformer_s18': dict(depths=[3, 3, 9, 3], dims=[64, 128, 320, 512]),
    'caformer_s36': dict(depths=[3, 12, 18, 3], dims=[64, 128, 320, 512]),
    'caformer_m36': dict(depths=[3, 12, 18, 3], dims=[96, 192, 384, 576]),
    'caformer_b36': dict(depths=[3, 12, 18, 3], dims=[128, 256, 512, 768]),
}


@register_backbone
class CAFormer(MetaFormer):
    """CAFormer S18/S36/M36/B36: separable convs in stages 0-1, attention in stages 2-3."""
    arch_prefix, default_arch = 'caformer_', 's18'
    arch_settings = family_presets(CAFORMER_COMMON, CAFORMER)


# --------------------------------------------------------------------------- sMLPNet
# "Sparse MLP for Image Recognition" (AAAI 2022), microsoft/SPACH: the sMLP mixer (with
# BatchNorm inside, no norm before it), a channel LayerNorm before an MLP of ratio 3,
# bias-free patch convs (4x4 stem, 2x2 downsampling). Nothing else differs from a MetaFormer.
SMLPNET_COMMON = dict(
    token_mixers=dict(type='smlp', image_size=224), mlp_ratios=3,
    norm1_cfg=None, norm_cfg=dict(type='LN2d', eps=1e-5), act_cfg=dict(type='GELU'),
    mlp_bias=True, layer_scale_init_value=None, res_scale_init_values=None,
    stem=dict(kernel_size=4, stride=4, padding=0, bias=False, post_norm=None),
    downsample=dict(kernel_size=2, stride=2, padding=0, bias=False, pre_norm=None),
    # The classifier's BatchNorm is not used for the dense maps: a channel LayerNorm
    # (as Swin/ConvNeXt detectors use) does not depend on the detection batch size.
    out_norm_cfg=dict(type='LN2d', eps=1e-6),
    head=dict(norm_cfg=dict(type='BN'), pool_first=False, mlp=False))
SMLPNET = {
    'smlpnet_tiny': dict(depths=[2, 8, 14, 2], dims=[80, 160, 320, 640]),
    'smlpnet_small': dict(depths=[2, 10, 24, 2], dims=[96, 192, 384, 768]),
    'smlpnet_base': dict(depths=[2, 10, 24, 2], dims=[112, 224, 448, 896]),
}



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
    arch_settings = family_presets(SMLPNET_COMMON, SMLPNET)


# Full settings by family: {family: {preset name: settings}}.
FAMILIES: Dict[str, Dict[str, Dict]] = {
    cls.arch_prefix[:-1]: cls.arch_settings for cls in (
        PoolFormer, PoolFormerV2, IdentityFormer, RandFormer, ConvFormer, CAFormer, SMLPNet)}

# Every preset by its full name (``MetaFormer(arch='caformer_s18')``).
ARCH_SETTINGS: Dict[str, Dict] = {
    name: settings for presets in FAMILIES.values() for name, settings in presets.items()}
