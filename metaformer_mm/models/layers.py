"""Building blocks shared by every MetaFormer: activations, scales, MLP, stem/downsampling."""
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .norms import NormCfg, build_norm, register_own, registered_class, split_cfg


def is_tracing() -> bool:
    """Whether a tracer runs the code (``torch.compile``, ``torch.export``, ONNX, TorchScript):
    Python-side state such as caches must stay out of the graph."""
    compiling = getattr(torch.compiler, 'is_compiling', None)  # torch >= 2.3
    return bool((compiling is not None and compiling()) or torch.jit.is_tracing()
                or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export())


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
    """``relu(x) ** 2`` (the baselines' MLP head)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


# Registered for mmcv's ``build_activation_layer`` too; ``build_act`` takes ours directly, so
# another package's class of the same name never replaces them in a MetaFormer.
_OWN_ACTS = {'StarReLU': StarReLU, 'SquaredReLU': SquaredReLU, 'Identity': nn.Identity}
register_own(dict(StarReLU=StarReLU, SquaredReLU=SquaredReLU))


def build_act(cfg: Optional[Dict]) -> nn.Module:
    """An activation from an mmcv-style ``act_cfg`` (None: identity): ours by name, others
    from mmengine's ``MODELS``."""
    if cfg is None:
        return nn.Identity()
    act_type, cfg = split_cfg(cfg, 'act_cfg')
    act_cls = _OWN_ACTS.get(act_type) if isinstance(act_type, str) else None
    if act_cls is None:
        act_cls = registered_class(act_type, [*_OWN_ACTS, 'GELU', 'ReLU', 'SiLU', 'LeakyReLU',
                                              'ReLU6', 'ELU', 'PReLU', 'Sigmoid', 'Tanh',
                                              'Swish', 'HSwish'], 'activation', 'act_cfg')
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
        factor = drop_path_factor(self, x)
        return x if factor is None else x * factor

    def extra_repr(self) -> str:
        return f'drop_prob={self.drop_prob}'


def drop_path_factor(drop_path: nn.Module, x: torch.Tensor) -> Optional[torch.Tensor]:
    """The per-sample factor ``mask / keep`` of an active DropPath, else None (one draw
    for the plain and the fused path)."""
    prob = getattr(drop_path, 'drop_prob', 0.0)
    if not drop_path.training or prob == 0.0:
        return None
    keep = 1.0 - prob
    return x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep).div_(keep)


class Mlp(nn.Module):
    """Channel MLP: 1x1 conv, activation, 1x1 conv."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, act_cfg: Optional[Dict] = None,
                 bias: bool = True) -> None:
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.fc1 = nn.Conv2d(dim, hidden, 1, bias=bias)
        self.act = build_act(act_cfg or dict(type='GELU'))
        self.fc2 = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Downsample(nn.Module):
    """Strided conv between stages (and the stem), with an optional pre- or post-norm."""

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
        self.norm = (build_norm(pre_norm, in_channels) if self.pre_norm
                     else build_norm(post_norm, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pre_norm:
            return self.conv(self.norm(x))
        return self.norm(self.conv(x))
