"""How a MetaFormer block is computed, chosen by ``MetaFormer(kernels=...)``, ``set_kernels`` or
``use_kernels``: ``'reference'`` the original formulation (``reference.py``, the test oracle);
``'auto'`` (default) channels-last maps, fused residual updates (``elementwise.py``) and a chunked
GEMM loop for the MLP (``mlp.py``) on oneDNN where it applies; ``'aten'`` the same on aten GEMMs
only; ``'deploy'`` pooling/identity stages folded into their 1x1 convs (``folded.py``).
"""
import contextlib
from typing import Iterator

import torch.nn as nn

from .chunking import chunk_sizes  # noqa: F401
from .reference import reference_block, reference_forward  # noqa: F401

KERNELS = ('auto', 'aten', 'reference', 'deploy')


def check_kernels(kernels: str) -> str:
    """``kernels`` itself, or a ValueError naming the allowed values."""
    if kernels not in KERNELS:
        raise ValueError(f'kernels must be one of {list(KERNELS)}, got {kernels!r}')
    return kernels


@contextlib.contextmanager
def use_kernels(model: nn.Module, kernels: str) -> Iterator[nn.Module]:
    """Runs every MetaFormer inside ``model`` (or ``model`` itself) on ``kernels`` while the
    context lasts, then restores each one's previous choice."""
    check_kernels(kernels)
    backbones = [m for m in model.modules() if hasattr(m, 'set_kernels')]
    if not backbones:
        raise ValueError(f'{type(model).__name__} holds no MetaFormer backbone')
    saved = [m.kernels for m in backbones]
    for m in backbones:
        m.set_kernels(kernels)
    try:
        yield model
    finally:
        for m, previous in zip(backbones, saved):
            m.set_kernels(previous)
