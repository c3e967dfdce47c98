"""The acceleration layer: eager kernels beside the model, chosen by ``MetaFormer(kernels=...)``,
``set_kernels`` or ``use_kernels``. It imports the model, never the reverse, and registers
``install`` as ``MetaFormer.kernel_installer``.

``'reference'``: the model's own forward; ``'auto'``: fused residual updates and a chunked
channels-last MLP, on oneDNN's fused linear where the CPU has AVX-512, else aten's GEMMs;
``'onednn'``/``'aten'``: one GEMM library; ``'deploy'``: pooling/identity stages folded.
Every choice computes the same function and runs the plain formulation when traced."""
import contextlib
from typing import Iterator, Optional

import torch
import torch.nn as nn

from ..models.backbones.metaformer import MetaFormer
from .blocks import KERNELS, AcceleratedBlock, FoldedBlocks, check_kernels, install
from .chunking import chunk_sizes

MetaFormer.kernel_installer = staticmethod(install)

__all__ = ['KERNELS', 'AcceleratedBlock', 'FoldedBlocks', 'check_kernels', 'chunk_sizes',
           'install', 'plain_forward', 'use_kernels']


@contextlib.contextmanager
def use_kernels(model: nn.Module, kernels: str) -> Iterator[nn.Module]:
    """Runs every MetaFormer in ``model`` on ``kernels`` while the context lasts, then
    restores each one's choice."""
    check_kernels(kernels)
    backbones = [m for m in model.modules() if isinstance(m, MetaFormer)]
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


def plain_forward(model: MetaFormer, x: torch.Tensor, channels_last: Optional[bool] = None):
    """``model``'s plain forward on ``x``: the oracle of the kernel tests and the "original"
    rows of the benchmarks. ``channels_last=False`` runs NCHW activations as the original code
    did. Gradient checkpointing is off: its backward would recompute with later kernels."""
    saved = model.memory_format, model.with_cp
    if channels_last is not None:
        model.memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.with_cp = False
    try:
        with use_kernels(model, 'reference'):
            return model(x)
    finally:
        model.memory_format, model.with_cp = saved
