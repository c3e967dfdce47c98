"""Tiny MetaFormers with randomized weights and the comparisons the kernel tests share
(``kernels/test_eager_kernels.py``: fp32 paths; ``kernels/test_eager_kernels_bf16.py``: under
bf16 autocast; ``models/test_gradient_checkpointing.py``: ``with_cp``; ``kernels/test_torch_compile.py``: torch.compile; ``tools/test_export_onnx.py``)."""
import collections
import contextlib
from typing import Counter, Iterator

import torch
import torch.nn as nn

from metaformer_mm.accel import plain_forward
from metaformer_mm.models import (CAFormer, IdentityFormer, MetaFormer, PoolFormer, PoolFormerV2,
                                  RandFormer, SMLPNet)

TINY_DIMS = dict(depths=[1, 1, 2, 1], dims=[16, 32, 48, 64])
ARCHS = {
    'poolformer': lambda **kw: PoolFormer(arch=dict(base='poolformer_s12', **TINY_DIMS), **kw),
    'poolformerv2': lambda **kw: PoolFormerV2(arch=dict(base='poolformerv2_s12', **TINY_DIMS),
                                              **kw),
    'identityformer': lambda **kw: IdentityFormer(arch=dict(base='identityformer_s12',
                                                            **TINY_DIMS), **kw),
    'caformer': lambda **kw: CAFormer(arch=dict(base='caformer_s18', depths=[1, 1, 1, 1],
                                                dims=[16, 32, 64, 64]), **kw),
    'smlpnet': lambda **kw: SMLPNet(arch=dict(base='smlpnet_tiny', depths=[1, 1, 1, 1],
                                              dims=[8, 16, 32, 64]), image_size=64, **kw),
    'randformer': lambda **kw: RandFormer(arch=dict(base='randformer_s12', depths=[1, 1, 1, 1],
                                                    dims=[16, 32, 48, 64]), image_size=64, **kw),
}
FUSED = ['poolformer', 'poolformerv2', 'identityformer']
ONEDNN_OP = 'mkldnn::_linear_pointwise'


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random norm affines, layer/res scales and biases, BN statistics: no identity folds."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and ('scale' in name or 'norm' in name and name.endswith('weight')):
                p.copy_(torch.rand(p.shape, generator=gen) * 1.2 + 0.3)
            elif name.endswith('bias'):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * (0.5 / max(1, p[0].numel()) ** 0.5))
        for name, b in model.named_buffers():
            if name.endswith('running_var'):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
            elif name.endswith('running_mean'):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
    return model


def build(name: str, seed: int = 0, **kwargs) -> MetaFormer:
    """The tiny model ``ARCHS[name]``, randomized with ``seed``."""
    torch.manual_seed(seed)
    return randomized(ARCHS[name](**kwargs), seed)


def reference_forward(model: MetaFormer, x: torch.Tensor, channels_last: bool = False):
    """``model``'s own plain forward, on NCHW activations as the original code ran it unless
    ``channels_last``."""
    return plain_forward(model, x, channels_last)


def assert_rel(ours, ref, tol=1e-4, what=''):
    """Max abs difference within ``tol`` of the reference's max magnitude (per tensor)."""
    ours = ours if isinstance(ours, (tuple, list)) else (ours,)
    ref = ref if isinstance(ref, (tuple, list)) else (ref,)
    assert len(ours) == len(ref), what
    for i, (o, r) in enumerate(zip(ours, ref)):
        assert o.shape == r.shape, (what, i, o.shape, r.shape)
        err = (o.float() - r.float()).abs().max().item() / r.float().abs().max().item()
        assert err <= tol, f'{what} output {i}: relative error {err:.2e}'


def assert_grads_close(model: nn.Module, ref_grads, tol: float = 1e-4) -> None:
    """Per-parameter gradients of ``model`` within ``tol`` of ``ref_grads`` (relative to the
    largest gradient of that parameter, with a floor for gradients that are zero in exact
    maths, such as PoolFormer's norm1 bias, which pooling-minus-identity cancels)."""
    scale = max(g.abs().max().item() for g in ref_grads.values())
    for name, p in model.named_parameters():
        assert (p.grad is None) == (name not in ref_grads), name
        if p.grad is None:
            continue
        ref = ref_grads[name]
        err = (p.grad - ref).abs().max().item()
        assert err <= tol * ref.abs().max().item() + 1e-6 * scale, (name, err)


@contextlib.contextmanager
def ops_seen() -> Iterator[Counter[str]]:
    """How often each operator ran inside the block (torch's profiler)."""
    seen: Counter[str] = collections.Counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        yield seen
    seen.update(event.name for event in prof.events())
