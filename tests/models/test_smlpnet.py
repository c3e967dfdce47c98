"""sMLPNet: fidelity to microsoft/SPACH, the sMLP any-size rule, training options.

The reference model (``smlpnet_tiny``) is an original SPACH ``sMLPNet`` with ``dim=8``,
``depths=[1, 1, 2, 1]`` and ``image_size=64``; see ``shared/reference/README.md``.
"""
import os.path as osp
import re
from typing import Dict, List

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules.batchnorm import _BatchNorm

import metaformer_mm  # noqa: F401  (registers the backbones)
from metaformer_mm.checkpoint import (CheckpointError, convert_state_dict, load_pretrained,
                                      save_converted)
from metaformer_mm.models.backbones import SMLPNet
from metaformer_mm.models.layers import DropPath
from metaformer_mm.models.mixers import SMLP, Pooling

TINY_ARCH = dict(base='smlpnet_tiny', dims=[8, 16, 32, 64], depths=[1, 1, 2, 1])
RESIZE_MODES = ('interpolate', 'window')


# --------------------------------------------------------------------------- helpers
def _ref_path(reference_dir: str, name: str) -> str:
    return osp.join(reference_dir, 'smlpnet_tiny', name)


def _ref(reference_dir: str, name: str):
    return torch.load(_ref_path(reference_dir, name), weights_only=True)


def _reference_model(reference_dir: str, **kwargs) -> SMLPNet:
    """The reference architecture, loaded from the SPACH-layout file through ``init_cfg``."""
    kwargs.setdefault('fork_feat', False)
    model = SMLPNet(arch=dict(TINY_ARCH), image_size=64, num_classes=10,
                    init_cfg=dict(type='Pretrained',
                                  checkpoint=_ref_path(reference_dir, 'official.pth')),
                    **kwargs)
    model.init_weights()
    return model.eval()


def _small_model(**kwargs) -> SMLPNet:
    """Reference-sized SMLPNet with random weights, for training-state tests."""
    torch.manual_seed(0)
    model = SMLPNet(arch=dict(TINY_ARCH), image_size=64, **kwargs)
    model.init_weights()
    return model


def _total_parameters(reference_dir: str, name: str) -> int:
    """The parameter total on the last line of ``keys/NAME.txt`` (the original model's)."""
    with open(osp.join(reference_dir, 'keys', f'{name}.txt')) as f:
        last = f.read().strip().splitlines()[-1]
    return int(re.search(r'(\d+) (?:learnable )?parameters', last).group(1))


def _squeeze(shape) -> List[int]:
    """A shape without the trailing 1x1 of a conv kernel (Linear [o, i] == conv [o, i, 1, 1])."""
    return [d for i, d in enumerate(shape) if not (i >= 2 and d == 1)]


def _check_full_size_keys(model: nn.Module, shapes: Dict[str, tuple], layout: str) -> None:
    """Zero tensors of every listed shape convert to exactly the model's keys and load."""
    state = {name: torch.zeros(shape, dtype=torch.long if name.endswith('num_batches_tracked')
                               else torch.float32)
             for name, shape in shapes.items()}
    detected, converted = convert_state_dict(state)
    assert detected == layout
    own = model.state_dict()
    assert len(converted) == len(state)
    unknown = sorted(set(converted) - set(own))
    assert not unknown, f'converted keys the model lacks: {unknown[:10]}'
    missing = sorted(set(own) - set(converted))
    assert not missing, f'model keys the file does not provide: {missing[:10]}'
    fitted = {}
    for key, value in converted.items():
        target = own[key].shape
        if value.shape != target:
            # Only Linear <-> 1x1-conv style reshapes are allowed (same numbers, trailing 1s).
            assert _squeeze(value.shape) == _squeeze(target), \
                f'{key}: {tuple(value.shape)} vs {tuple(target)}'
            value = value.reshape(target)
        fitted[key] = value
    model.load_state_dict(fitted, strict=True)


def _isolated_smlp(mode: str, native: int = 8, dim: int = 3) -> SMLP:
    """An SMLP whose forward is ``fuse(cat[x, axial_w(x), axial_h(x)])`` with nothing else.

    The conv block, BatchNorms and GELU are replaced by identities so a test sees the
    axial maps alone; ``_select_branch`` then routes one of the three branches to the output.
    """
    mixer = SMLP(dim, token_stride=4, image_size=4 * native, resize_mode=mode)
    mixer.dw_norm = nn.Identity()
    mixer.norm = nn.Identity()
    mixer.act = nn.Identity()
    with torch.no_grad():
        mixer.dwconv.weight.zero_()
        mixer.dwconv.weight[:, :, 1, 1] = 1.0
        for p in (mixer.mix_w_weight, mixer.mix_w_bias, mixer.mix_h_weight, mixer.mix_h_bias):
            p.zero_()
    return mixer.eval()


def _select_branch(mixer: SMLP, branch: int) -> None:
    """Makes the fuse conv output branch 0 (identity), 1 (W-mixing) or 2 (H-mixing)."""
    dim = mixer.fuse.out_channels
    with torch.no_grad():
        mixer.fuse.weight.zero_()
        for c in range(dim):
            mixer.fuse.weight[c, branch * dim + c] = 1.0


# --------------------------------------------------------------------------- fidelity
@pytest.mark.parametrize('resize_mode', RESIZE_MODES)
def test_matches_original_stage_outputs_and_logits(reference_dir, resize_mode):
    model = _reference_model(reference_dir, resize_mode=resize_mode)
    x = _ref(reference_dir, 'input.pt')
    expected = _ref(reference_dir, 'stage_outputs.pt')
    with torch.no_grad():
        stages = model.forward_stages(x)
        logits = model(x)
    assert len(stages) == 4
    for i, (out, ref) in enumerate(zip(stages, expected)):
        assert out.shape == ref.shape, f'stage {i}'
        torch.testing.assert_close(out, ref, atol=1e-5, rtol=0, msg=f'stage {i}')
    torch.testing.assert_close(logits, _ref(reference_dir, 'logits.pt'), atol=1e-5, rtol=0)


def test_fork_feat_gives_four_normalized_maps_at_strides_4_to_32(reference_dir):
    model = _reference_model(reference_dir, fork_feat=True)
    assert not hasattr(model, 'head')  # the classifier's BatchNorm and fc were dropped
    x = _ref(reference_dir, 'input.pt')
    with torch.no_grad():
        feats = model(x)
    assert isinstance(feats, tuple) and len(feats) == 4
    for i, (feat, ref) in enumerate(zip(feats, _ref(reference_dir, 'stage_outputs.pt'))):
        assert feat.shape == (1, 8 * 2 ** i, 64 // (4 * 2 ** i), 64 // (4 * 2 ** i))
        # Output norms are channel LayerNorms with their initial weight 1 and bias 0.
        normed = F.layer_norm(ref.permute(0, 2, 3, 1), (ref.shape[1],), eps=1e-6)
        torch.testing.assert_close(feat, normed.permute(0, 3, 1, 2), atol=1e-5, rtol=0)
        torch.testing.assert_close(feat.mean(1), torch.zeros_like(feat.mean(1)), atol=1e-5,
                                   rtol=0)

    # Any input size, and only the requested stages (with only their output norms).
    sub = SMLPNet(arch=dict(TINY_ARCH), image_size=64, out_indices=(1, 2, 3)).eval()
    assert sorted(sub.out_norms) == ['1', '2', '3']
    with torch.no_grad():
        feats = sub(torch.randn(2, 3, 97, 131))
    assert [f.shape for f in feats] == [(2, 16, 12, 16), (2, 32, 6, 8), (2, 64, 3, 4)]


@pytest.mark.parametrize('arch', ['tiny', 'small', 'base'])
def test_full_size_parameter_count_and_spach_keys(reference_dir, key_shapes, arch):
    total = _total_parameters(reference_dir, f'smlpnet_{arch}')
    model = SMLPNet(arch=arch, fork_feat=False, num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == total
    assert round(total / 1e6, 2) == {'tiny': 24.12, 'small': 48.56, 'base': 65.88}[arch]
    _check_full_size_keys(model, key_shapes(f'smlpnet_{arch}'), 'spach')


def test_loads_own_format_and_detector_prefix(reference_dir, tmp_path):
    ref = _reference_model(reference_dir)
    x = _ref(reference_dir, 'input.pt')
    with torch.no_grad():
        expected = ref(x)

    ours = str(tmp_path / 'smlpnet_ours.pth')
    layout, count = save_converted(_ref_path(reference_dir, 'official.pth'), ours)
    assert layout == 'spach' and count == len(ref.state_dict())
    model = SMLPNet(arch=dict(TINY_ARCH), image_size=64, fork_feat=False, num_classes=10)
    report = load_pretrained(model, ours)
    assert report['loaded'] == report['total'] and not report['missing']
    assert not report['unexpected']
    with torch.no_grad():
        assert torch.equal(model.eval()(x), expected)

    # A detector checkpoint holds the backbone under 'backbone.'.
    det = str(tmp_path / 'detector.pth')
    state = _ref(reference_dir, 'official.pth')
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in state.items()},
                'meta': {}}, det)
    model = SMLPNet(arch=dict(TINY_ARCH), image_size=64, fork_feat=False, num_classes=10,
                    init_cfg=dict(type='Pretrained', checkpoint=det, prefix='backbone.'))
    model.init_weights()
    with torch.no_grad():
        assert torch.equal(model.eval()(x), expected)


def test_wrong_training_resolution_is_a_clear_error(reference_dir):
    # Axial weights 16x16 in the file, 56x56 in a model built for 224 inputs.
    model = SMLPNet(arch=dict(TINY_ARCH), image_size=224, fork_feat=False, num_classes=10,
                    init_cfg=dict(type='Pretrained',
                                  checkpoint=_ref_path(reference_dir, 'official.pth')))
    with pytest.raises(CheckpointError, match=r'shapes that do not fit.*mix_w_weight.*\(16, 16, 1, 1\)'):
        model.init_weights()


# --------------------------------------------------------------------------- the resize rule
@pytest.mark.parametrize('resize_mode', RESIZE_MODES)
def test_native_size_is_the_original_operator(resize_mode):
    """At n x n tokens both modes compute the original's sMLPBlock exactly."""
    torch.manual_seed(1)
    mixer = SMLP(4, token_stride=4, image_size=32, resize_mode=resize_mode)  # n = 8
    for bn in (mixer.dw_norm, mixer.norm):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
    mixer.eval()
    x = torch.randn(2, 4, 8, 8)
    # The original: proj_h on x.permute(0, 3, 1, 2) and proh_w on x.permute(0, 2, 1, 3).
    proj_h, proh_w = nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 1)
    with torch.no_grad():
        proj_h.weight.copy_(mixer.mix_w_weight[:, :, None, None])
        proj_h.bias.copy_(mixer.mix_w_bias)
        proh_w.weight.copy_(mixer.mix_h_weight[:, :, None, None])
        proh_w.bias.copy_(mixer.mix_h_bias)
        t = mixer.dwconv(F.gelu(mixer.dw_norm(x)))
        t = F.gelu(mixer.norm(t))
        x_h = proj_h(t.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        x_w = proh_w(t.permute(0, 2, 1, 3)).permute(0, 2, 1, 3)
        expected = mixer.fuse(torch.cat([t, x_h, x_w], dim=1))
        torch.testing.assert_close(mixer(x), expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize('resize_mode', RESIZE_MODES)
def test_each_matrix_mixes_the_axis_it_was_trained_on(resize_mode):
    """Non-square inputs: one axis native, the other not; a reversal matrix shows the axis."""
    n = 8
    rev = torch.eye(n).flip(1)  # reverses the order of n tokens
    x = torch.randn(1, 3, n, 2 * n + 3)  # H native, W not

    mixer = _isolated_smlp(resize_mode, n)
    with torch.no_grad():
        mixer.mix_h_weight.copy_(rev)  # original proh_w: mixes along H
        _select_branch(mixer, 2)
        assert torch.equal(mixer(x), x.flip(-2))
        _select_branch(mixer, 1)  # the W branch has a zero matrix and bias
        assert torch.equal(mixer(x), torch.zeros_like(x))

    xt = x.transpose(-1, -2).contiguous()  # W native, H not
    mixer = _isolated_smlp(resize_mode, n)
    with torch.no_grad():
        mixer.mix_w_weight.copy_(rev)  # original proj_h: mixes along W
        _select_branch(mixer, 1)
        assert torch.equal(mixer(xt), xt.flip(-1))
        _select_branch(mixer, 2)
        assert torch.equal(mixer(xt), torch.zeros_like(xt))


def test_window_mode_applies_the_trained_matrix_per_window():
    n = 8
    mixer = _isolated_smlp('window', n)
    torch.manual_seed(2)
    weight, bias = torch.randn(n, n), torch.randn(n)
    with torch.no_grad():
        mixer.mix_w_weight.copy_(weight)
        mixer.mix_w_bias.copy_(bias)
        _select_branch(mixer, 1)
        for length in (3, 2 * n, 2 * n + 3):  # smaller, a multiple, larger with a tail
            x = torch.randn(1, 3, 5, length)
            expected = torch.cat([
                x[..., s:s + n] @ weight[:min(n, length - s), :min(n, length - s)].t()
                + bias[:min(n, length - s)]
                for s in range(0, length, n)], dim=-1)
            torch.testing.assert_close(mixer(x), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize('length', [1, 3, 5, 13, 20, 57])
def test_interpolate_mode_keeps_the_mixing_gain_at_any_length(length):
    """A constant n x n matrix maps constant rows to n * c + b at every length."""
    n, c, b = 8, 0.3, -0.2
    mixer = _isolated_smlp('interpolate', n)
    with torch.no_grad():
        mixer.mix_w_weight.fill_(c)
        mixer.mix_w_bias.fill_(b)
        _select_branch(mixer, 1)
        out = mixer(torch.ones(1, 3, 4, length))
    torch.testing.assert_close(out, torch.full_like(out, n * c + b), atol=1e-5, rtol=0)


@pytest.mark.parametrize('length', [1, 2, 3, 5])
def test_interpolate_mode_uses_every_trained_weight_when_shrinking(length):
    """Below the native length each output still depends on every trained matrix entry
    (an antialiased resampling, not point sampling), and the mixing gain stays close."""
    n = 8
    torch.manual_seed(4)
    weight = torch.randn(n, n)
    mixer = _isolated_smlp('interpolate', n)
    with torch.no_grad():
        mixer.mix_w_weight.copy_(weight)
        _select_branch(mixer, 1)
    out = mixer(torch.ones(1, 3, 2, length))
    out.sum().backward()
    assert (mixer.mix_w_weight.grad != 0).all()
    # Constant input: the mean output is the mean row sum of the trained matrix.
    native_gain = weight.sum(1).mean()
    assert abs(out.mean() - native_gain) < 0.35 * weight.sum(1).abs().mean()


@pytest.mark.parametrize('length', [3, 5, 13, 20])
def test_interpolate_mode_resamples_along_the_trained_axis(length):
    """A reversal matrix resampled to another length still reverses a ramp along W only."""
    n = 8
    mixer = _isolated_smlp('interpolate', n)
    x = torch.arange(length, dtype=torch.float32).expand(1, 3, 7, length)  # ramp along W
    with torch.no_grad():
        mixer.mix_w_weight.copy_(torch.eye(n).flip(1))
        _select_branch(mixer, 1)
        out = mixer(x)
    assert out.shape == x.shape
    assert torch.equal(out, out[:, :, :1].expand_as(out))  # nothing mixed along H
    row = out[0, 0, 0]
    corr = torch.corrcoef(torch.stack([row, x[0, 0, 0]]))[0, 1]
    assert corr < -0.95, f'not a reversal along W (correlation {corr:.3f})'


@pytest.mark.parametrize('resize_mode', RESIZE_MODES)
def test_axial_mixing_is_differentiable_at_other_sizes(resize_mode):
    torch.manual_seed(3)
    mixer = SMLP(2, token_stride=4, image_size=16, resize_mode=resize_mode).double().eval()
    names = ['mix_w_weight', 'mix_w_bias', 'mix_h_weight', 'mix_h_bias']
    params = {k: v.detach().clone() for k, v in mixer.named_parameters()}
    buffers = dict(mixer.named_buffers())

    def run(x, *axial):
        return torch.func.functional_call(
            mixer, {**params, **buffers, **dict(zip(names, axial))}, (x,))

    # n = 4: H = 3 is below the native length, W = 6 above it.
    x = torch.randn(1, 2, 3, 6, dtype=torch.float64, requires_grad=True)
    axial = tuple(params[k].requires_grad_() for k in names)
    assert torch.autograd.gradcheck(run, (x, *axial), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize('resize_mode', RESIZE_MODES)
@pytest.mark.parametrize('size', [(97, 131), (200, 312), (40, 72)])
def test_runs_at_any_size_with_finite_gradients(resize_mode, size):
    model = _small_model(resize_mode=resize_mode)
    model.train()
    h, w = size
    feats = model(torch.randn(2, 3, h, w))
    expected = []
    for i in range(4):
        h, w = (h // 4, w // 4) if i == 0 else (h // 2, w // 2)
        expected.append((2, 8 * 2 ** i, h, w))
    assert [tuple(f.shape) for f in feats] == expected
    sum(f.square().mean() for f in feats).backward()
    for name, p in model.named_parameters():
        if 'mix_' in name:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            if name.endswith('weight'):
                assert p.grad.abs().sum() > 0, name


def test_smlp_argument_errors():
    with pytest.raises(ValueError, match='resize_mode'):
        SMLP(8, token_stride=4, image_size=224, resize_mode='crop')
    with pytest.raises(ValueError, match='not a multiple'):
        SMLP(8, token_stride=32, image_size=100)


# --------------------------------------------------------------------------- MetaFormer hybrid
def test_pooling_smlp_hybrid_is_one_config_line():
    from mmdet.registry import MODELS
    model = MODELS.build(dict(type='PoolFormer', arch='s12',
                              token_mixers=['pooling', 'pooling', 'smlp', 'smlp']))
    kinds = [type(stage.blocks[0].token_mixer) for stage in model.stages]
    assert kinds == [Pooling, Pooling, SMLP, SMLP]
    assert [stage.blocks[0].token_mixer.native_size for stage in model.stages[2:]] == [14, 7]
    model.eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 97, 131))
    assert [tuple(f.shape) for f in feats] == [
        (1, 64, 24, 33), (1, 128, 12, 17), (1, 320, 6, 9), (1, 512, 3, 5)]


# --------------------------------------------------------------------------- training options
def test_frozen_stages():
    model = _small_model(frozen_stages=2)
    model.train()
    frozen = [model.stem, model.stages[0], model.stages[1], model.out_norms['0'],
              model.out_norms['1']]
    for module in frozen:
        assert all(not p.requires_grad for p in module.parameters())
        assert all(not m.training for m in module.modules())
    for module in (model.stages[2], model.stages[3], model.out_norms['2']):
        assert all(p.requires_grad for p in module.parameters())
        assert module.training
    bn0 = model.stages[0].blocks[0].token_mixer.norm
    bn2 = model.stages[2].blocks[0].token_mixer.norm
    before0, before2 = bn0.running_mean.clone(), bn2.running_mean.clone()
    model(torch.randn(2, 3, 64, 96))
    assert torch.equal(bn0.running_mean, before0)  # frozen stage keeps its statistics
    assert not torch.equal(bn2.running_mean, before2)  # a trained stage updates them


def test_norm_eval_keeps_mixer_batchnorms_frozen():
    model = _small_model(norm_eval=True)
    model.train()
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert len(bns) == 2 * sum(model.depths)  # two BatchNorms in every sMLP mixer
    assert all(not bn.training for bn in bns)
    assert model.training and model.stages[1].blocks[0].mlp.training
    stats = [bn.running_mean.clone() for bn in bns]
    sum(f.sum() for f in model(torch.randn(2, 3, 64, 96))).backward()
    assert all(torch.equal(bn.running_mean, s) for bn, s in zip(bns, stats))
    assert all(bn.weight.grad is not None for bn in bns)  # affine parameters still train

    model = _small_model(norm_eval=False)
    model.train()
    assert all(m.training for m in model.modules() if isinstance(m, _BatchNorm))


def test_drop_path_rate_is_linear_over_blocks():
    model = _small_model(drop_path_rate=0.3)
    rates = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    # Blocks 1..4 of 5 (block 0 has rate 0 and no DropPath); two branches per block.
    expected = [0.3 * i / 4 for i in range(1, 5) for _ in range(2)]
    assert rates == pytest.approx(expected)
