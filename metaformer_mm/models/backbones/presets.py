"""Presets of every MetaFormer family, one literal table per family.

Each family has its shared settings (``*_COMMON``) and a row per size, in the style of
mmpretrain's ``arch_settings`` (``grep caformer_s18`` finds it); keys are ``ARCH_KEYS``.
Norms: ``GN1`` GroupNorm with one group (PoolFormer's "modified layer norm"), ``LN2d`` channel
LayerNorm of NCHW maps, ``LN`` LayerNorm of (N, C) head features."""
from typing import Dict

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


IDENTITYFORMER_COMMON = dict(_BASELINES, token_mixers='identity',
                             norm_cfg=dict(type='GN1', eps=1e-6, bias=False))
IDENTITYFORMER = {
    'identityformer_s12': dict(depths=[2, 2, 6, 2], dims=[64, 128, 320, 512]),
    'identityformer_s24': dict(depths=[4, 4, 12, 4], dims=[64, 128, 320, 512]),
    'identityformer_s36': dict(depths=[6, 6, 18, 6], dims=[64, 128, 320, 512]),
    'identityformer_m36': dict(depths=[6, 6, 18, 6], dims=[96, 192, 384, 768]),
    'identityformer_m48': dict(depths=[8, 8, 24, 8], dims=[96, 192, 384, 768]),
}

# RandFormer: identity mixing in stages 1-2, frozen random token mixing in stages 3-4 at the
# grids of 224x224 inputs (the released weights: 14x14 and 7x7 tokens).
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


CAFORMER_COMMON = dict(CONVFORMER_COMMON,
                       token_mixers=[_SEPCONV, _SEPCONV, _ATTENTION, _ATTENTION])
CAFORMER = {
    'caformer_s18': dict(depths=[3, 3, 9, 3], dims=[64, 128, 320, 512]),
    'caformer_s36': dict(depths=[3, 12, 18, 3], dims=[64, 128, 320, 512]),
    'caformer_m36': dict(depths=[3, 12, 18, 3], dims=[96, 192, 384, 576]),
    'caformer_b36': dict(depths=[3, 12, 18, 3], dims=[128, 256, 512, 768]),
}

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

# Family -> (common settings, size table).
FAMILY_TABLES = {
    'poolformer': (POOLFORMER_COMMON, POOLFORMER),
    'poolformerv2': (POOLFORMERV2_COMMON, POOLFORMERV2),
    'identityformer': (IDENTITYFORMER_COMMON, IDENTITYFORMER),
    'randformer': (RANDFORMER_COMMON, RANDFORMER),
    'convformer': (CONVFORMER_COMMON, CONVFORMER),
    'caformer': (CAFORMER_COMMON, CAFORMER),
    'smlpnet': (SMLPNET_COMMON, SMLPNET),
}

# Full settings by family: {family: {preset name: settings}}.
FAMILIES: Dict[str, Dict[str, Dict]] = {
    family: {name: {**common, **row} for name, row in table.items()}
    for family, (common, table) in FAMILY_TABLES.items()}

# Every preset by its full name (``MetaFormer(arch='caformer_s18')``).
ARCH_SETTINGS: Dict[str, Dict] = {
    name: settings for presets in FAMILIES.values() for name, settings in presets.items()}
