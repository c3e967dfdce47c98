"""The folded (deploy) formulation of pooling/identity-mixer blocks with GroupNorm(1) norms.

``pool(GN(x)) - GN(x) = g * rstd * (pool(x) - x)`` (bias and mean cancel), so the token branch
writes no normalized tensor; GN2's affine goes into fc1, the layer scale and StarReLU's scalars
into fc2, from the current parameters at each call. What ONNX ``--deploy`` traces."""
import functools
from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.mixers import IdentityMixer, Pooling
from .activations import ACTS, act_kind, fold_into_fc2
from .elementwise import scale_vector
from .mlp import is_plain_mlp


def _is_gn1(norm: nn.Module) -> bool:
    return isinstance(norm, nn.GroupNorm) and norm.num_groups == 1


def stage_is_foldable(blocks: nn.Sequential) -> bool:
    """Whether every block has a pooling/identity mixer, GroupNorm(1) norms and a plain MLP
    with an activation of ``ACTS``."""
    return len(blocks) > 0 and all(
        isinstance(b.token_mixer, (Pooling, IdentityMixer)) and _is_gn1(b.norm1)
        and _is_gn1(b.norm2) and is_plain_mlp(b.mlp) and act_kind(b.mlp.act) is not None
        for b in blocks)


def _moments(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean and biased variance over C, H, W, shaped (N, 1, 1, 1)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return mean, (x - mean).pow(2).mean(dim=(1, 2, 3), keepdim=True)


def _channels(*vectors) -> torch.Tensor:
    """The product of the given per-channel vectors, as (1, C, 1, 1)."""
    return functools.reduce(torch.mul, [v for v in vectors if v is not None]).view(1, -1, 1, 1)


@torch.no_grad()
def folded_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One block of a foldable stage, folded."""
    n1, n2, mlp = block.norm1, block.norm2, block.mlp
    ls1 = scale_vector(block.layer_scale1)
    mean, var = _moments(x)
    a = torch.rsqrt(var + n1.eps)
    if ls1 is not None or n1.weight is not None:
        a = a * _channels(ls1, n1.weight)
    y = block.res_scale1(x)  # a Scale or identity
    if isinstance(block.token_mixer, Pooling):
        y = y + a * (block.token_mixer.pool(x) - x)
    else:
        y = y + a * (x - mean)
        if n1.bias is not None:
            y = y + _channels(ls1, n1.bias)
    w1, c1 = mlp.fc1.weight.flatten(1), mlp.fc1.bias
    if n2.bias is not None:
        c1 = w1 @ n2.bias if c1 is None else c1 + w1 @ n2.bias
    if n2.weight is not None:
        w1 = w1 * n2.weight.view(1, -1)
    w2, c2 = fold_into_fc2(mlp.act, mlp.fc2.weight.flatten(1), mlp.fc2.bias)
    ls2 = scale_vector(block.layer_scale2)
    if ls2 is not None:
        w2, c2 = w2 * ls2.view(-1, 1), None if c2 is None else c2 * ls2
    mean, var = _moments(y)
    tokens = ((y - mean) * torch.rsqrt(var + n2.eps)).permute(0, 2, 3, 1)
    out = F.linear(ACTS[act_kind(mlp.act)].plain(F.linear(tokens, w1, c1)), w2, c2)
    return block.res_scale2(y) + out.permute(0, 3, 1, 2)
