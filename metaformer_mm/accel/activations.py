"""The MLP activations' kernels: module type -> fused, in-place, out= and backward forms.
StarReLU is ``relu_square`` with its scalars folded into fc2 (``fold_into_fc2``)."""
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..models.layers import SquaredReLU, StarReLU
from . import ops

Tensor = torch.Tensor


@dataclass(frozen=True)
class ActKernel:
    """The forms of one activation kind."""
    onednn: Optional[Tuple[str, str]]              # oneDNN epilogue (name, algorithm)
    inplace: Callable[[Tensor], Tensor]            # act(h), written into h
    out: Callable[[Tensor, Tensor], Tensor]        # act(h), written into out (h kept)
    backward: Optional[Callable[[Tensor, Tensor], Tensor]]  # (grad, h) -> grad * act'(h), into grad
    plain: Callable[[Tensor], Tensor]              # act(h), out of place


def _gelu(approximate: str) -> ActKernel:
    return ActKernel(('gelu', approximate), lambda h: ops.gelu_into(h, approximate, h),
                     lambda h, out: ops.gelu_into(h, approximate, out),
                     lambda g, h: ops.gelu_backward_(g, h, approximate),
                     lambda h: F.gelu(h, approximate=approximate))


ACTS: Dict[str, ActKernel] = {
    'gelu': _gelu('none'),
    'gelu_tanh': _gelu('tanh'),
    'relu': ActKernel(('relu', ''), torch.relu_, lambda h, out: torch.clamp_min(h, 0, out=out),
                      lambda g, h: g.mul_(h > 0), F.relu),
    'relu_square': ActKernel(None, lambda h: h.relu_().square_(),
                             lambda h, out: torch.clamp_min(h, 0, out=out).square_(), None,
                             lambda h: F.relu(h).square()),
    'none': ActKernel(('none', ''), lambda h: h, lambda h, out: h, lambda g, h: g, lambda h: h),
}

_KIND_OF_TYPE: Dict[type, str] = {nn.ReLU: 'relu', nn.Identity: 'none',
                                   StarReLU: 'relu_square', SquaredReLU: 'relu_square'}


def act_kind(act: nn.Module) -> Optional[str]:
    """The ``ACTS`` key of an activation module, None for types the table lacks."""
    if type(act) is nn.GELU:
        return 'gelu' if act.approximate == 'none' else 'gelu_tanh'
    return _KIND_OF_TYPE.get(type(act))


def fold_into_fc2(act: nn.Module, w2: Tensor, b2: Optional[Tensor]
                  ) -> Tuple[Tensor, Optional[Tensor]]:
    """fc2's weight and bias with StarReLU's scale and bias folded in; unchanged for other
    activations."""
    if not isinstance(act, StarReLU):
        return w2, b2
    shift = act.bias * w2.sum(1)
    return w2 * act.scale, shift if b2 is None else b2 + shift
