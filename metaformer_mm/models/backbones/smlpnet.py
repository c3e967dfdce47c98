"""sMLPNet ("Sparse MLP for Image Recognition", AAAI 2022) as a MetaFormer preset.

sMLPNet is a MetaFormer whose token mixer is :class:`~metaformer_mm.models.mixers.SMLP`
(depthwise conv block + axial MLPs, with BatchNorm inside and no norm before it), whose
channel MLP is preceded by a channel LayerNorm and expands by 3, and whose stem and
downsampling are bias-free patch convs (4x4, then 2x2). Nothing else differs, so it reuses
the MetaFormer stages, output norms, freezing and weight loading.
"""
from typing import Dict, Union

from ...registry import register_backbone
from .metaformer import ARCH_SETTINGS, MetaFormer

_SMLP = dict(
    token_mixers=dict(type='smlp', image_size=224), mlp_ratios=3,
    norm1_cfg=None, norm_cfg=dict(type='LN2d', eps=1e-5), act_cfg=dict(type='GELU'),
    mlp_bias=True, layer_scale_init_value=None, res_scale_init_values=None,
    stem=dict(kernel_size=4, stride=4, padding=0, bias=False, post_norm=None),
    downsample=dict(kernel_size=2, stride=2, padding=0, bias=False, pre_norm=None),
    # The classifier's BatchNorm is not used for the dense maps: a channel LayerNorm
    # (as Swin/ConvNeXt detectors use) does not depend on the detection batch size.
    out_norm_cfg=dict(type='LN2d', eps=1e-6),
    head=dict(norm_cfg=dict(type='BN'), pool_first=False, mlp=False))


def _dims(width: int) -> list:
    return [width * 2 ** i for i in range(4)]


ARCH_SETTINGS.update({
    'smlpnet_tiny': dict(_SMLP, dims=_dims(80), depths=[2, 8, 14, 2]),
    'smlpnet_small': dict(_SMLP, dims=_dims(96), depths=[2, 10, 24, 2]),
    'smlpnet_base': dict(_SMLP, dims=_dims(112), depths=[2, 10, 24, 2]),
})


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

    def __init__(self, arch: Union[str, Dict, None] = None, image_size: int = 224,
                 resize_mode: str = 'interpolate', **kwargs) -> None:
        # An explicit token_mixers (keyword or in an arch dict) wins over image_size/resize_mode.
        if 'token_mixers' not in kwargs and not (isinstance(arch, dict) and 'token_mixers' in arch):
            kwargs['token_mixers'] = dict(type='smlp', image_size=image_size,
                                          resize_mode=resize_mode)
        super().__init__(arch, **kwargs)
