"""The eager kernels (``metaformer_mm.accel``) against the plain formulation: default path
(train and eval, oneDNN and aten GEMMs) and the folded deploy path.

Every comparison is against the model's own plain forward on the same weights
(``kernel_cases.reference_forward``: ``kernels='reference'`` on NCHW activations, the original
eager formulation: GroupNorm, ``AvgPool2d(x) - x``, 1x1 convs, separate layer-scale
multiplies). Weights are randomized (norm affines, layer scales, biases) so that no fold
can pass by accident of an identity initialisation. Paths and chunk sizes are chosen through
the public switches (``kernels=``, ``use_kernels``, ``chunk_sizes``), never by patching.
"""
import copy
import json
import os.path as osp
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

from metaformer_mm.accel import KERNELS, AcceleratedBlock, FoldedBlocks, chunk_sizes, use_kernels
from metaformer_mm.accel import ops
from metaformer_mm.accel.activations import ACTS
from metaformer_mm.accel.folded import stage_is_foldable
from metaformer_mm.models import PoolFormer
from metaformer_mm.models.backbones.metaformer import MetaFormerBlock

from kernel_cases import (ARCHS, FUSED, ONEDNN_OP, TINY_DIMS, assert_grads_close, assert_rel,
                          build, ops_seen, reference_forward)


@pytest.mark.parametrize('name', list(ARCHS))
def test_default_eval_path_equals_plain_formulation(name):
    model = build(name).eval()
    x = torch.randn(2, 3, 67, 91)
    with torch.no_grad():
        ref = reference_forward(model, x)
        out = model(x)
    assert_rel(out, ref, what=name)
    assert all(o.is_contiguous() for o in out), 'maps leave in the usual NCHW layout'
    with torch.no_grad():  # the benchmark's channels-last run of the plain code
        assert_rel(reference_forward(model, x, channels_last=True), ref, what=name)


@pytest.mark.parametrize('name', ['poolformer', 'poolformerv2', 'caformer', 'smlpnet'])
def test_default_training_path_equals_plain_formulation_with_gradients(name):
    model = build(name, drop_path_rate=0.0).train()
    x = torch.randn(2, 3, 64, 80)
    weights = [torch.randn(s, generator=torch.Generator().manual_seed(i))
               for i, s in enumerate(o.shape for o in reference_forward(model, x))]

    def run(fn):
        model.zero_grad()
        xg = x.clone().requires_grad_()
        outs = fn(xg)
        sum((o * w).sum() for o, w in zip(outs, weights)).backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return outs, grads, xg.grad

    ref_out, ref_grads, ref_gx = run(lambda t: reference_forward(model, t))
    out, grads, gx = run(model)
    assert_rel(out, ref_out, what=name)
    assert_rel(gx, ref_gx, what='input gradient')
    assert_grads_close(model, ref_grads)


@pytest.mark.parametrize('kwargs', [
    dict(name='poolformer'),
    dict(name='poolformerv2', act_cfg=dict(type='GELU')),  # res scales in stages 2-3
    dict(name='poolformer', act_cfg=dict(type='ReLU'), drop_path_rate=0.3, frozen_stages=1),
])
def test_chunked_training_mlp_gradients_over_many_chunks(kwargs):
    """The training MLP function (activation recomputed in backward) at tiny chunk sizes."""
    with chunk_sizes(aten_mlp=3000):
        _check_training_against_reference(dict(kwargs))


def _check_training_against_reference(kwargs):
    model = build(kwargs.pop('name'), **kwargs).train()
    x = torch.randn(2, 3, 52, 60)
    torch.manual_seed(5)
    ref = reference_forward(model, x)
    sum((o * o).mean() for o in ref).backward()
    ref_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    out = model(x)
    assert_rel(out, ref)
    sum((o * o).mean() for o in out).backward()
    assert_grads_close(model, ref_grads)


def test_drop_path_draws_the_same_masks_as_the_plain_formulation():
    model = build('poolformer', drop_path_rate=0.5).train()
    x = torch.randn(4, 3, 48, 48)
    torch.manual_seed(123)
    ref = reference_forward(model, x)
    torch.manual_seed(123)
    out = model(x)
    assert_rel(out, ref)
    torch.manual_seed(124)
    other = model(x)
    assert max((a - b).abs().max() for a, b in zip(other, ref)) > 1e-3, 'masks must be random'


@pytest.mark.parametrize('name', FUSED)
@pytest.mark.parametrize('size', [(97, 131), (64, 64)])
def test_deploy_path_equals_plain_formulation(name, size):
    model = build(name).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        ref = reference_forward(model, x)
        assert all(stage_is_foldable(stage.blocks) for stage in model.stages)
        out = model.switch_to_deploy()(x)
        assert model.kernels == 'deploy'
    assert_rel(out, ref, what=f'{name} {size}')


@pytest.mark.parametrize('pool_size', [3, 5])
def test_deploy_pool_sizes_and_a_large_mean(pool_size):
    """The folded norm statistics with a mean far from zero, and a wider pooling window."""
    model = build('poolformer', pool_size=pool_size).eval()
    x = torch.randn(2, 3, 61, 45) + 3.0
    with torch.no_grad():
        assert_rel(model.switch_to_deploy()(x), reference_forward(model, x))


@pytest.mark.parametrize('kwargs', [dict(out_indices=(1, 3)), dict(out_indices=(0,)),
                                    dict(fork_feat=False, num_classes=7)])
def test_deploy_keeps_out_indices_and_classifier(kwargs):
    model = build('poolformer', **kwargs).eval()
    x = torch.randn(1, 3, 75, 53)
    with torch.no_grad():
        ref = reference_forward(model, x)
        out = model.switch_to_deploy()(x)
    if model.fork_feat:
        assert len(out) == len(model.out_indices)
    assert_rel(out, ref)


def test_deploy_on_mixed_stages_keeps_default_path_for_other_mixers():
    model = build('poolformer', token_mixers=['pooling', 'pooling', 'sepconv', 'attention'])
    model.eval().switch_to_deploy()
    assert [stage_is_foldable(s.blocks) for s in model.stages] == [True, True, False, False]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert_rel(model(x), reference_forward(model, x))
    caformer = build('caformer').eval().switch_to_deploy()
    assert not any(stage_is_foldable(s.blocks) for s in caformer.stages)


def test_deploy_is_reversible_keeps_state_dict_and_follows_weight_changes():
    model = build('poolformer').eval()
    keys = list(model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    model.switch_to_deploy()
    assert list(model.state_dict()) == keys
    other = build('poolformer', seed=1).eval()
    model.load_state_dict(other.state_dict())  # in place: the folded cache must notice
    with torch.no_grad():
        assert_rel(model(x), reference_forward(other, x))
        model.switch_to_deploy(False)
        assert model.kernels == 'auto'
        assert_rel(model(x), reference_forward(other, x))


def test_deploy_path_is_not_used_with_autograd_or_in_training():
    """With autograd the default path runs: outputs carry gradients equal to the plain ones
    (the folded weights are computed without autograd, so the folded path would give none)."""
    model = build('poolformer').switch_to_deploy()
    x = torch.randn(1, 3, 32, 32)
    for mode in (True, False):
        model.train(mode)
        torch.manual_seed(0)
        ref = reference_forward(model, x)
        sum(o.square().sum() for o in ref).backward()
        ref_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        model.zero_grad()
        torch.manual_seed(0)
        out = model(x)
        assert all(o.requires_grad for o in out)
        sum(o.square().sum() for o in out).backward()
        assert_grads_close(model, ref_grads)
        model.zero_grad()


def test_deploy_matches_original_poolformer_outputs(reference_dir):
    """The fused path against the original sail-sg code's stored features."""
    folder = osp.join(reference_dir, 'poolformer_tiny')
    model = PoolFormer(arch=dict(base='poolformer_s12', **TINY_DIMS), init_cfg=dict(
        type='Pretrained', checkpoint=osp.join(folder, 'official.pth')))
    model.init_weights()
    model.eval().switch_to_deploy()
    with torch.no_grad():
        feats = model(torch.load(osp.join(folder, 'input.pt'), weights_only=True))
    for ours, theirs in zip(feats, torch.load(osp.join(folder, 'features.pt'),
                                              weights_only=True)):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize('gemm', ['onednn', 'aten'])
def test_no_grad_mlp_chunks_are_exact(gemm):
    """Many token chunks, on oneDNN's fused kernels and on aten GEMMs."""
    if gemm == 'onednn' and not ops.available('onednn_linear'):
        pytest.skip('this torch build has no oneDNN linear kernels')
    for name in ('poolformer', 'poolformerv2', 'smlpnet'):
        model = build(name, kernels=gemm).eval()
        x = torch.randn(2, 3, 64, 72)
        with torch.no_grad(), chunk_sizes(aten_mlp=1000, onednn_mlp=1000), \
                ops_seen() as seen:
            out = model(x)
        with torch.no_grad():
            assert_rel(out, reference_forward(model, x), what=name)
        # oneDNN for GELU (PoolFormer); StarReLU (V2) is no oneDNN epilogue and sMLPNet
        # runs NCHW, where the MLP stays as 1x1 convs: both take the aten kernels.
        assert (ONEDNN_OP in seen) == (gemm == 'onednn' and name == 'poolformer'), name


def test_auto_picks_onednn_where_the_cpu_has_avx512_else_aten():
    """``'auto'`` is the fastest eager variant measured per CPU kind (README Performance)."""
    model = build('poolformer')
    avx512 = 'AVX512' in torch.backends.cpu.get_cpu_capability()
    expected = 'onednn' if avx512 and ops.available('onednn_linear') else 'aten'
    assert ops.default_gemm() == expected
    assert {blk.gemm for s in model.stages for blk in s.blocks} == {expected}


def test_block_on_a_plain_nchw_tensor_equals_plain_formulation_and_leaves_it_alone():
    block = build('poolformer').eval().stages[0].blocks[0]
    assert type(block) is AcceleratedBlock
    t = torch.randn(2, 16, 9, 11)
    before = t.clone()
    with torch.no_grad():
        assert_rel(block(t), MetaFormerBlock.forward(block, t))
    assert torch.equal(t, before)


def test_switch_to_deploy_on_a_copied_and_retrained_model():
    model = build('poolformer').eval().switch_to_deploy()
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for p in clone.parameters():
            p.mul_(1.01)  # an optimizer step changes weights in place
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        assert_rel(clone(x), reference_forward(clone, x))
        assert_rel(model(x), reference_forward(model, x))


# ------------------------------------------------------------------------- the benchmark
def _benchmark(repo_root, tmp_path, *args):
    """Runs tools/analysis/benchmark.py as a user would; returns its stdout and JSON."""
    out = tmp_path / 'bench.json'
    proc = subprocess.run([sys.executable, osp.join('tools', 'analysis', 'benchmark.py'), *args,
                           '--json', str(out)], cwd=repo_root, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_benchmark_backbones_suite_prints_every_row(repo_root, tmp_path):
    """The README's backbone, training and compile suites at a tiny size (times unchecked)."""
    text, tables = _benchmark(repo_root, tmp_path, '--suite', 'backbones', 'train', 'compile',
                              '--models', 'poolformer_s12', 'resnet18', '--shape', '64', '96',
                              '--repeats', '2', '--warmup', '1')
    assert text.startswith('machine: ') and 'GEMM rate' in text
    assert ' flags ' in text.splitlines()[0] and 'bf16 units: ' in text.splitlines()[0]
    s12, r18, train, r18_train = tables
    onednn = ['onednn'] if ops.available('onednn_linear') else []
    assert [r['name'] for r in s12['rows']] == [
        'eager', 'eager, channels-last', 'aten', *onednn, 'default', 'deploy', 'compiled',
        'compiled, freezing', 'onnxruntime']
    assert f'default = {ops.default_gemm()} kernels' in s12['note']
    cold_warm = s12['note'].split('compile s cold / warm: ')[1]
    assert 'compiled' in cold_warm and 'compiled, freezing' in cold_warm
    assert [r['name'] for r in r18['rows']] == ['default']
    assert [r['name'] for r in train['rows']] == ['eager', 'default', 'with_cp', 'compiled']
    assert 'compiled: first step' in train['note']
    assert [r['name'] for r in r18_train['rows']] == ['default']
    for table in tables:
        for row in table['rows']:
            assert 0 < row['min'] <= row['median'] <= row['max']
            assert row['limit_s'] > 0 and row['x_limit'] > 0
            assert row['name'] == 'onnxruntime' or row['memory'] > 0
    assert all(r['speedup'] > 0 for r in s12['rows'][1:])
    cp = train['rows'][2]
    assert cp['memory_vs'] == 'default' and cp['memory_ratio'] < 1.0
    assert '| deploy |' in text and '| onnxruntime |' in text


def test_benchmark_suite_all_refuses_named_models(repo_root):
    proc = subprocess.run([sys.executable, osp.join('tools', 'analysis', 'benchmark.py'),
                           '--suite', 'all', '--models', 'poolformer_s12'], cwd=repo_root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and '--suite all runs the default' in proc.stderr


def test_benchmark_whole_models_from_configs(repo_root, tmp_path):
    """``--suite models --models ...`` (the README's model commands)."""
    _, tables = _benchmark(repo_root, tmp_path, '--suite', 'models', '--models',
                           'configs/detection/retinanet_poolformer_s12.py', '--shape', '96',
                           '128', '--repeats', '1', '--warmup', '0', '--no-memory')
    (table,) = tables
    assert 'RetinaNet' in table['title'] and '1x3x96x128' in table['title']
    assert [r['name'] for r in table['rows']] == ['eager', 'default', 'deploy']
    _, tables = _benchmark(repo_root, tmp_path, '--suite', 'models', '--models',
                           'configs/segmentation/fpn_poolformer_s12.py',
                           'mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py', '--shape',
                           '64', '64', '--repeats', '1', '--warmup', '0')
    ours, resnet = tables
    assert 'EncoderDecoder' in ours['title'] and 'ResNetV1c' in resnet['title']
    assert [r['name'] for r in ours['rows']] == ['eager', 'default', 'deploy']
    assert [r['name'] for r in resnet['rows']] == ['default']
    assert all(r['memory'] > 0 for r in ours['rows'] + resnet['rows'])


def test_activation_layout_per_family():
    """Channels-last where the 1x1 GEMMs dominate; NCHW for sMLPNet's axial mixing."""
    assert build('poolformer').memory_format == torch.channels_last
    assert build('caformer').memory_format == torch.channels_last
    assert build('smlpnet').memory_format == torch.contiguous_format


# ------------------------------------------------------------------------- the switches
def test_kernels_argument_selects_the_formulation_and_is_validated():
    model = build('poolformer', kernels='reference').eval()
    assert {type(b) for s in model.stages for b in s.blocks} == {MetaFormerBlock}
    x = torch.randn(1, 3, 48, 40)
    with torch.no_grad():
        ref = reference_forward(model, x, channels_last=True)
        assert all(torch.equal(a, b) for a, b in zip(model(x), ref))  # the same code, exactly
        model.set_kernels('auto')
        assert {type(b) for s in model.stages for b in s.blocks} == {AcceleratedBlock}
        fast = model(x)
        assert not all(torch.equal(a, b) for a, b in zip(fast, ref))  # another formulation
        assert_rel(fast, ref)
        model.set_kernels('deploy')
        assert {type(s.blocks) for s in model.stages} == {FoldedBlocks}
        model.set_kernels('reference')
        assert {type(s.blocks) for s in model.stages} == {nn.Sequential}
        assert all(torch.equal(a, b) for a, b in zip(model(x), ref))
    assert KERNELS == ('auto', 'aten', 'onednn', 'reference', 'deploy')
    with pytest.raises(ValueError, match=r"kernels must be one of \['auto', 'aten', 'onednn', "
                                         r"'reference', 'deploy'\], got 'fast'"):
        build('poolformer', kernels='fast')
    # The state dict is the model's, whatever the kernels.
    assert list(model.state_dict()) == list(build('poolformer', kernels='reference').state_dict())


def test_use_kernels_switches_every_backbone_of_a_model_and_restores():
    holder = nn.ModuleDict(dict(a=build('poolformer'), b=build('caformer', kernels='aten')))
    with use_kernels(holder, 'reference'):
        assert [m.kernels for m in holder.values()] == ['reference', 'reference']
        assert all(type(blk) is MetaFormerBlock for s in holder['b'].stages for blk in s.blocks)
    assert [m.kernels for m in holder.values()] == ['auto', 'aten']
    assert all(blk.gemm == 'aten' for s in holder['b'].stages for blk in s.blocks)
    with pytest.raises(ValueError, match='holds no MetaFormer'):
        with use_kernels(nn.Linear(2, 2), 'reference'):
            pass
    with pytest.raises(ValueError, match='chunk_sizes takes positive ints'):
        with chunk_sizes(hidden=10):
            pass


def test_private_ops_are_feature_tested_and_activation_table_forms_agree():
    """Each activation's in-place, out=, backward and fused forms against autograd on the
    plain op (the fused oneDNN form through a whole linear)."""
    assert ops.available('aten_gelu') and isinstance(ops.available('onednn_linear'), bool)
    h = torch.randn(40, 24)
    for kind, act in ACTS.items():
        ref = act.plain(h)
        assert torch.allclose(act.inplace(h.clone()), ref, atol=1e-6), kind
        assert torch.allclose(act.out(h, torch.empty_like(h)), ref, atol=1e-6), kind
        if act.backward is not None:
            g = torch.randn_like(h)
            hg = h.clone().requires_grad_()
            (expected,) = torch.autograd.grad(act.plain(hg), hg, g)
            assert torch.allclose(act.backward(g.clone(), h), expected, atol=1e-6), kind
        if act.onednn is not None and ops.available('onednn_linear'):
            w, b = torch.randn(8, 24), torch.randn(8)
            torch.testing.assert_close(ops.onednn_linear(h, w, b, *act.onednn),
                                       act.plain(h @ w.t() + b), rtol=1e-5, atol=1e-5)


def test_operator_probes_run_when_kernels_are_installed_and_leave_the_rng_alone():
    """The probes run in ``set_kernels`` (never inside a forward, which may be traced) and
    draw no random numbers: a seeded run's drop-path masks do not depend on them."""
    ops.available.cache_clear()
    torch.manual_seed(7)
    expected = torch.rand(4)
    torch.manual_seed(7)
    model = build('poolformer', seed=3, kernels='reference')
    torch.manual_seed(7)
    model.set_kernels('auto')
    assert ops.available.cache_info().currsize == 3  # every probe, once
    assert torch.equal(torch.rand(4), expected)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        model(x)
    assert ops.available.cache_info().currsize == 3
