"""Normalization layers of the MetaFormer family, built from mmcv-style ``norm_cfg`` dicts.

All layers take NCHW tensors. ``GN`` with one group normalizes C, H and W together
(PoolFormer's "modified layer norm"); ``LN2d`` normalizes over channels only (the
MetaFormer baselines' ``LayerNorm``); either may drop its bias (``bias=False``) as the
baselines do. ``BN`` and ``SyncBN`` go through mmcv.
"""
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer

NormCfg = Optional[Dict]


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (one group by default) whose bias can be switched off."""

    def __init__(self, num_channels: int, num_groups: int = 1, eps: float = 1e-5,
                 affine: bool = True, bias: bool = True) -> None:
        super().__init__(num_groups, num_channels, eps=eps, affine=affine)
        if affine and not bias:
            self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in fp32 even under autocast: GroupNorm over C*H*W elements overflows in fp16.
        if x.dtype in (torch.float16, torch.bfloat16):
            weight = None if self.weight is None else self.weight.float()
            bias = None if self.bias is None else self.bias.float()
            return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor (the baselines' ``LayerNorm``)."""

    def __init__(self, num_channels: int, eps: float = 1e-6, affine: bool = True,
                 bias: bool = True) -> None:
        super().__init__()
        self.num_channels = num_channels
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_channels)) if affine and bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # On a channels-last tensor the permuted view is contiguous: no copy either way.
        # A contiguous NCHW input gets a contiguous NCHW output, so NCHW models (sMLPNet)
        # stay in their layout.
        nchw = x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
        x = F.layer_norm(x.permute(0, 2, 3, 1), (self.num_channels,), self.weight, self.bias,
                         self.eps).permute(0, 3, 1, 2)
        return x.contiguous() if nchw else x

    def extra_repr(self) -> str:
        return f'{self.num_channels}, eps={self.eps}, bias={self.bias is not None}'


class LayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last axis, with an optional bias (for (N, C) head features)."""

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 bias: bool = True) -> None:
        super().__init__(num_channels, eps=eps, elementwise_affine=affine, bias=bias)


_NORMS = {'GN': GroupNorm, 'LN2d': LayerNorm2d, 'LN': LayerNorm}


def build_norm(cfg: NormCfg, num_channels: int) -> nn.Module:
    """Builds a norm layer for ``num_channels`` channels from an mmcv-style config.

    ``None`` gives ``nn.Identity``. ``GN`` defaults to one group.
    """
    if cfg is None:
        return nn.Identity()
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise TypeError(f'norm_cfg must be a dict with a "type" key or None, got {cfg!r}')
    cfg = dict(cfg)
    norm_type = cfg.pop('type')
    if norm_type in _NORMS:
        return _NORMS[norm_type](num_channels, **cfg)
    if norm_type in ('BN', 'BN2d', 'SyncBN'):
        return build_norm_layer(dict(type=norm_type, **cfg), num_channels)[1]
    raise ValueError(f'unknown norm type {norm_type!r} in norm_cfg; allowed: '
                   f'{sorted(_NORMS) + ["BN", "BN2d", "SyncBN"]}')
