"""The fused residual update: one pass over the map for ``x * res_scale + factor * ls * branch``."""
from typing import Optional

import torch
import torch.nn as nn


def scale_vector(module: nn.Module) -> Optional[torch.Tensor]:
    """The vector of a layer-scale / res-scale module, None for identity."""
    scale = getattr(module, 'scale', None)
    return scale if isinstance(scale, torch.Tensor) else None


def fused_residual(x: torch.Tensor, branch: torch.Tensor, layer_scale: Optional[torch.Tensor],
                   res_scale: Optional[torch.Tensor], factor: Optional[torch.Tensor],
                   branch_is_temporary: bool) -> torch.Tensor:
    """``x * res_scale + factor * layer_scale * branch`` in one kernel where possible;
    ``branch_is_temporary`` (made by the caller, saved by no backward) lets ``branch`` take it."""
    weight = None if layer_scale is None else layer_scale.view(1, -1, *([1] * (x.ndim - 2)))
    if factor is not None:
        weight = factor if weight is None else weight * factor
    base = x if res_scale is None else x * res_scale.view(1, -1, *([1] * (x.ndim - 2)))
    dtype = torch.promote_types(base.dtype, branch.dtype)
    if weight is not None:
        dtype = torch.promote_types(dtype, weight.dtype)
    # The buffer takes the result only with the result's dtype and shape, never while autograd
    # records (writing into a view, a permuted linear output, would make backward copy the
    # gradient through CopySlices).
    recording = torch.is_grad_enabled() and (branch.requires_grad or base.requires_grad)
    inplace = (branch_is_temporary and not recording
               and branch.dtype == dtype and branch.shape == base.shape)
    if weight is None:
        return branch.add_(base) if inplace else base + branch
    if inplace and not (torch.is_grad_enabled() and weight.requires_grad):
        return torch.addcmul(base, branch, weight, out=branch)
    return torch.addcmul(base, branch, weight)
