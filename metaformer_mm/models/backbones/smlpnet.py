"""sMLPNet ("Sparse MLP for Image Recognition", AAAI 2022) as a MetaFormer preset.

sMLPNet is a MetaFormer whose token mixer is :class:`~metaformer_mm.models.mixers.SMLP`
(depthwise conv block + axial MLPs, with BatchNorm inside and no norm before it), whose
channel MLP is preceded by a channel LayerNorm and expands by 3, and whose stem and
downsampling are bias-free patch convs (4x4, then 2x2). Nothing else differs, so it reuses
the MetaFormer stages, output norms, freezing and weight loading. Presets: ``presets.py``.
"""
from typing import Dict, Union

from ...registry import register_backbone
from .metaformer import MetaFormer


@register_backbone
class SMLPNet(MetaFormer, family='smlpnet'):
    """sMLPNet tiny/small/base (ImageNet top-1 81.9/83.1/83.4) at any input size.

    ``image_size`` is the training resolution the axial weights belong to (224 for the
    released weights); ``resize_mode`` (``'interpolate'`` or ``'window'``) says how they
    apply at other sizes (see :class:`~metaformer_mm.models.mixers.SMLP`). Its mixers hold
    BatchNorm, so detection configs set ``norm_eval=True`` to keep ImageNet statistics
    under small per-GPU batches.
    """

    default_arch = 'tiny'

    def __init__(self, arch: Union[str, Dict, None] = None, image_size: int = 224,
                 resize_mode: str = 'interpolate', **kwargs) -> None:
        # An explicit token_mixers (keyword or in an arch dict) wins over image_size/resize_mode.
        if 'token_mixers' not in kwargs and not (isinstance(arch, dict) and 'token_mixers' in arch):
            kwargs['token_mixers'] = dict(type='smlp', image_size=image_size,
                                          resize_mode=resize_mode)
        super().__init__(arch, **kwargs)
