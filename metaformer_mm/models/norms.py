"""Norm layers from mmcv-style ``norm_cfg``: ours (``GN1``, ``LN2d``, and ``GN`` as
:class:`GroupNorm` for ``bias=False`` and fp32 statistics), other types by ``build_norm_layer``."""
import difflib
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmcv.cnn import build_norm_layer
from mmengine.registry import MODELS

NormCfg = Optional[Dict]


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` whose bias can be switched off."""

    def __init__(self, num_channels: int, num_groups: int, eps: float = 1e-5,
                 affine: bool = True, bias: bool = True) -> None:
        super().__init__(num_groups, num_channels, eps=eps, affine=affine)
        if affine and not bias:
            self.bias = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Statistics in fp32 even under autocast: GroupNorm over C*H*W elements overflows in
        # fp16. The CPU kernel accumulates bf16 input in fp32 itself (no casting passes).
        if x.dtype == torch.float16 or (x.dtype == torch.bfloat16 and x.device.type != 'cpu'):
            weight, bias = (None if p is None else p.float() for p in (self.weight, self.bias))
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
        # The permuted view of a channels-last tensor is contiguous (no copy); a contiguous
        # NCHW input gets a contiguous NCHW output, so NCHW models (sMLPNet) keep their layout.
        nchw = x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
        x = F.layer_norm(x.permute(0, 2, 3, 1), (self.num_channels,), self.weight, self.bias,
                         self.eps).permute(0, 3, 1, 2)
        return x.contiguous() if nchw else x

    def extra_repr(self) -> str:
        return f'{self.num_channels}, eps={self.eps}, bias={self.bias is not None}'


# Registered for mmcv's ``build_norm_layer`` too (e.g. in a user's neck); ours are looked up
# directly below, so another package's class of the same name never replaces them here.
_OWN_NORMS = {'GN1': GroupNorm1, 'LN2d': LayerNorm2d}


def register_own(classes: Dict[str, type]) -> None:
    """Registers this project's classes in mmengine's ``MODELS`` under names still free."""
    for name, cls in classes.items():
        if name not in MODELS.module_dict:
            MODELS.register_module(name, module=cls)


def split_cfg(cfg: Dict, arg: str) -> Tuple[object, Dict]:
    """The ``type`` of an mmcv-style config and its other options."""
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise TypeError(f'{arg} must be a dict with a "type" key or None, got {cfg!r}')
    cfg = dict(cfg)
    return cfg.pop('type'), cfg


def registered_class(name, known: Sequence[str], what: str, where: str) -> type:
    """The class ``MODELS.build`` would find for ``name`` (default scope, then parents;
    without a registry lookup's debug lines), else a ValueError with a close match."""
    found = None
    if isinstance(name, str) and '.' in name:  # 'scope.Name': let mmengine resolve the scope
        found = MODELS.get(name)
    elif isinstance(name, str):
        with MODELS.switch_scope_and_registry(None) as registry:
            while registry is not None and found is None:
                found, registry = registry.module_dict.get(name), registry.parent
    if found is None:
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ''
        raise ValueError(f'unknown {what} {name!r} in {where} (not registered in mmengine/mmcv '
                         f'MODELS; e.g. {sorted(known)}){hint}')
    return found


register_own(_OWN_NORMS)


def build_norm(cfg: NormCfg, num_channels: int) -> nn.Module:
    """A norm layer for ``num_channels`` from a ``norm_cfg`` (None: identity)."""
    if cfg is None:
        return nn.Identity()
    norm_type, cfg = split_cfg(cfg, 'norm_cfg')
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
    norm_cls = registered_class(norm_type, [*_OWN_NORMS, 'GN', 'BN', 'BN2d', 'SyncBN', 'LN',
                                            'IN'], 'norm type', 'norm_cfg')
    # mmcv's builder (its eps default, requires_grad), given the class found above.
    return build_norm_layer(dict(cfg, type=norm_cls), num_channels)[1]
