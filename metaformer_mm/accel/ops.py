"""The private torch operators of the eager kernels (oneDNN's fused linear, aten's ``out=``
GELU): each is compared once with the public op when kernels are installed, and where that
fails the public op runs."""
import functools
from typing import Optional

import torch
import torch.nn.functional as F

_ATEN = torch.ops.aten


def _sample(*shape: int) -> torch.Tensor:
    """Fixed, irregular probe operands (no RNG: a probe changes no random state)."""
    n = 1
    for d in shape:
        n *= d
    return torch.sin(torch.arange(n, dtype=torch.float32) * 1.7 + 0.3).reshape(shape)


def _probe_onednn(dtype: torch.dtype) -> bool:
    if not torch.backends.mkldnn.is_available():
        return False
    x, w, b, other = (_sample(*shape).to(dtype) for shape in ((3, 8), (5, 8), (5,), (3, 5)))
    fused, added = onednn_linear(x, w, b, 'gelu', 'none'), onednn_linear_add(x, other, w, b)
    ref = F.linear(x.float(), w.float(), b.float())  # bf16 operands accumulate in fp32
    tol = dict(atol=1e-5) if dtype == torch.float32 else dict(atol=3e-2, rtol=1e-2)
    return (fused.dtype == added.dtype == dtype
            and torch.allclose(fused.float(), F.gelu(ref), **tol)
            and torch.allclose(added.float(), ref + other.float(), **tol))


def _probe_gelu() -> bool:
    h, g = _sample(7), _sample(7)
    ref = torch.func.vjp(F.gelu, h)[1](g)[0]
    out = _ATEN.gelu.out(h.clone(), approximate='none', out=torch.empty(7))
    inplace = h.clone()
    grad = _ATEN.gelu_backward.grad_input(g, h, approximate='none', grad_input=torch.empty(7))
    _ATEN.gelu.out(inplace, approximate='none', out=inplace)
    return (torch.allclose(inplace, F.gelu(h)) and torch.allclose(out, F.gelu(h))
            and torch.allclose(grad, ref, atol=1e-6))


_PROBES = {'onednn_linear': functools.partial(_probe_onednn, torch.float32),
           'onednn_linear_bf16': functools.partial(_probe_onednn, torch.bfloat16),
           'aten_gelu': _probe_gelu}


@functools.lru_cache(maxsize=None)
def available(name: str) -> bool:
    """Whether the private operator ``name`` (a key of ``_PROBES``) works in this build."""
    try:
        # The first call may come from a forward under autocast, which would change the
        # plain ops the probe compares with.
        with torch.autocast('cpu', enabled=False):
            return bool(_PROBES[name]())
    except (AttributeError, RuntimeError, TypeError, NotImplementedError):
        return False


def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                  act: str, algorithm: str) -> torch.Tensor:
    """``act(x @ weight.T + bias)`` with the activation fused in oneDNN's GEMM epilogue."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, act, [], algorithm)


def onednn_linear_add(x: torch.Tensor, other: torch.Tensor, weight: torch.Tensor,
                      bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``x @ weight.T + bias + other`` with the residual add fused in oneDNN's epilogue."""
    return torch.ops.mkldnn._linear_pointwise.binary(x, other, weight, bias, 'add')


def gelu_into(h: torch.Tensor, approximate: str, out: torch.Tensor) -> torch.Tensor:
    """GELU of ``h`` written into ``out`` (``out`` may be ``h``)."""
    if available('aten_gelu'):
        return _ATEN.gelu.out(h, approximate=approximate, out=out)
    return out.copy_(F.gelu(h, approximate=approximate))


def gelu_backward_(grad: torch.Tensor, h: torch.Tensor, approximate: str) -> torch.Tensor:
    """The gradient of GELU at ``h`` times ``grad``, written into ``grad``."""
    if available('aten_gelu'):
        return _ATEN.gelu_backward.grad_input(grad, h, approximate=approximate, grad_input=grad)
    vjp = torch.func.vjp(lambda t: F.gelu(t, approximate=approximate), h)[1]
    return grad.copy_(vjp(grad)[0])


def autocast_enabled() -> bool:
    """Whether any autocast context is active."""
    try:
        return torch.is_autocast_enabled('cpu') or torch.is_autocast_enabled('cuda')
    except TypeError:  # torch < 2.4 takes no device argument (the floor is 2.1)
        return torch.is_autocast_cpu_enabled() or torch.is_autocast_enabled()


def cpu_autocast_dtype() -> Optional[torch.dtype]:
    """The dtype of an active CPU autocast context, None when CPU autocast is off."""
    try:
        return torch.get_autocast_dtype('cpu') if torch.is_autocast_enabled('cpu') else None
    except (TypeError, AttributeError):  # torch < 2.4
        return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None


def default_gemm() -> str:
    """The GEMM library of ``kernels='auto'``: oneDNN where the CPU has AVX-512 (fastest
    there), else aten (on AVX2 oneDNN's fp32 linear was slower than the chunked loop)."""
    capability = getattr(torch.backends.cpu, 'get_cpu_capability', lambda: '')()
    return 'onednn' if 'AVX512' in capability and available('onednn_linear') else 'aten'
