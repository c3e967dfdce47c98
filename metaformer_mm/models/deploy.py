"""The plain reference formulation of a MetaFormer, and PoolFormer's fused inference path.

``reference_forward(model, x)`` computes a backbone the way the original code wrote it
(NCHW, ``GroupNorm``, ``AvgPool2d(x) - x``, 1x1 convs, separate layer-scale multiplies).
It uses the model's own parameters, so every fast path is tested against it.

``switch_to_deploy(model)`` (also ``MetaFormer.switch_to_deploy()``) prepares the fused
inference path for blocks with a pooling or identity token mixer and ``GroupNorm(1)`` norms
(PoolFormer, PoolFormerV2, IdentityFormer). Stages with other mixers (ConvFormer, CAFormer,
sMLPNet) keep the default path. Per block, with ``mu, rstd`` the GroupNorm statistics:

* token mixing: ``pool(GN(x)) - GN(x) = g * rstd * (pool(x) - x)``: the norm's bias and mean
  cancel (average pooling maps a per-channel constant to itself) and the per-channel scale
  commutes with pooling, so the branch is ``x + (ls1 * g1 * rstd) * (pool(x) - x)``, one
  ``lerp`` with a per-channel weight; no normalized tensor is ever written;
* channel MLP: GN2's affine is folded into ``fc1`` (``W1 diag(g2)``, ``b1 + W1 be2``), the
  layer scale (and StarReLU's scale and bias) into ``fc2``;
* the work runs over cache-sized chunks of one sample: rows of the map for the pooling
  (with a one-row halo), tokens for the MLP (``fc1``, activation in place, ``fc2`` added
  in place onto the residual), and each chunk's mean and variance are taken while it is
  in cache, so the next norm's statistics cost no extra pass over memory; the MLP's
  norm rides on ``fc1`` (``alpha = rstd`` and a per-sample bias), so no normalized tensor
  is written either.

The switch is reversible and never changes parameters or state-dict keys: the folded
weights are a cache outside ``state_dict`` (``switch_to_deploy(model, False)`` drops it),
rebuilt automatically when a parameter changes (``load_state_dict``, an optimizer step,
``.to()``). The fused path runs only in ``eval()`` mode without autograd (``torch.no_grad``
or ``inference_mode``); training and gradient-enabled calls take the default path. Under
ONNX export or tracing, and on non-CPU devices, the same folded maths runs unchunked.
"""
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import fast
from .fast import (autocast_enabled, contiguous_nchw, exporting, is_plain_mlp, scale_vector,
                   use_onednn)
from .layers import Downsample, Mlp, StarReLU
from .mixers import IdentityMixer, Pooling
from .norms import LayerNorm2d

# Floats per chunk of one sample (4 MiB of map rows, 16 MiB of MLP hidden activation):
# the chunk stays in the last-level cache between the ops that touch it, and the ops stay
# few and large, because every op is a thread-pool round trip that a busy machine (other
# processes, data-loader workers) can stall. Smaller chunks fit L2 better but lose more
# than they gain once the machine is shared (see the benchmark notes in the README).
CHUNK_ELEMENTS = 1 << 20
HIDDEN_CHUNK_ELEMENTS = 1 << 22


# =============================================================================== reference
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
    if isinstance(mixer, Pooling):
        return mixer.pool(x) - x
    if isinstance(mixer, IdentityMixer):
        return x
    return mixer(x)


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


def _reference_downsample(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if not isinstance(module, Downsample):
        return module(x)
    if module.pre_norm:
        return module.conv(reference_norm(module.norm, x))
    return reference_norm(module.norm, module.conv(x))


def reference_forward(model: nn.Module, x: torch.Tensor, return_stages: bool = False,
                      channels_last: bool = False
                      ) -> Union[torch.Tensor, Tuple[torch.Tensor, ...]]:
    """What ``model`` (a ``MetaFormer``) computes, in the plain eager NCHW formulation.

    ``return_stages=True`` returns the raw outputs of all four stages instead.
    ``channels_last=True`` runs the same code on a channels-last input (every op then keeps
    that layout): the benchmark's measure of what the layout alone gives.
    """
    model._check_input(x)
    x = x.contiguous(memory_format=torch.channels_last if channels_last else
                     torch.contiguous_format)
    x = _reference_downsample(model.stem, x)
    last = max(model.out_indices) if model.fork_feat and not return_stages else len(model.stages) - 1
    stages = []
    for stage in model.stages[:last + 1]:
        x = _reference_downsample(stage.downsample, x)
        for block in stage.blocks:
            x = reference_block(block, x)
        stages.append(x)
    if return_stages:
        return tuple(stages)
    if not model.fork_feat:
        head = model.head
        feats = stages[-1]
        if head.pool_first:
            pooled = feats.mean((2, 3))
            return head.fc(head.norm(pooled))
        return head.fc(reference_norm(head.norm, feats).mean((2, 3)))
    return tuple(reference_norm(model.out_norms[str(i)], stages[i]) for i in model.out_indices)


# ============================================================================ fused blocks
@dataclass
class FusedBlock:
    """Folded parameters of one pooling/identity-mixer block with ``GroupNorm(1)`` norms."""
    mixer: str                         # 'pooling' or 'identity'
    pool_size: int
    eps1: float
    eps2: float
    a: torch.Tensor                    # (C,) ls1 * g1, times rstd gives the branch weight
    shift: Optional[torch.Tensor]      # (C,) ls1 * be1 (identity mixer only)
    r1: Optional[torch.Tensor]         # (C,) res scales or None
    r2: Optional[torch.Tensor]
    w1t: torch.Tensor                  # (C, hidden)  (W1 diag(g2))^T
    w1: torch.Tensor                   # (hidden, C)  the same, untransposed (oneDNN's layout)
    w1_rowsum: torch.Tensor            # (hidden,)    W1 diag(g2) 1, to subtract the mean
    c1: torch.Tensor                   # (hidden,)    b1 + W1 be2
    act: Union[str, nn.Module]         # 'gelu', 'gelu_tanh', 'relu', 'relu_square', 'none' or a module
    w2t: torch.Tensor                  # (hidden, C)  (diag(ls2) W2 s)^T
    w2: torch.Tensor                   # (C, hidden)  the same, untransposed (oneDNN's layout)
    c2: torch.Tensor                   # (C,)         ls2 (b2 + b W2 1)


def _is_gn1(norm: nn.Module) -> bool:
    return isinstance(norm, nn.GroupNorm) and norm.num_groups == 1


def block_is_fusable(block: nn.Module) -> bool:
    """True for blocks the fused inference path covers (see the module docstring)."""
    return (isinstance(block.token_mixer, (Pooling, IdentityMixer))
            and _is_gn1(block.norm1) and _is_gn1(block.norm2)
            and is_plain_mlp(block.mlp)
            and type(block.mlp.act) in (nn.GELU, nn.ReLU, StarReLU, nn.Identity))


@torch.no_grad()
def fold_block(block: nn.Module) -> FusedBlock:
    """Folds one fusable block's norms, layer scales and activation constants."""
    n1, n2, mlp = block.norm1, block.norm2, block.mlp
    ones = mlp.fc1.weight.new_ones(n1.num_channels)
    ls1 = scale_vector(block.layer_scale1)
    ls1 = ones if ls1 is None else ls1.detach()
    g1 = ones if n1.weight is None else n1.weight.detach()
    a = (ls1 * g1).clone()
    shift = None
    if isinstance(block.token_mixer, IdentityMixer):
        shift = ls1 * n1.bias.detach() if n1.bias is not None else torch.zeros_like(a)
    w1 = mlp.fc1.weight.detach().flatten(1)
    b1 = mlp.fc1.bias.detach() if mlp.fc1.bias is not None else w1.new_zeros(w1.shape[0])
    g2 = ones if n2.weight is None else n2.weight.detach()
    c1 = b1.clone()
    if n2.bias is not None:
        c1 = c1 + w1 @ n2.bias.detach()
    w1f = w1 * g2.view(1, -1)
    w2 = mlp.fc2.weight.detach().flatten(1)
    b2 = mlp.fc2.bias.detach() if mlp.fc2.bias is not None else w2.new_zeros(w2.shape[0])
    act = mlp.act
    if isinstance(act, StarReLU):  # s * relu(h)^2 + b: s and b go into fc2
        b2 = b2 + act.bias.detach() * w2.sum(1)
        w2 = w2 * act.scale.detach()
        act_kind: Union[str, nn.Module] = 'relu_square'
    elif type(act) is nn.GELU:
        act_kind = 'gelu' if act.approximate == 'none' else 'gelu_tanh'
    elif type(act) is nn.ReLU:
        act_kind = 'relu'
    elif type(act) is nn.Identity:
        act_kind = 'none'
    else:
        act_kind = act
    ls2 = scale_vector(block.layer_scale2)
    if ls2 is not None:
        w2 = w2 * ls2.detach().view(-1, 1)
        b2 = b2 * ls2.detach()
    r1, r2 = scale_vector(block.res_scale1), scale_vector(block.res_scale2)
    return FusedBlock(
        mixer='pooling' if isinstance(block.token_mixer, Pooling) else 'identity',
        pool_size=getattr(block.token_mixer, 'pool_size', 1), eps1=float(n1.eps),
        eps2=float(n2.eps), a=a, shift=shift,
        r1=None if r1 is None else r1.detach().clone(),
        r2=None if r2 is None else r2.detach().clone(),
        w1t=w1f.t().contiguous(), w1=w1f.contiguous(), w1_rowsum=w1f.sum(1), c1=c1, act=act_kind,
        w2t=w2.t().contiguous(), w2=w2.contiguous(),
        c2=b2.clone())


def _act_inplace(kind: Union[str, nn.Module], h: torch.Tensor) -> torch.Tensor:
    if kind == 'gelu':
        return torch.ops.aten.gelu_(h)
    if kind == 'gelu_tanh':
        return torch.ops.aten.gelu_(h, approximate='tanh')
    if kind == 'relu':
        return h.relu_()
    if kind == 'relu_square':
        return h.relu_().square_()
    if kind == 'none':
        return h
    return kind(h)


def _act(kind: Union[str, nn.Module], h: torch.Tensor) -> torch.Tensor:
    if kind == 'gelu':
        return F.gelu(h)
    if kind == 'gelu_tanh':
        return F.gelu(h, approximate='tanh')
    if kind == 'relu':
        return F.relu(h)
    if kind == 'relu_square':
        return F.relu(h).square()
    if kind == 'none':
        return h
    return kind(h)


# ------------------------------------------------------------- unchunked (export, non-CPU)
def _moments(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean and (biased) variance over C, H, W, shaped (N, 1, 1, 1)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    var = (x - mean).pow(2).mean(dim=(1, 2, 3), keepdim=True)
    return mean, var


def fused_block_unchunked(fb: FusedBlock, x: torch.Tensor) -> torch.Tensor:
    """The folded block with whole-tensor ops (ONNX export, tracing, CUDA)."""
    c = x.shape[1]
    mean, var = _moments(x)
    rstd = torch.rsqrt(var + fb.eps1)
    a = fb.a.view(1, c, 1, 1) * rstd
    if fb.mixer == 'pooling':
        pooled = F.avg_pool2d(x, fb.pool_size, 1, fb.pool_size // 2, count_include_pad=False)
        base = x if fb.r1 is None else x * fb.r1.view(1, c, 1, 1)
        y = base + a * (pooled - x)
    else:
        r1 = 1.0 if fb.r1 is None else fb.r1.view(1, c, 1, 1)
        y = x * (r1 + a) + (fb.shift.view(1, c, 1, 1) - a * mean)
    mean, var = _moments(y)
    tokens = ((y - mean) * torch.rsqrt(var + fb.eps2)).permute(0, 2, 3, 1)
    hidden = _act(fb.act, torch.matmul(tokens, fb.w1t) + fb.c1)
    out = (torch.matmul(hidden, fb.w2t) + fb.c2).permute(0, 3, 1, 2)
    base = y if fb.r2 is None else y * fb.r2.view(1, c, 1, 1)
    return base + out


# -------------------------------------------------------------------- chunked (CPU eager)
class _Moments:
    """Mean and variance of one sample, accumulated chunk by chunk while chunks are in cache.

    One op per chunk: the GroupNorm kernel's moments (a vectorized, Welford-style pass that
    stays exact for a mean far larger than the spread); its normalized output goes to a
    scratch buffer. Chunks are merged in float64 (Chan et al.). Fewer, larger ops matter
    here: every op is a thread-pool round trip, which a shared machine can stall.
    """

    def __init__(self, scratch: torch.Tensor) -> None:
        self.scratch = scratch
        self.means: List[torch.Tensor] = []
        self.rstds: List[torch.Tensor] = []
        self.counts: List[int] = []

    def add(self, flat: torch.Tensor) -> None:
        n = flat.numel()
        _, mean, rstd = torch.ops.aten.native_group_norm.out(
            flat.view(1, 1, n), None, None, 1, 1, n, 1, 0.0,
            out0=self.scratch[:n].view(1, 1, n), out1=flat.new_empty(1, 1),
            out2=flat.new_empty(1, 1))
        self.means.append(mean.view(()))
        self.rstds.append(rstd.view(()))
        self.counts.append(n)

    def result(self) -> Tuple[torch.Tensor, torch.Tensor]:
        means = torch.stack(self.means).double()
        # rstd = 1 / sqrt(var) (eps 0); a constant chunk gives inf and var 0.
        variances = torch.stack(self.rstds).double().pow(-2)
        counts = torch.tensor(self.counts, dtype=torch.float64)
        total = float(sum(self.counts))
        mean = (means * counts).sum() / total
        var = (counts * (variances + (means - mean).square())).sum() / total
        return mean.float(), var.float()


def _sample_moments(rows: torch.Tensor, scratch: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    flat = rows.reshape(-1)
    moments = _Moments(scratch)
    for start in range(0, flat.numel(), CHUNK_ELEMENTS):
        moments.add(flat[start:start + CHUNK_ELEMENTS])
    return moments.result()


def _nchw(hwc: torch.Tensor) -> torch.Tensor:
    """(1, H, W, C) -> a (1, C, H, W) channels-last view.

    Slicing rows of this view keeps strides torch recognises as channels-last (an
    ``unsqueeze``d (C, H, W) view would not, and pooling would take the slow NCHW kernel).
    """
    return hwc.permute(0, 3, 1, 2)


def _token_mixing(fb: FusedBlock, src: torch.Tensor, dst: torch.Tensor, mean: torch.Tensor,
                  var: torch.Tensor, scratch: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """dst = src + (a rstd)(pool(src) - src) for one (1, H, W, C) sample, chunked by rows."""
    height, width, c = src.shape[1:]
    src4, dst4 = _nchw(src), _nchw(dst)
    rstd = torch.rsqrt(var + fb.eps1)
    a = fb.a * rstd
    weight = a.view(1, c, 1, 1)
    keep = None if fb.r1 is None else (fb.r1 - a).view(1, c, 1, 1)
    if fb.mixer == 'identity':
        scale = (a + 1.0 if fb.r1 is None else fb.r1 + a).view(1, c, 1, 1)
        shift = (fb.shift - a * mean).view(1, c, 1, 1)
    pad = fb.pool_size // 2
    rows = max(1, CHUNK_ELEMENTS // (width * c))
    moments = _Moments(scratch)
    for r0 in range(0, height, rows):
        r1 = min(height, r0 + rows)
        inp, out = src4[:, :, r0:r1], dst4[:, :, r0:r1]
        if fb.mixer == 'pooling':
            lo, hi = max(0, r0 - pad), min(height, r1 + pad)
            # The halo rows make the chunk's pooling equal the whole map's; the rows pooled
            # against the slab's artificial edges are the halo rows, which are dropped.
            pooled = F.avg_pool2d(src4[:, :, lo:hi], fb.pool_size, 1, pad,
                                  count_include_pad=False)[:, :, r0 - lo:r1 - lo]
            if keep is None:
                torch.lerp(inp, pooled, weight, out=out)
            else:
                torch.mul(pooled, weight, out=out)
                out.addcmul_(inp, keep)
        else:
            torch.addcmul(shift, inp, scale, out=out)
        moments.add(dst[0, r0:r1].view(-1))
    return moments.result()


def _channel_mlp(fb: FusedBlock, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor,
                 hidden: torch.Tensor, scratch: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """x += fc2'(act(fc1'((x - mean) rstd))) in place on one (H, W, C) sample, by token chunks.

    The normalization rides on ``fc1``: ``W (x - mean) rstd + c = rstd (W x) + (c - rstd mean
    W 1)``, one GEMM with ``alpha = rstd`` and a per-sample bias. The subtraction costs float32
    rounding of order ``|mean| / std`` units, far below 1e-4 for any realistic mean.
    """
    c = x.shape[-1]
    tokens = x.view(-1, c)
    alpha = float(torch.rsqrt(var + fb.eps2))
    bias = torch.add(fb.c1, fb.w1_rowsum, alpha=-alpha * float(mean))
    step = hidden.shape[0]
    moments = _Moments(scratch)
    if isinstance(fb.act, str) and use_onednn(fb.act, x, fb.w1t, fb.w2):
        # oneDNN's fused epilogues: bias + activation after fc1, bias + residual after fc2.
        act, algorithm = fast.ONEDNN_ACTS[fb.act]
        w1 = fb.w1 * alpha
        # (never more rows than the hidden buffer the stage sized its scratch for)
        step = min(step, max(64, fast.ONEDNN_HIDDEN_CHUNK_ELEMENTS // w1.shape[0]))
        for start in range(0, tokens.shape[0], step):
            chunk = tokens[start:start + step]
            h = fast.ONEDNN_LINEAR(chunk, w1, bias, act, [], algorithm)
            base = chunk if fb.r2 is None else chunk * fb.r2
            chunk.copy_(fast.ONEDNN_LINEAR.binary(h, base, fb.w2, fb.c2, 'add'))
            moments.add(chunk.view(-1))
        return moments.result()
    for start in range(0, tokens.shape[0], step):
        chunk = tokens[start:start + step]
        h = torch.addmm(bias, chunk, fb.w1t, alpha=alpha, out=hidden[:chunk.shape[0]])
        h = _act_inplace(fb.act, h)
        if fb.r2 is not None:
            chunk.mul_(fb.r2)
        chunk.add_(fb.c2).addmm_(h, fb.w2t)
        moments.add(chunk.view(-1))
    return moments.result()


def run_fused_stage(blocks: Sequence[FusedBlock], x: torch.Tensor
                    ) -> Tuple[torch.Tensor, List[Tuple[torch.Tensor, torch.Tensor]]]:
    """Runs a stage of fused blocks on a channels-last CPU tensor the caller owns.

    Returns the stage output (channels-last) and each sample's (mean, var) of it. ``x`` is
    used as a work buffer.
    """
    n, c, height, width = x.shape
    cur = x.permute(0, 2, 3, 1)
    if not cur.is_contiguous():
        cur = cur.contiguous()
    nxt = torch.empty_like(cur)
    widest = max(fb.w1t.shape[1] for fb in blocks)
    step = min(max(16, HIDDEN_CHUNK_ELEMENTS // widest), height * width)
    hidden = x.new_empty(step * widest)
    # Receives the moments kernel's (unused) normalized output: any chunk fits.
    scratch = x.new_empty(max(CHUNK_ELEMENTS, step * c, width * c))
    stats = [_sample_moments(cur[i], scratch) for i in range(n)]
    for fb in blocks:
        width_h = fb.w1t.shape[1]
        for i in range(n):
            mean, var = _token_mixing(fb, cur[i:i + 1], nxt[i:i + 1], *stats[i], scratch)
            stats[i] = _channel_mlp(fb, nxt[i], mean, var,
                                    hidden[:step * width_h].view(step, width_h), scratch)
        cur, nxt = nxt, cur
    return cur.permute(0, 3, 1, 2), stats


# =============================================================================== the plan
class DeployPlan:
    """Folded blocks per stage (None where a stage keeps the default path)."""

    def __init__(self, model: nn.Module) -> None:
        self.stages: List[Optional[List[FusedBlock]]] = []
        for stage in model.stages:
            blocks = list(stage.blocks)
            if blocks and all(block_is_fusable(b) for b in blocks):
                self.stages.append([fold_block(b) for b in blocks])
            else:
                self.stages.append(None)
        self.signature = _signature(model)


def _signature(model: nn.Module) -> Tuple:
    return tuple((p.data_ptr(), p._version, p.device.type, p.dtype)
                 for p in model.stages.parameters())


def switch_to_deploy(model: nn.Module, enable: bool = True) -> nn.Module:
    """Builds (or with ``enable=False`` drops) the fused inference path of ``model``."""
    model._deploy_plan = DeployPlan(model) if enable else None
    return model


def deploy_plan(model: nn.Module) -> Optional[DeployPlan]:
    """The model's current plan, rebuilt if a parameter changed since it was folded."""
    plan = getattr(model, '_deploy_plan', None)
    if plan is not None and plan.signature != _signature(model):
        plan = model._deploy_plan = DeployPlan(model)
    return plan


def deploy_active(model: nn.Module) -> bool:
    """Whether ``model.forward`` takes the fused path now (eval mode, no autograd, plan built)."""
    if getattr(model, '_deploy_plan', None) is None or model.training:
        return False
    return not torch.is_grad_enabled() and not autocast_enabled()


def _exporting() -> bool:
    return exporting()


def _out_norm(norm: nn.Module, x: torch.Tensor,
              stats: Optional[List[Tuple[torch.Tensor, torch.Tensor]]]) -> torch.Tensor:
    """An output norm, one pass from the statistics the stage kept (GN(1) with affine)."""
    if stats is None or not _is_gn1(norm) or norm.weight is None:
        return contiguous_nchw(norm(x))
    n, c = x.shape[:2]
    mean = torch.stack([m for m, _ in stats]).view(n, 1)
    rstd = torch.rsqrt(torch.stack([v for _, v in stats]).view(n, 1) + norm.eps)
    scale = norm.weight.view(1, c) * rstd
    shift = -mean * scale
    if norm.bias is not None:
        shift = shift + norm.bias.view(1, c)
    return contiguous_nchw(x, scale.view(n, c, 1, 1), shift.view(n, c, 1, 1))


def deploy_forward(model: nn.Module, x: torch.Tensor) -> Union[torch.Tensor, Tuple[torch.Tensor, ...]]:
    """``model.forward`` on the fused path (the caller checked ``deploy_active``)."""
    plan = deploy_plan(model)
    model._check_input(x)
    x = model.stem(x.contiguous(memory_format=model.memory_format()))
    last = max(model.out_indices) if model.fork_feat else len(model.stages) - 1
    chunked = x.device.type == 'cpu' and not _exporting()
    outs = []
    for stage, fused in zip(model.stages[:last + 1], plan.stages):
        x = stage.downsample(x)
        stats = None
        if fused is None:
            x = stage.blocks(x)
        elif chunked:  # (makes its own channels-last copy if the model runs NCHW)
            x, stats = run_fused_stage(fused, x)
        else:
            for fb in fused:
                x = fused_block_unchunked(fb, x)
        outs.append((x, stats))
    if not model.fork_feat:
        return model.head(outs[-1][0])
    if not chunked:
        return tuple(model.out_norms[str(i)](outs[i][0]).contiguous() for i in model.out_indices)
    return tuple(_out_norm(model.out_norms[str(i)], *outs[i]) for i in model.out_indices)


# ============================================================================ ONNX export
def export_onnx(model: nn.Module, path: str, shape: Tuple[int, int] = (224, 224),
                batch: int = 1, opset: int = 17, deploy: bool = False) -> List[str]:
    """Exports a MetaFormer backbone to ONNX with dynamic batch, height and width.

    ``deploy=True`` exports the folded inference path (its whole-tensor form); otherwise the
    default path. The model is put in ``eval()`` mode. Returns the output names.
    """
    import inspect
    import warnings
    model.eval()
    switch_to_deploy(model, deploy)
    x = torch.randn(batch, model.stem.conv.in_channels, *shape)
    with torch.no_grad():
        outs = model(x)
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    names = [f'stage{i}' for i in model.out_indices] if model.fork_feat else ['logits']
    axes = {'input': {0: 'batch', 2: 'height', 3: 'width'}}
    for name, out in zip(names, outs):
        axes[name] = {0: 'batch', 2: f'{name}_height', 3: f'{name}_width'} if out.dim() == 4 \
            else {0: 'batch'}
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about Python-level shape checks; they hold for every input size.
        warnings.simplefilter('ignore')
        # The TorchScript-based exporter: it needs no onnxscript and keeps dynamic axes.
        extra = {'dynamo': False} if 'dynamo' in inspect.signature(torch.onnx.export).parameters \
            else {}
        torch.onnx.export(model, (x,), path, input_names=['input'], output_names=names,
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True,
                          **extra)
    return names
