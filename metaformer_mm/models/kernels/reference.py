"""The plain formulation of a MetaFormer: the readable definition of a block and the test oracle.

``reference_forward(model, x)`` computes a backbone as the original code wrote it (NCHW,
``GroupNorm``, ``AvgPool2d(x) - x``, 1x1 convs, separate layer-scale multiplies);
``kernels='reference'`` runs it, and every faster path is tested against it.
"""
from typing import Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..layers import Downsample, Mlp
from ..mixers import Pooling
from ..norms import LayerNorm2d
from .elementwise import scale_vector


def reference_norm(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A norm layer as the originals compute it on an NCHW tensor."""
    if isinstance(norm, nn.GroupNorm):
        return F.group_norm(x, norm.num_groups, norm.weight, norm.bias, norm.eps)
    if isinstance(norm, LayerNorm2d):  # the baselines' LayerNormGeneral over channels
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + norm.eps)
        if norm.weight is not None:
            x = x * norm.weight.view(1, -1, 1, 1)
        if norm.bias is not None:
            x = x + norm.bias.view(1, -1, 1, 1)
        return x
    return norm(x)


def reference_scale(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A layer/res scale as a separate multiply (identity when the module has no scale)."""
    scale = scale_vector(module)
    return x if scale is None else x * scale.view(1, -1, 1, 1)


def reference_mixer(mixer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """PoolFormer's ``AvgPool2d(x) - x``; other mixers are called as they are."""
    return mixer.pool(x) - x if isinstance(mixer, Pooling) else mixer(x)


def reference_mlp(mlp: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``fc2(act(fc1(x)))`` with the 1x1 convs as convolutions on NCHW."""
    if isinstance(mlp, Mlp):
        return mlp.drop(mlp.fc2(mlp.drop(mlp.act(mlp.fc1(x)))))
    return mlp(x)


def reference_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One MetaFormer block in the original formulation."""
    branch = reference_scale(block.layer_scale1,
                             reference_mixer(block.token_mixer, reference_norm(block.norm1, x)))
    x = reference_scale(block.res_scale1, x) + block.drop_path1(branch)
    branch = reference_scale(block.layer_scale2,
                             reference_mlp(block.mlp, reference_norm(block.norm2, x)))
    return reference_scale(block.res_scale2, x) + block.drop_path2(branch)


def reference_downsample(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The stem or a downsampling layer, with its norm in the plain formulation."""
    if not isinstance(module, Downsample):
        return module(x)
    if module.pre_norm:
        return module.conv(reference_norm(module.norm, x))
    return reference_norm(module.norm, module.conv(x))


def reference_forward(model: nn.Module, x: torch.Tensor, channels_last: bool = False
                      ) -> Union[torch.Tensor, Tuple[torch.Tensor, ...]]:
    """What ``model`` (a ``MetaFormer``) computes, in the plain eager NCHW formulation;
    ``channels_last=True`` runs it in that layout (what the layout alone gives)."""
    model._check_input(x)
    x = x.contiguous(memory_format=torch.channels_last if channels_last else
                     torch.contiguous_format)
    x = reference_downsample(model.stem, x)
    last = max(model.out_indices) if model.fork_feat else len(model.stages) - 1
    stages = []
    for stage in model.stages[:last + 1]:
        x = reference_downsample(stage.downsample, x)
        for block in stage.blocks:
            x = reference_block(block, x)
        stages.append(x)
    if not model.fork_feat:
        head = model.head
        if head.pool_first:
            return head.fc(head.norm(stages[-1].mean((2, 3))))
        return head.fc(reference_norm(head.norm, stages[-1]).mean((2, 3)))
    return tuple(reference_norm(model.out_norms[str(i)], stages[i]) for i in model.out_indices)
