"""The channel MLP on channels-last token rows, in chunks of rows so that the 4x-wide hidden
activation stays in cache (on oneDNN's fused epilogues where ``ACTS`` names one). Inference
under CPU bf16 autocast runs the same loop on bf16 operands. Training keeps only the
pre-activation; backward recomputes the activation chunk by chunk."""
import functools
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.layers import Mlp
from . import chunking, ops
from .activations import ACTS, ActKernel, act_kind, fold_into_fc2
from .elementwise import fused_residual

Tensor = torch.Tensor


def is_plain_mlp(mlp: nn.Module) -> bool:
    """Whether ``mlp`` is a ``layers.Mlp`` (every preset's), not a user's module."""
    return isinstance(mlp, Mlp)


def _gemm_into(x: Tensor, wt: Tensor, bias: Optional[Tensor], out: Tensor) -> Tensor:
    """``out = x @ wt [+ bias]``, written into ``out``."""
    return torch.mm(x, wt, out=out) if bias is None else torch.addmm(bias, x, wt, out=out)


def chunked_mlp(rows: Tensor, w1: Tensor, b1: Optional[Tensor], w2: Tensor,
                b2: Optional[Tensor], dst: Tensor, act: Union[ActKernel, nn.Module],
                epilogue: Optional[Tuple[str, str]] = None, base: Optional[Tensor] = None,
                res_scale: Optional[Tensor] = None, pre: Optional[Tensor] = None) -> None:
    """``dst = [base * res_scale +] fc2(act(fc1(rows)))`` over chunks of rows: on oneDNN
    with ``epilogue``, else on aten GEMMs, ``pre`` (training) keeping fc1's output. ``dst`` may
    alias ``rows`` or ``base``. The GEMMs run in the weights' dtype; with bf16 weights fp32
    inputs are cast per chunk and fc2's output is added in ``dst``'s dtype, as under autocast."""
    n, hidden, compute = rows.shape[0], w1.shape[0], w1.dtype
    step = max(64, chunking.SIZES['onednn_mlp' if epilogue else 'aten_mlp'] // hidden)
    buf = None if epilogue else rows.new_empty((min(step, n), hidden), dtype=compute)
    w1t, w2t = w1.t(), w2.t()
    # fc2 writes (or adds) straight into dst where dst and the residual are in its dtype.
    direct = all(t is None or t.dtype == compute for t in (dst, base, res_scale))
    for start in range(0, n, step):
        stop = min(start + step, n)
        x, target = rows[start:stop].to(compute), dst[start:stop]
        res = None if base is None else base[start:stop]
        if epilogue:
            h = ops.onednn_linear(x, w1, b1, *epilogue)
            if res is not None and direct:
                res = res if res_scale is None else res * res_scale
                target.copy_(ops.onednn_linear_add(h, res, w2, b2))
                continue
            branch = ops.onednn_linear(h, w2, b2, 'none', '')
        else:
            h = _gemm_into(x, w1t, b1, buf[:stop - start] if pre is None else pre[start:stop])
            h = act.out(h, buf[:stop - start]) if pre is not None else \
                act.inplace(h) if isinstance(act, ActKernel) else act(h)
            if direct and res is None:
                _gemm_into(h, w2t, b2, target)
                continue
            if direct:  # the residual (scaled) into dst, then fc2 accumulates onto it
                if res_scale is not None:
                    torch.mul(res, res_scale, out=target)
                elif target.data_ptr() != res.data_ptr():
                    target.copy_(res)
                if b2 is not None:
                    target.add_(b2)
                target.addmm_(h, w2t)
                continue
            branch = torch.mm(h, w2t) if b2 is None else torch.addmm(b2, h, w2t)
        if res is None:
            target.copy_(branch)
        else:
            torch.add(res if res_scale is None else res * res_scale, branch, out=target)


_ONEDNN_OP = {torch.float32: 'onednn_linear', torch.bfloat16: 'onednn_linear_bf16'}


def _bf16_autocast(tokens: Tensor, residual: Optional[Tensor]) -> bool:
    """Whether the call runs under CPU bf16 autocast, which the chunked loop then does
    itself."""
    floats = (torch.float32, torch.bfloat16)
    return (tokens.device.type == 'cpu' and ops.cpu_autocast_dtype() == torch.bfloat16
            and tokens.dtype in floats and (residual is None or residual.dtype in floats))


def mlp_forward(mlp: nn.Module, x: Tensor, out_scale: Optional[Tensor] = None,
                residual: Optional[Tensor] = None, res_scale: Optional[Tensor] = None,
                out: Optional[Tensor] = None, onednn: bool = True) -> Tensor:
    """``[residual * res_scale +] out_scale * fc2(act(fc1(x)))`` of a plain MLP on NCHW ``x``,
    as a channels-last map. ``out`` (no-grad only) is a buffer that may take the result;
    ``onednn=False`` keeps the aten GEMMs."""
    tokens = x.permute(0, 2, 3, 1)
    if not tokens.is_contiguous():
        # An NCHW model (sMLPNet): the 1x1 convs as convs, the scale in the residual update.
        o = mlp.fc2(mlp.act(mlp.fc1(x)))
        if residual is None:
            return o if out_scale is None else o * out_scale.view(1, -1, 1, 1)
        return fused_residual(residual, o, out_scale, res_scale, None, branch_is_temporary=True)
    w1, b1 = mlp.fc1.weight.flatten(1), mlp.fc1.bias
    w2, b2 = mlp.fc2.weight.flatten(1), mlp.fc2.bias
    if out_scale is not None:
        w2 = w2 * out_scale.view(-1, 1)
        b2 = None if b2 is None else b2 * out_scale
    grad = torch.is_grad_enabled() and (x.requires_grad or w1.requires_grad or w2.requires_grad)
    kernel = ACTS.get(act_kind(mlp.act))
    n, h, w, c = tokens.shape
    out_channels = w2.shape[0]
    bf16 = not grad and _bf16_autocast(tokens, residual)
    chunkable = x.device.type == 'cpu' and (bf16 or not ops.autocast_enabled())
    if chunkable and not grad:
        base = None if residual is None else \
            residual.permute(0, 2, 3, 1).contiguous().view(-1, out_channels)  # copies odd layouts
        # The result's dtype is autocast's: fp32 scales or residual promote a bf16 branch.
        others = [t.dtype for t in (out_scale, residual, res_scale) if t is not None]
        dtype = functools.reduce(torch.promote_types, others,
                                 torch.bfloat16 if bf16 else tokens.dtype)
        if not (out is not None and out.permute(0, 2, 3, 1).is_contiguous()
                and out.shape == (n, out_channels, h, w) and out.dtype == dtype):
            out = tokens.new_empty((n, h, w, out_channels), dtype=dtype).permute(0, 3, 1, 2)
        act, epilogue = mlp.act, None
        if kernel is not None:
            w2, b2 = fold_into_fc2(act, w2, b2)
            act = kernel
        if bf16:  # what autocast would do to the GEMMs' operands, once per call
            w1, b1, w2, b2 = (None if t is None else t.to(torch.bfloat16) for t in (w1, b1, w2, b2))
        if (kernel is not None and onednn and kernel.onednn is not None
                and w1.dtype in _ONEDNN_OP and ops.available(_ONEDNN_OP[w1.dtype])):
            epilogue = kernel.onednn
        chunked_mlp(tokens.reshape(-1, c), w1, b1, w2, b2,
                    out.permute(0, 2, 3, 1).view(-1, out_channels), act, epilogue, base,
                    res_scale)
        return out
    base = residual if res_scale is None or residual is None else \
        residual * res_scale.view(1, -1, 1, 1)
    if (chunkable and kernel is not None and kernel.backward is not None
            and tokens.dtype == w1.dtype and (base is None or base.dtype == tokens.dtype)):
        if base is not None:
            base = base.permute(0, 2, 3, 1).contiguous().view(-1, out_channels)
        rows = _ChunkedMlp.apply(tokens.reshape(-1, c), base, w1, b1, w2, b2, kernel)
        return rows.view(n, h, w, out_channels).permute(0, 3, 1, 2)
    o = F.linear(mlp.act(F.linear(tokens, w1, b1)), w2, b2).permute(0, 3, 1, 2)
    if residual is None:
        return o
    return fused_residual(residual, o, None, res_scale, None, branch_is_temporary=True)


class _ChunkedMlp(torch.autograd.Function):
    """``residual + fc2(act(fc1(z)))`` on token rows for training, keeping ``fc1(z)``;
    backward recomputes the activation chunk by chunk."""

    @staticmethod
    def forward(ctx, z: Tensor, residual: Optional[Tensor], w1: Tensor, b1: Optional[Tensor],
                w2: Tensor, b2: Optional[Tensor], kernel: ActKernel) -> Tensor:
        pre = z.new_empty((z.shape[0], w1.shape[0]))
        out = z.new_empty((z.shape[0], w2.shape[0]))
        chunked_mlp(z, w1, b1, w2, b2, out, kernel, base=residual, pre=pre)
        ctx.kernel, ctx.has_b1, ctx.has_b2 = kernel, b1 is not None, b2 is not None
        ctx.has_residual = residual is not None
        ctx.save_for_backward(z, pre, w1, w2)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):
        z, pre, w1, w2 = ctx.saved_tensors
        kernel = ctx.kernel
        need_z, _, need_w1, need_b1, need_w2, need_b2, _ = ctx.needs_input_grad
        grad_out = grad_out.contiguous()
        rows, hidden = pre.shape
        step = max(64, chunking.SIZES['aten_mlp'] // hidden)
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
                grad_w2.addmm_(g.t(), kernel.out(h, act_buf[:stop - start]))
            grad_h = kernel.backward(torch.mm(g, w2, out=grad_buf[:stop - start]), h)
            if grad_b1 is not None:
                grad_b1 += grad_h.sum(0)
            if grad_w1 is not None:
                grad_w1.addmm_(grad_h.t(), z[start:stop])
            if grad_z is not None:
                torch.mm(grad_h, w1, out=grad_z[start:stop])
        grad_res = grad_out if ctx.has_residual and ctx.needs_input_grad[1] else None
        return grad_z, grad_res, grad_w1, grad_b1, grad_w2, grad_b2, None
