"""Fused element-wise work of the default (training and inference) path of a MetaFormer block.

The default path computes exactly what the plain formulation computes (see
``metaformer_mm.models.deploy.reference_forward``), but

* keeps activations channels-last, so that every 1x1 conv is one GEMM on the
  ``(N*H*W, C)`` view of the tensor (no layout conversion, no copy);
* runs the channel MLP as ``F.linear`` on that view, with the layer scale folded into
  the second weight (``ls * (W h + b) = (ls W) h + ls b``: one GEMM instead of a GEMM and a
  multiply, and no scaled copy saved for backward);
* fuses each residual update ``x * r + drop_path(ls * branch)`` into one ``addcmul`` (or
  add), written into the branch's own buffer when nothing records it for backward;
* without autograd, runs the MLP over chunks of tokens, so that the 4x-wide hidden
  activation never leaves the cache and is never allocated in full; on x86 CPUs through
  oneDNN's linear with fused epilogues (fc1 + bias + activation, fc2 + bias + residual) for
  the activations oneDNN fuses (GELU, ReLU), otherwise as aten GEMMs with the activation
  applied in place;
* returns the output maps in contiguous NCHW through a copy by slabs of rows, which
  stays in cache where a whole-tensor layout change does not;
* in training, runs the MLP as one autograd function (``_ChunkedMlp``) that keeps only the
  pre-activation for backward and recomputes the activation chunk by chunk there: the
  activation, its gradient and the pre-activation's gradient (three 4C-per-token tensors
  per block) are never allocated in full.

Everything here is autograd-safe: in-place updates only touch tensors created here that
no backward function saved.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

# Floats of MLP hidden activation per chunk (16 MiB): the chunk stays in the last-level
# cache, the full-size activation is never allocated, and the ops stay few (see deploy.py).
HIDDEN_CHUNK_ELEMENTS = 1 << 22
# The same for the oneDNN kernels, whose fused epilogues leave less work between the GEMMs,
# so that a smaller chunk (4 MiB, measured best on 2 cores) keeps fc2's input in L2.
ONEDNN_HIDDEN_CHUNK_ELEMENTS = 1 << 20


def _onednn_linear():
    """oneDNN's linear with a fused epilogue (``linear + act`` / ``linear + add``), or None.

    It is what inductor emits on x86 CPUs: the bias, the activation and the residual add
    happen while the GEMM's output tile is in registers, instead of as passes over memory.
    """
    if not torch.backends.mkldnn.is_available():
        return None
    return getattr(torch.ops.mkldnn, '_linear_pointwise', None)


ONEDNN_LINEAR = _onednn_linear()
# oneDNN's names of the epilogues for the activations we know (op name, algorithm).
ONEDNN_ACTS = {'gelu': ('gelu', 'none'), 'gelu_tanh': ('gelu', 'tanh'), 'relu': ('relu', ''),
                'none': ('none', '')}


def autocast_enabled() -> bool:
    """Whether any autocast context is active (the chunked kernels use explicit dtypes)."""
    try:
        return torch.is_autocast_enabled('cpu') or torch.is_autocast_enabled('cuda')
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled() or torch.is_autocast_enabled()


def exporting() -> bool:
    """Whether the model is being traced, scripted or exported (no Python-level chunking)."""
    return torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()


def scale_vector(module: nn.Module) -> Optional[torch.Tensor]:
    """The per-channel vector of a layer-scale / res-scale module, None for identity."""
    scale = getattr(module, 'scale', None)
    return scale if isinstance(scale, torch.Tensor) else None


def drop_path_factor(drop_path: nn.Module, x: torch.Tensor) -> Optional[torch.Tensor]:
    """Per-sample factor ``mask / keep`` of an active DropPath, None when it is inactive.

    Draws the mask exactly as ``DropPath.forward`` does (same shape, dtype and RNG call),
    so that the fused path and the plain one drop the same samples.
    """
    prob = getattr(drop_path, 'drop_prob', 0.0)
    if not drop_path.training or prob == 0.0:
        return None
    keep = 1.0 - prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return mask.div_(keep)


def fused_residual(x: torch.Tensor, branch: torch.Tensor, layer_scale: Optional[torch.Tensor],
                   res_scale: Optional[torch.Tensor], factor: Optional[torch.Tensor],
                   branch_is_temporary: bool) -> torch.Tensor:
    """``x * res_scale + factor * layer_scale * branch`` in one kernel where possible.

    ``branch_is_temporary`` says that ``branch`` was created by the caller and saved by no
    backward function, so its buffer may receive the result.
    """
    weight = None
    if layer_scale is not None:
        weight = layer_scale.view(1, -1, *([1] * (x.ndim - 2)))
    if factor is not None:
        weight = factor if weight is None else weight * factor
    base = x if res_scale is None else x * res_scale.view(1, -1, *([1] * (x.ndim - 2)))
    dtype = torch.promote_types(base.dtype, branch.dtype)
    if weight is not None:
        dtype = torch.promote_types(dtype, weight.dtype)
    # The buffer takes the result only if it has the result's dtype and shape, never while
    # tracing (the exported graph stays pure), and never while autograd records: writing
    # into a branch that is a view (a permuted linear output) would make backward copy the
    # gradient through CopySlices.
    recording = torch.is_grad_enabled() and (branch.requires_grad or base.requires_grad)
    inplace = (branch_is_temporary and not recording and not exporting()
               and branch.dtype == dtype and branch.shape == base.shape)
    if weight is None:
        return branch.add_(base) if inplace else base + branch
    if inplace and not (torch.is_grad_enabled() and weight.requires_grad):
        return torch.addcmul(base, branch, weight, out=branch)
    return torch.addcmul(base, branch, weight)


# Floats per slab of the channels-last -> NCHW copy (512 KiB: source and target in L2).
TRANSPOSE_CHUNK_ELEMENTS = 1 << 17


def contiguous_nchw(x: torch.Tensor, scale: Optional[torch.Tensor] = None,
                    shift: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``x.contiguous()`` (or ``(shift + x * scale)``, both (N, C, 1, 1)) as contiguous NCHW,
    by slabs of rows for a channels-last CPU tensor without autograd.

    The whole-tensor copy walks one of the two layouts with a stride of H*W elements and
    misses the cache on every load; slab by slab both sides stay in cache (about 3x faster
    on a stride-4 PoolFormer map).
    """
    affine = scale is not None
    if (x.is_contiguous() or x.device.type != 'cpu' or x.dim() != 4 or exporting()
            or (torch.is_grad_enabled() and x.requires_grad)):
        return torch.addcmul(shift, x, scale).contiguous() if affine else x.contiguous()
    out = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    rows = max(1, TRANSPOSE_CHUNK_ELEMENTS // max(1, x.shape[1] * x.shape[3]))
    for start in range(0, x.shape[2], rows):
        src, dst = x[:, :, start:start + rows], out[:, :, start:start + rows]
        if affine:
            torch.addcmul(shift, src, scale, out=dst)
        else:
            dst.copy_(src)
    return out


def _act_(act: nn.Module, h: torch.Tensor) -> torch.Tensor:
    """Applies ``act`` in place when it is one of the element-wise activations we know."""
    if type(act) is nn.GELU:
        return torch.ops.aten.gelu_(h, approximate=act.approximate)
    if type(act) is nn.ReLU:
        return h.relu_()
    if type(act) is nn.Identity:
        return h
    return act(h)


def _linear_weights(mlp: nn.Module, out_scale: Optional[torch.Tensor]):
    w1 = mlp.fc1.weight.flatten(1)
    w2 = mlp.fc2.weight.flatten(1)
    b2 = mlp.fc2.bias
    if out_scale is not None:
        w2 = w2 * out_scale.view(-1, 1)
        b2 = None if b2 is None else b2 * out_scale
    return w1, mlp.fc1.bias, w2, b2


def is_plain_mlp(mlp: nn.Module) -> bool:
    """True for the 1x1-conv MLP of ``layers.Mlp`` without dropout (what every preset uses)."""
    fc1, fc2 = getattr(mlp, 'fc1', None), getattr(mlp, 'fc2', None)
    return (isinstance(fc1, nn.Conv2d) and isinstance(fc2, nn.Conv2d)
            and fc1.kernel_size == (1, 1) and fc2.kernel_size == (1, 1)
            and fc1.groups == 1 and fc2.groups == 1 and fc1.stride == (1, 1)
            and fc1.padding == (0, 0) and fc2.padding == (0, 0)
            and isinstance(getattr(mlp, 'drop', None), nn.Identity))


def mlp_forward(mlp: nn.Module, x: torch.Tensor, out_scale: Optional[torch.Tensor] = None,
                residual: Optional[torch.Tensor] = None,
                res_scale: Optional[torch.Tensor] = None,
                out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``[residual * res_scale +] out_scale * fc2(act(fc1(x)))`` of a plain MLP on NCHW ``x``.

    The 1x1 convs run as GEMMs on the channels-last view of ``x``; the result is
    channels-last. ``out`` (no-grad only) is an NCHW buffer of ``residual``'s shape that
    may receive the result, e.g. ``x`` itself when nothing else reads it afterwards.
    """
    tokens = x.permute(0, 2, 3, 1)
    if not tokens.is_contiguous():
        # An NCHW model (e.g. sMLPNet, whose axial mixing wants NCHW): the 1x1 convs as
        # convs, the layer scale in the fused residual update.
        o = mlp.fc2(mlp.act(mlp.fc1(x)))
        if residual is None:
            return o if out_scale is None else o * out_scale.view(1, -1, 1, 1)
        return fused_residual(residual, o, out_scale, res_scale, None, branch_is_temporary=True)
    w1, b1, w2, b2 = _linear_weights(mlp, out_scale)
    grad = torch.is_grad_enabled() and (x.requires_grad or any(
        p.requires_grad for p in (w1, w2)))
    chunkable = x.device.type == 'cpu' and not autocast_enabled() and not exporting()
    if chunkable and not grad:
        return _mlp_chunked(mlp.act, tokens, w1, b1, w2, b2, residual, res_scale, out)
    if chunkable and _act_kind(mlp.act) is not None and tokens.dtype == w1.dtype:
        out_channels = w2.shape[0]
        base_rows = None
        if residual is not None:
            base = residual if res_scale is None else residual * res_scale.view(1, -1, 1, 1)
            base_rows = base.permute(0, 2, 3, 1)
        if base_rows is None or (base_rows.is_contiguous() and base_rows.dtype == tokens.dtype
                                 and base_rows.shape == tokens.shape[:3] + (out_channels,)):
            out_rows = _ChunkedMlp.apply(
                tokens.reshape(-1, tokens.shape[-1]),
                None if base_rows is None else base_rows.reshape(-1, out_channels),
                w1, b1, w2, b2, _act_kind(mlp.act))
            return out_rows.view(tokens.shape[:3] + (out_channels,)).permute(0, 3, 1, 2)
    h = mlp.act(F.linear(tokens, w1, b1))
    o = F.linear(h, w2, b2).permute(0, 3, 1, 2)
    if residual is None:
        return o
    return fused_residual(residual, o, None, res_scale, None, branch_is_temporary=True)


def _linear_into(x: torch.Tensor, wt: torch.Tensor, bias: Optional[torch.Tensor],
                 out: torch.Tensor) -> torch.Tensor:
    """``out = x @ wt [+ bias]``, written into ``out`` (a chunk of a preallocated buffer)."""
    if bias is None:
        return torch.mm(x, wt, out=out)
    return torch.addmm(bias, x, wt, out=out)


def _mlp_chunked(act: nn.Module, tokens: torch.Tensor, w1: torch.Tensor,
                 b1: Optional[torch.Tensor], w2: torch.Tensor, b2: Optional[torch.Tensor],
                 residual: Optional[torch.Tensor], res_scale: Optional[torch.Tensor],
                 out: Optional[torch.Tensor]) -> torch.Tensor:
    """The no-grad MLP over token chunks: fc1, activation in place, fc2 added in place."""
    n, h, w, c = tokens.shape
    rows = tokens.reshape(-1, c)
    hidden = w1.shape[0]
    res_rows = None
    if residual is not None:
        res_rows = residual.permute(0, 2, 3, 1)
        if res_rows.shape != tokens.shape[:3] + (w2.shape[0],) or not res_rows.is_contiguous():
            res_rows = res_rows.contiguous()
        res_rows = res_rows.reshape(-1, w2.shape[0])
    if out is not None and out.permute(0, 2, 3, 1).is_contiguous() and \
            out.shape == (n, w2.shape[0], h, w) and out.dtype == tokens.dtype:
        dst = out.permute(0, 2, 3, 1).reshape(-1, w2.shape[0])
    else:
        out = torch.empty((n, h, w, w2.shape[0]), dtype=tokens.dtype,
                          device=tokens.device).permute(0, 3, 1, 2)
        dst = out.permute(0, 2, 3, 1).reshape(-1, w2.shape[0])
    if use_onednn(_act_kind(act), tokens, w1, w2):
        _mlp_chunked_onednn(_act_kind(act), rows, w1, b1, w2, b2, res_rows, res_scale, dst)
        return out
    w1t, w2t = w1.t(), w2.t()
    step = max(64, HIDDEN_CHUNK_ELEMENTS // hidden)
    buf = torch.empty((min(step, rows.shape[0]), hidden), dtype=tokens.dtype,
                      device=tokens.device)
    for start in range(0, rows.shape[0], step):
        stop = min(start + step, rows.shape[0])
        hid = buf[:stop - start]
        _linear_into(rows[start:stop], w1t, b1, hid)
        hid = _act_(act, hid)
        target = dst[start:stop]
        if res_rows is None:
            _linear_into(hid, w2t, b2, target)
            continue
        # target may alias the MLP input rows just read (out=x): fc1 of this chunk is done.
        if res_scale is None:
            if target.data_ptr() != res_rows[start:stop].data_ptr():
                target.copy_(res_rows[start:stop])
        else:
            torch.mul(res_rows[start:stop], res_scale, out=target)
        if b2 is not None:
            target.add_(b2)
        target.addmm_(hid, w2t)
    return out


def use_onednn(act_kind: object, tokens: torch.Tensor, *weights: torch.Tensor) -> bool:
    """Whether a no-grad MLP can run on oneDNN's fused kernels: fp32 on the CPU, with an
    activation oneDNN fuses (``act_kind`` one of ``ONEDNN_ACTS``)."""
    return (ONEDNN_LINEAR is not None and act_kind in ONEDNN_ACTS
            and tokens.device.type == 'cpu' and tokens.dtype == torch.float32
            and all(w.dtype == torch.float32 for w in weights))


def _mlp_chunked_onednn(kind: str, rows: torch.Tensor, w1: torch.Tensor,
                        b1: Optional[torch.Tensor], w2: torch.Tensor, b2: Optional[torch.Tensor],
                        res_rows: Optional[torch.Tensor], res_scale: Optional[torch.Tensor],
                        dst: torch.Tensor) -> None:
    """``dst = [res_rows * res_scale +] fc2(act(fc1(rows)))`` with the epilogues in oneDNN.

    fc1 runs with its bias and activation fused, fc2 with its bias and the residual add
    fused; one chunk of the hidden activation exists at a time. ``dst`` may alias
    ``rows`` or ``res_rows``: each chunk is written after the last read of its rows.
    """
    act, algorithm = ONEDNN_ACTS[kind]
    step = max(64, ONEDNN_HIDDEN_CHUNK_ELEMENTS // w1.shape[0])
    for start in range(0, rows.shape[0], step):
        stop = min(start + step, rows.shape[0])
        hid = ONEDNN_LINEAR(rows[start:stop], w1, b1, act, [], algorithm)
        if res_rows is None:
            dst[start:stop] = ONEDNN_LINEAR(hid, w2, b2, 'none', [], '')
            continue
        base = res_rows[start:stop]
        if res_scale is not None:
            base = base * res_scale
        dst[start:stop] = ONEDNN_LINEAR.binary(hid, base, w2, b2, 'add')


# ---------------------------------------------------------------------- training MLP
def _act_kind(act: nn.Module) -> Optional[str]:
    """'gelu', 'gelu_tanh', 'relu' or 'none' for activations the chunked MLP differentiates."""
    if type(act) is nn.GELU:
        return 'gelu' if act.approximate == 'none' else 'gelu_tanh'
    if type(act) is nn.ReLU:
        return 'relu'
    if type(act) is nn.Identity:
        return 'none'
    return None


def _apply_act(kind: str, h: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    if kind == 'none':
        return h
    if kind == 'relu':
        return torch.clamp_min(h, 0, out=out)
    return torch.ops.aten.gelu.out(h, approximate='none' if kind == 'gelu' else 'tanh',
                                   out=out)


class _ChunkedMlp(torch.autograd.Function):
    """``residual + fc2(act(fc1(z)))`` on token rows, chunk by chunk, for training.

    Forward keeps only the pre-activation ``fc1(z)`` (and ``z``); backward recomputes the
    activation chunk by chunk while the chunk is in cache. Compared with autograd on
    ``linear, act, linear`` this saves the activation output (4C per token) and never
    allocates the full-size activation, its gradient or the pre-activation's gradient:
    each lives one chunk at a time. Weight gradients accumulate over the chunks.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor, residual: Optional[torch.Tensor], w1: torch.Tensor,
                b1: Optional[torch.Tensor], w2: torch.Tensor, b2: Optional[torch.Tensor],
                kind: str) -> torch.Tensor:
        rows, hidden = z.shape[0], w1.shape[0]
        step = max(64, HIDDEN_CHUNK_ELEMENTS // hidden)
        pre = z.new_empty((rows, hidden))
        out = z.new_empty((rows, w2.shape[0]))
        buf = z.new_empty((min(step, rows), hidden))
        w1t, w2t = w1.t(), w2.t()
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            h = pre[start:stop]
            _linear_into(z[start:stop], w1t, b1, h)
            a = _apply_act(kind, h, buf[:stop - start])
            target = out[start:stop]
            if residual is None:
                _linear_into(a, w2t, b2, target)
            else:
                if b2 is None:
                    target.copy_(residual[start:stop])
                else:
                    torch.add(residual[start:stop], b2, out=target)
                target.addmm_(a, w2t)
        ctx.kind, ctx.step = kind, step
        ctx.has_b1, ctx.has_b2 = b1 is not None, b2 is not None
        ctx.has_residual = residual is not None
        ctx.save_for_backward(z, pre, w1, w2)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        z, pre, w1, w2 = ctx.saved_tensors
        kind, step = ctx.kind, ctx.step
        need_z, _, need_w1, need_b1, need_w2, need_b2, _ = ctx.needs_input_grad
        grad_out = grad_out.contiguous()
        rows, hidden = pre.shape
        grad_z = z.new_empty(z.shape) if need_z else None
        grad_w1 = w1.new_zeros(w1.shape) if need_w1 else None
        grad_w2 = w2.new_zeros(w2.shape) if need_w2 else None
        grad_b1 = w1.new_zeros(hidden) if need_b1 and ctx.has_b1 else None
        grad_b2 = grad_out.sum(0) if need_b2 and ctx.has_b2 else None
        act_buf = z.new_empty((min(step, rows), hidden))
        grad_buf = z.new_empty((min(step, rows), hidden))
        for start in range(0, rows, step):
            stop = min(start + step, rows)
            h, g = pre[start:stop], grad_out[start:stop]
            if grad_w2 is not None:
                grad_w2.addmm_(g.t(), _apply_act(kind, h, act_buf[:stop - start]))
            grad_a = torch.mm(g, w2, out=grad_buf[:stop - start])
            if kind == 'relu':
                grad_h = grad_a.mul_(h > 0)
            elif kind == 'none':
                grad_h = grad_a
            else:
                grad_h = torch.ops.aten.gelu_backward.grad_input(
                    grad_a, h, approximate='none' if kind == 'gelu' else 'tanh',
                    grad_input=grad_a)
            if grad_b1 is not None:
                grad_b1 += grad_h.sum(0)
            if grad_w1 is not None:
                grad_w1.addmm_(grad_h.t(), z[start:stop])
            if grad_z is not None:
                torch.mm(grad_h, w1, out=grad_z[start:stop])
        grad_res = grad_out if ctx.has_residual and ctx.needs_input_grad[1] else None
        return grad_z, grad_res, grad_w1, grad_b1, grad_w2, grad_b2, None
