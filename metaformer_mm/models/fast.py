"""Fused element-wise work of the default (training and inference) path of a MetaFormer block.

The default path computes exactly what the plain formulation computes (see
``metaformer_mm.models.deploy.reference_forward``), but

* keeps activations channels-last, so that every 1x1 conv is one GEMM on the
  ``(N*H*W, C)`` view of the tensor (no layout conversion, no copy);
* runs the channel MLP as ``F.linear`` on that view, with the layer scale folded into
  the second weight (``ls * (W h + b) = (ls W) h + ls b``: one GEMM instead of a GEMM and a
  multiply, and no scaled copy saved for backward);
* fuses each residual update ``x * r + drop_path(ls * branch)`` into one ``addcmul`` (or an
  in-place add), writing into the branch's own buffer when autograd allows it;
* without autograd, runs the MLP over chunks of tokens, so that the 4x-wide hidden
  activation never leaves the cache, is never allocated in full and the activation
  is applied in place.

Everything here is autograd-safe: in-place updates only touch tensors created here that
no backward function saved.
"""
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

# Tokens per chunk of the no-grad MLP: keeps a chunk's hidden activation (tokens x 4C
# floats) around 1-2 MiB, within the per-core L2 of current x86 CPUs.
HIDDEN_CHUNK_ELEMENTS = 1 << 20


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
    # The buffer may take the result only if it has the result's dtype and shape (never
    # while tracing: the exported graph is pure).
    # With autograd recording, writing into the branch (often a permuted view of a linear
    # output) would make backward copy the gradient through CopySlices: stay out of place.
    recording = torch.is_grad_enabled() and (branch.requires_grad or base.requires_grad)
    inplace = (branch_is_temporary and not recording and not exporting()
               and branch.dtype == dtype and branch.shape == base.shape)
    if weight is None:
        return branch.add_(base) if inplace else base + branch
    if inplace and not (torch.is_grad_enabled() and weight.requires_grad):
        return torch.addcmul(base, branch, weight, out=branch)
    return torch.addcmul(base, branch, weight)


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
    w1, b1, w2, b2 = _linear_weights(mlp, out_scale)
    tokens = x.permute(0, 2, 3, 1)
    grad = torch.is_grad_enabled() and (x.requires_grad or any(
        p.requires_grad for p in (w1, w2)))
    if (not grad and x.device.type == 'cpu' and tokens.is_contiguous()
            and not autocast_enabled() and not exporting()):
        return _mlp_chunked(mlp.act, tokens, w1, b1, w2, b2, residual, res_scale, out)
    h = mlp.act(F.linear(tokens, w1, b1))
    o = F.linear(h, w2, b2).permute(0, 3, 1, 2)
    if residual is None:
        return o
    return fused_residual(residual, o, None, res_scale, None, branch_is_temporary=True)


def _mlp_chunked(act: nn.Module, tokens: torch.Tensor, w1: torch.Tensor,
                 b1: Optional[torch.Tensor], w2: torch.Tensor, b2: Optional[torch.Tensor],
                 residual: Optional[torch.Tensor], res_scale: Optional[torch.Tensor],
                 out: Optional[torch.Tensor]) -> torch.Tensor:
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
    w1t, w2t = w1.t(), w2.t()
    step = max(64, HIDDEN_CHUNK_ELEMENTS // hidden)
    buf = torch.empty((min(step, rows.shape[0]), hidden), dtype=tokens.dtype,
                      device=tokens.device)
    for start in range(0, rows.shape[0], step):
        stop = min(start + step, rows.shape[0])
        hid = buf[:stop - start]
        if b1 is None:
            torch.mm(rows[start:stop], w1t, out=hid)
        else:
            torch.addmm(b1, rows[start:stop], w1t, out=hid)
        hid = _act_(act, hid)
        target = dst[start:stop]
        if res_rows is None:
            if b2 is None:
                torch.mm(hid, w2t, out=target)
            else:
                torch.addmm(b2, hid, w2t, out=target)
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
