"""``with_cp`` (gradient checkpointing per block), for every family: in training each block's
forward runs once more in backward (and only under ``with_cp``), and the outputs and
gradients are those of the plain formulation."""
import pytest
import torch

from metaformer_mm.models import ConvFormer

from kernel_cases import ARCHS, assert_grads_close, assert_rel, randomized, reference_forward

FAMILIES = dict(ARCHS, convformer=lambda **kw: ConvFormer(
    arch=dict(base='convformer_s18', depths=[1, 1, 1, 1], dims=[16, 32, 64, 64]), **kw))


@pytest.mark.parametrize('name', sorted(FAMILIES))
def test_with_cp_recomputes_each_block_in_backward_and_gives_the_plain_gradients(name):
    torch.manual_seed(0)
    model = randomized(FAMILIES[name](with_cp=True)).train()
    x = torch.randn(2, 3, 64, 64)
    ref = reference_forward(model, x)  # the plain formulation, without checkpointing
    sum(o.square().mean() for o in ref).backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    blocks = [b for stage in model.stages for b in stage.blocks]
    calls = [0] * len(blocks)
    for i, block in enumerate(blocks):
        block.register_forward_pre_hook(lambda m, a, i=i: calls.__setitem__(i, calls[i] + 1))
    for with_cp, in_backward in ((True, 2), (False, 1)):
        model.zero_grad()
        model.with_cp = with_cp
        calls[:] = [0] * len(blocks)
        out = model(x)
        assert calls == [1] * len(blocks), with_cp
        sum(o.square().mean() for o in out).backward()
        assert calls == [in_backward] * len(blocks), \
            f'with_cp={with_cp}: block forward calls after backward {calls}'
        assert_rel(out, ref, what=f'{name} with_cp={with_cp}')
        assert_grads_close(model, ref_grads)
