"""Normalization layers of the MetaFormer family, built from mmcv-style ``norm_cfg`` dicts.

Two norms are this project's own (both NCHW, both with ``bias=False`` available as the
MetaFormer baselines use it):

* ``GN1``: GroupNorm with one group, normalizing C, H and W together (PoolFormer's "modified
  layer norm", the baselines' ``LayerNormGeneral(normalized_dim=(1, 2, 3))``);
* ``LN2d``: LayerNorm over the channels of an NCHW map (the baselines' ``LayerNorm``).

``GN`` means what it means in mmcv: GroupNorm with a required ``num_groups`` (built as
:class:`GroupNorm`, an ``nn.GroupNorm`` that also takes ``bias=False`` and keeps fp32
statistics under autocast); ``GN`` without ``num_groups`` is an error pointing to ``GN1``.
Every other type (``BN``, ``SyncBN``, ``LN``, ``IN``, a norm a user registered in mmengine's
``MODELS``) is built by ``mmcv.cnn.build_norm_layer``.
"""
import difflib
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.registry import MODELS

NormCfg = Optional[Dict]


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` (one group by default) whose bias can be switched off."""

    def __init__(self, num_channels: int, num_groups: int, eps: float = 1e-5,
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


class GroupNorm1(GroupNorm):
    """GroupNorm with one group (``GN1``): statistics over C, H and W of each sample."""

    def __init__(self, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 bias: bool = True) -> None:
        super().__init__(num_channels, 1, eps=eps, affine=affine, bias=bias)


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


# Registered for mmcv's ``build_norm_layer`` too (e.g. in a user's neck); ours are looked up
# directly below, so another package's class of the same name never replaces them here.
_OWN_NORMS = {'GN1': GroupNorm1, 'LN2d': LayerNorm2d}
if 'GN1' not in MODELS.module_dict:
    MODELS.register_module('GN1', module=GroupNorm1)
if 'LN2d' not in MODELS.module_dict:
    MODELS.register_module('LN2d', module=LayerNorm2d)


def registered_class(name: str) -> Optional[type]:
    """The class registered as ``name`` in the default scope's ``MODELS`` or its parents:
    what ``MODELS.build`` finds, without the debug log lines a registry lookup writes."""
    if '.' in name:  # 'scope.Name': let mmengine resolve the scope
        return MODELS.get(name)
    with MODELS.switch_scope_and_registry(None) as registry:
        while registry is not None:
            if name in registry.module_dict:
                return registry.module_dict[name]
            registry = registry.parent
    return None


def build_norm(cfg: NormCfg, num_channels: int) -> nn.Module:
    """Builds a norm layer for ``num_channels`` channels from an mmcv-style config.

    ``None`` gives ``nn.Identity``; see the module docstring for the names.
    """
    if cfg is None:
        return nn.Identity()
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise TypeError(f'norm_cfg must be a dict with a "type" key or None, got {cfg!r}')
    cfg = dict(cfg)
    norm_type = cfg.pop('type')
    if norm_type in _OWN_NORMS:
        groups = cfg.pop('num_groups', 1) if norm_type == 'GN1' else 1
        if groups != 1:
            raise ValueError(f"norm_cfg type='GN1' has one group by definition, got "
                             f"num_groups={groups!r}; use type='GN' with num_groups for more")
        return _OWN_NORMS[norm_type](num_channels, **cfg)
    if norm_type == 'GN':
        if 'num_groups' not in cfg:
            raise ValueError(
                "norm_cfg type='GN' needs num_groups (as in mmcv); for GroupNorm with one group "
                "(PoolFormer's modified layer norm) write type='GN1' or num_groups=1")
        return GroupNorm(num_channels, **cfg)
    norm_cls = registered_class(norm_type) if isinstance(norm_type, str) else None
    if norm_cls is None:
        known = sorted(set(_OWN_NORMS) | {'GN', 'BN', 'BN2d', 'SyncBN', 'LN', 'IN'})
        close = difflib.get_close_matches(str(norm_type), known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ''
        raise ValueError(f'unknown norm type {norm_type!r} in norm_cfg (not this project\'s '
                         f'and not registered in mmengine/mmcv MODELS; e.g. {known}){hint}')
    # mmcv's builder (its eps default, requires_grad), given the class found above.
    return build_norm_layer(dict(cfg, type=norm_cls), num_channels)[1]
