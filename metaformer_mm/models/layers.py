"""Small building blocks shared by every MetaFormer: activations, scales, MLP, stem/downsampling."""
import difflib
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.registry import MODELS

from .norms import NormCfg, build_norm, registered_class


class StarReLU(nn.Module):
    """``s * relu(x) ** 2 + b`` with learnable scalars (MetaFormer baselines)."""

    def __init__(self, scale_value: float = 1.0, bias_value: float = 0.0,
                 scale_learnable: bool = True, bias_learnable: bool = True) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((1,), scale_value), requires_grad=scale_learnable)
        self.bias = nn.Parameter(torch.full((1,), bias_value), requires_grad=bias_learnable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.relu(x).square() + self.bias


class SquaredReLU(nn.Module):
    """``relu(x) ** 2`` (the activation of the baselines' MLP classifier head)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


# This project's activations, in mmengine's ``MODELS`` too (so mmcv's
# ``build_activation_layer`` finds them); ``build_act`` takes ours directly, so a class of the
# same name registered by another package never replaces them in a MetaFormer.
_OWN_ACTS = {'StarReLU': StarReLU, 'SquaredReLU': SquaredReLU, 'Identity': nn.Identity}
if 'StarReLU' not in MODELS.module_dict:
    MODELS.register_module('StarReLU', module=StarReLU)
if 'SquaredReLU' not in MODELS.module_dict:
    MODELS.register_module('SquaredReLU', module=SquaredReLU)


def build_act(cfg: Optional[Dict]) -> nn.Module:
    """Builds an activation from an mmcv-style ``act_cfg``; ``None`` gives identity.

    ``StarReLU``, ``SquaredReLU`` and ``Identity`` are this project's; any other type is
    built from mmengine's ``MODELS`` registry as mmcv's ``build_activation_layer`` does
    (``GELU``, ``ReLU``, ``SiLU``, ``LeakyReLU``, ... or one a user registered there or in
    the default scope's registry).
    """
    if cfg is None:
        return nn.Identity()
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise TypeError(f'act_cfg must be a dict with a "type" key or None, got {cfg!r}')
    cfg = dict(cfg)
    act_type = cfg['type']
    if act_type in _OWN_ACTS:
        cfg.pop('type')
        return _OWN_ACTS[act_type](**cfg)
    act_cls = registered_class(act_type) if isinstance(act_type, str) else None
    if act_cls is None:
        known = sorted(set(_OWN_ACTS) | {'GELU', 'ReLU', 'SiLU', 'LeakyReLU', 'ReLU6', 'ELU',
                                         'PReLU', 'Sigmoid', 'Tanh', 'Swish', 'HSwish'})
        close = difflib.get_close_matches(str(act_type), known, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ''
        raise ValueError(f'unknown activation {act_type!r} in act_cfg (not registered in '
                         f'mmengine/mmcv MODELS; e.g. {known}){hint}')
    cfg.pop('type')
    return act_cls(**cfg)


class Scale(nn.Module):
    """Per-channel learnable scale of an NCHW tensor (layer scale and res scale)."""

    def __init__(self, dim: int, init_value: float = 1.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1)


class DropPath(nn.Module):
    """Stochastic depth: drops the whole residual branch per sample while training."""

    def __init__(self, drop_prob: float = 0.0) -> None:
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob}'


class Mlp(nn.Module):
    """Channel MLP of a MetaFormer block: 1x1 conv, activation, 1x1 conv."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, act_cfg: Optional[Dict] = None,
                 bias: bool = True, drop: float = 0.0) -> None:
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.fc1 = nn.Conv2d(dim, hidden, 1, bias=bias)
        self.act = build_act(act_cfg or dict(type='GELU'))
        self.fc2 = nn.Conv2d(hidden, dim, 1, bias=bias)
        self.drop = nn.Dropout(drop) if drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.drop, nn.Identity):
            # The 1x1 convs as GEMMs on the channels-last view (see models/kernels/mlp.py).
            from .kernels.mlp import mlp_forward
            return mlp_forward(self, x)
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class Downsample(nn.Module):
    """Strided conv between stages (and the stem), with optional pre- and post-norm."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int,
                 padding: int, bias: bool = True, pre_norm: NormCfg = None,
                 post_norm: NormCfg = None) -> None:
        super().__init__()
        # Keys follow timm's layout: `norm` before the conv (stages), `norm` after it (stem);
        # a module never has both in the MetaFormer family.
        if pre_norm is not None and post_norm is not None:
            raise ValueError('Downsample takes pre_norm or post_norm, not both')
        self.pre_norm = pre_norm is not None
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, bias=bias)
        if pre_norm is not None:
            self.norm = build_norm(pre_norm, in_channels)
        elif post_norm is not None:
            self.norm = build_norm(post_norm, out_channels)
        else:
            self.norm = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            return self.conv(self.norm(x))
        return self.norm(self.conv(x))
