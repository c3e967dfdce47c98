"""RandFormer ("MetaFormer Baselines for Vision", https://arxiv.org/abs/2210.13452) at any size.

A PoolFormerV2 whose stages 1-2 do no token mixing and whose stages 3-4 mix tokens with a
frozen random matrix (:class:`~metaformer_mm.models.random_mixing.RandomMixing`), the
"MetaFormer is a Synthesizer" member of the family. The matrices belong to a native grid
(``image_size``, 224 for the released weights: 14x14 and 7x7 tokens) and are resampled for
other input sizes; presets ``randformer_s12 s24 s36 m36 m48`` are in ``presets.py``.
"""
from typing import Dict, Sequence, Union

import torch

from ...registry import register_backbone
from ..random_mixing import parse_image_size
from .metaformer import NUM_STAGES, MetaFormer


@register_backbone
class RandFormer(MetaFormer, family='randformer'):
    """RandFormer S12/S24/S36/M36/M48 (ImageNet top-1 76.6/78.2/79.5/81.2/81.4) at any size.

    Args:
        arch: ``'s12'`` ... ``'m48'`` (or a dict, see ``MetaFormer``).
        image_size: the input size (int or (H, W)) the random matrices belong to: 224 for
            the released weights. Other input sizes resample them (exact at this size).
        max_matrix_mb: largest resampled matrix (fp32, MB) a mixer builds; larger inputs
            are refused with an error naming the size (1024: about 16k tokens in stage 3).
        **kwargs: the ``MetaFormer`` arguments (``fork_feat``, ``out_indices``,
            ``frozen_stages``, ``norm_eval``, ``with_cp``, ``init_cfg``, ...).

    The matrices are parameters with ``requires_grad=False``: in the state dict (the
    released checkpoints load unchanged) but never trained and never given to an optimizer
    as trainable (no gradient, so no update and no weight decay).
    """

    default_arch = 's12'

    def __init__(self, arch: Union[str, Dict, None] = None,
                 image_size: Union[int, Sequence[int]] = 224, max_matrix_mb: float = 1024,
                 **kwargs) -> None:
        size = parse_image_size(image_size)
        # An explicit token_mixers (keyword or in an arch dict) wins over image_size.
        if 'token_mixers' not in kwargs and not (isinstance(arch, dict) and 'token_mixers' in arch):
            random = dict(type='random', image_size=size, max_matrix_mb=max_matrix_mb)
            kwargs['token_mixers'] = ['identity', 'identity', random, dict(random)]
        super().__init__(arch, **kwargs)
        self.image_size = size

    def _check_input(self, x: torch.Tensor) -> None:
        super()._check_input(x)
        stride = self.stem.conv.stride[0] * 2 ** (NUM_STAGES - 1)
        if x.shape[-2] < stride or x.shape[-1] < stride:
            raise ValueError(f'RandFormer needs an input x of at least {stride}x{stride} pixels '
                             f'(one token in stage 4, stride {stride}), got shape '
                             f'{tuple(x.shape)}')
