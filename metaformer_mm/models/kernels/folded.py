"""The folded (deploy) formulation of pooling/identity-mixer blocks, as whole-tensor ops.

For blocks with a pooling or identity token mixer and ``GroupNorm(1)`` norms (PoolFormer,
PoolFormerV2, IdentityFormer), with ``mu, rstd`` the GroupNorm statistics:

* token mixing: ``pool(GN(x)) - GN(x) = g * rstd * (pool(x) - x)``: the norm's bias and mean
  cancel (average pooling maps a per-channel constant to itself) and the per-channel scale
  commutes with pooling, so the branch is ``x + (ls1 * g1 * rstd) * (pool(x) - x)``;
* channel MLP: GN2's affine is folded into ``fc1`` (``W1 diag(g2)``, ``b1 + W1 be2``), the
  layer scale (and StarReLU's scale and bias) into ``fc2``.

This is what ``tools/deploy/export_onnx.py --deploy`` exports (fewer nodes, no normalized
tensor written). It is selected by ``kernels='deploy'`` (``switch_to_deploy()``) and runs in
``eval()`` mode without autograd; the weights are folded at each call from the current
parameters, so nothing is cached and the state dict is untouched. On a CPU in eager mode
the default path is faster (README, Performance); other stages keep the default path.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..mixers import IdentityMixer, Pooling
from .activations import ACTS, ActKernel, act_kind, fold_into_fc2
from .elementwise import scale_vector
from .mlp import is_plain_mlp


@dataclass
class FoldedBlock:
    """Folded parameters of one pooling/identity-mixer block with ``GroupNorm(1)`` norms."""
    pooling: bool                      # pooling mixer (else identity)
    pool_size: int
    eps1: float
    eps2: float
    a: torch.Tensor                    # (C,) ls1 * g1, times rstd gives the branch weight
    shift: Optional[torch.Tensor]      # (C,) ls1 * be1 (identity mixer only)
    r1: Optional[torch.Tensor]         # (C,) res scales or None
    r2: Optional[torch.Tensor]
    w1: torch.Tensor                   # (hidden, C) W1 diag(g2)
    c1: torch.Tensor                   # (hidden,)   b1 + W1 be2
    act: ActKernel
    w2: torch.Tensor                   # (C, hidden) diag(ls2) W2 s
    c2: torch.Tensor                   # (C,)        ls2 (b2 + b W2 1)


def _is_gn1(norm: nn.Module) -> bool:
    return isinstance(norm, nn.GroupNorm) and norm.num_groups == 1


def block_is_foldable(block: nn.Module) -> bool:
    """True for blocks the folded formulation covers (see the module docstring)."""
    return (isinstance(block.token_mixer, (Pooling, IdentityMixer))
            and _is_gn1(block.norm1) and _is_gn1(block.norm2)
            and is_plain_mlp(block.mlp) and act_kind(block.mlp.act) is not None)


def stage_is_foldable(blocks: nn.Sequential) -> bool:
    """True when every block of a stage is foldable (the stage then runs folded)."""
    return len(blocks) > 0 and all(block_is_foldable(b) for b in blocks)


@torch.no_grad()
def fold_block(block: nn.Module) -> FoldedBlock:
    """Folds one foldable block's norms, layer scales and activation constants."""
    n1, n2, mlp = block.norm1, block.norm2, block.mlp
    ones = mlp.fc1.weight.new_ones(n1.num_channels)
    ls1 = scale_vector(block.layer_scale1)
    a = (ones if ls1 is None else ls1) * (ones if n1.weight is None else n1.weight)
    shift = None
    if isinstance(block.token_mixer, IdentityMixer):
        shift = torch.zeros_like(a) if n1.bias is None else (ones if ls1 is None else ls1) * n1.bias
    w1 = mlp.fc1.weight.flatten(1)
    c1 = mlp.fc1.bias if mlp.fc1.bias is not None else w1.new_zeros(w1.shape[0])
    if n2.bias is not None:
        c1 = c1 + w1 @ n2.bias
    if n2.weight is not None:
        w1 = w1 * n2.weight.view(1, -1)
    w2 = mlp.fc2.weight.flatten(1)
    b2 = mlp.fc2.bias if mlp.fc2.bias is not None else w2.new_zeros(w2.shape[0])
    w2, b2 = fold_into_fc2(mlp.act, w2, b2)
    ls2 = scale_vector(block.layer_scale2)
    if ls2 is not None:
        w2, b2 = w2 * ls2.view(-1, 1), b2 * ls2
    return FoldedBlock(
        pooling=isinstance(block.token_mixer, Pooling),
        pool_size=getattr(block.token_mixer, 'pool_size', 1), eps1=float(n1.eps),
        eps2=float(n2.eps), a=a, shift=shift, r1=scale_vector(block.res_scale1),
        r2=scale_vector(block.res_scale2), w1=w1, c1=c1, act=ACTS[act_kind(mlp.act)], w2=w2,
        c2=b2)


def _moments(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean and (biased) variance over C, H, W, shaped (N, 1, 1, 1)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    var = (x - mean).pow(2).mean(dim=(1, 2, 3), keepdim=True)
    return mean, var


def folded_block(fb: FoldedBlock, x: torch.Tensor) -> torch.Tensor:
    """One folded block on an NCHW (or channels-last) tensor."""
    c = x.shape[1]
    mean, var = _moments(x)
    a = fb.a.view(1, c, 1, 1) * torch.rsqrt(var + fb.eps1)
    if fb.pooling:
        pooled = F.avg_pool2d(x, fb.pool_size, 1, fb.pool_size // 2, count_include_pad=False)
        y = (x if fb.r1 is None else x * fb.r1.view(1, c, 1, 1)) + a * (pooled - x)
    else:
        r1 = 1.0 if fb.r1 is None else fb.r1.view(1, c, 1, 1)
        y = x * (r1 + a) + (fb.shift.view(1, c, 1, 1) - a * mean)
    mean, var = _moments(y)
    tokens = ((y - mean) * torch.rsqrt(var + fb.eps2)).permute(0, 2, 3, 1)
    out = F.linear(fb.act.plain(F.linear(tokens, fb.w1, fb.c1)), fb.w2, fb.c2)
    return (y if fb.r2 is None else y * fb.r2.view(1, c, 1, 1)) + out.permute(0, 3, 1, 2)


def run_folded_stage(blocks: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """A stage's blocks, folded where the whole stage is foldable, else on their default path."""
    if not stage_is_foldable(blocks):
        return blocks(x)
    for block in blocks:
        x = folded_block(fold_block(block), x)
    return x
