"""RandFormer: frozen random token mixing as a dense backbone at any input size.

Fidelity to sail-sg/metaformer (``shared/reference/randformer_tiny``: native input 64x96, so
the matrices are 24x24 and 6x6 on 4x6 / 2x3 grids), the resampling rule at other sizes, the
frozen matrix under an mmengine optimizer, bad input, presets and whole-model parameter
counts, and short train/test runs of the configs through tools/train.py and tools/test.py.
"""
import glob
import json
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

import metaformer_mm  # noqa: F401  (registers the backbones)
from metaformer_mm.checkpoint import CheckpointError, convert_state_dict
from metaformer_mm.models.backbones import MetaFormer, PoolFormerV2, RandFormer
from metaformer_mm.models.mixers import IdentityMixer, build_mixer
from metaformer_mm.models.random_mixing import RandomMixing, resample_token_matrix

TINY = dict(base='randformer_s12', depths=[1, 1, 2, 1], dims=[16, 32, 48, 64])
NATIVE = (64, 96)
# The original full-size models (1000-class head): all parameters, and the frozen matrices.
ORIGINAL_PARAMS = {'s12': (12127010, 235298), 's24': (21812060, 470596),
                   's36': (31497110, 705894), 'm36': (56783062, 705894),
                   'm48': (74287248, 941192)}


def _ref(reference_dir, name):
    return torch.load(osp.join(reference_dir, 'randformer_tiny', name), weights_only=True)


def _tiny(reference_dir=None, **kwargs) -> RandFormer:
    kwargs.setdefault('image_size', NATIVE)
    if reference_dir is not None:
        kwargs['init_cfg'] = dict(type='Pretrained', checkpoint=osp.join(
            reference_dir, 'randformer_tiny', 'official.pth'))
    model = RandFormer(arch=dict(TINY), **kwargs)
    model.init_weights()
    return model.eval()


def _mixers(model):
    return [b.token_mixer for s in model.stages for b in s.blocks
            if isinstance(b.token_mixer, RandomMixing)]


# --------------------------------------------------------------------------- fidelity
def test_matches_original_at_the_native_size(reference_dir):
    model = _tiny(reference_dir, fork_feat=False, num_classes=10)
    x = _ref(reference_dir, 'input.pt')
    assert x.shape[-2:] == NATIVE
    with torch.no_grad():
        stages, logits = model.forward_stages(x), model(x)
    for i, (out, expected) in enumerate(zip(stages, _ref(reference_dir, 'stage_outputs.pt'))):
        assert out.shape == expected.shape, f'stage {i}'
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0, msg=f'stage {i}')
    torch.testing.assert_close(logits, _ref(reference_dir, 'logits.pt'), atol=1e-5, rtol=0)


def test_official_layout_loads_every_matrix_unchanged(reference_dir):
    state = _ref(reference_dir, 'official.pth')
    layout, converted = convert_state_dict(state)
    assert layout == 'official_v2'
    assert converted['stages.2.blocks.1.token_mixer.random_matrix'].shape == (24, 24)
    model = _tiny(reference_dir)
    mixers = _mixers(model)
    assert [m.native_grid for m in mixers] == [(4, 6), (4, 6), (2, 3)]
    for mixer, key in zip(mixers, ['stages.2.0', 'stages.2.1', 'stages.3.0']):
        assert torch.equal(mixer.random_matrix, state[f'{key}.token_mixer.random_matrix'])
        assert not mixer.random_matrix.requires_grad
    assert all(isinstance(b.token_mixer, IdentityMixer)
               for s in model.stages[:2] for b in s.blocks)
    # fork_feat from the classification file: the four maps are the original's stage outputs
    # through the output norms, which the file has none of and keep their initial weight 1,
    # bias 0: a channel LayerNorm (eps 1e-6) of each stage output.
    with torch.no_grad():
        feats = model(_ref(reference_dir, 'input.pt'))
    assert len(feats) == 4
    for i, (feat, raw) in enumerate(zip(feats, _ref(reference_dir, 'stage_outputs.pt'))):
        assert feat.shape == raw.shape, f'stage {i}'
        normed = F.layer_norm(raw.permute(0, 2, 3, 1), (raw.shape[1],), eps=1e-6)
        torch.testing.assert_close(feat, normed.permute(0, 3, 1, 2), atol=1e-5, rtol=0,
                                   msg=f'stage {i}')


def test_channels_last_and_nchw_give_the_same_mixing():
    torch.manual_seed(0)
    mixer = RandomMixing(8, 16, image_size=(64, 96))
    x = torch.randn(2, 8, 5, 7)
    for grid in [(4, 6), (5, 7)]:
        x = torch.randn(2, 8, *grid)
        nchw = mixer(x)
        cl = mixer(x.contiguous(memory_format=torch.channels_last))
        assert cl.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(cl, nchw, atol=1e-6, rtol=0)
        tokens = x.flatten(2).transpose(1, 2)  # the original's (B, H*W, C)
        expected = torch.einsum('mn,bnc->bmc', mixer.matrix_for(grid), tokens)
        torch.testing.assert_close(nchw, expected.transpose(1, 2).reshape(x.shape),
                                   atol=1e-6, rtol=0)


# --------------------------------------------------------------------------- resampling
def test_native_grid_returns_the_stored_matrix_exactly():
    mixer = RandomMixing(8, 16, image_size=(64, 96))
    assert mixer.matrix_for((4, 6)) is mixer.random_matrix
    assert resample_token_matrix(mixer.random_matrix, (4, 6), (4, 6)) is mixer.random_matrix


def _loop_resample(matrix, native, grid):
    """The rule written out slice by slice: each output token's row as an image over the
    input grid, then each new input token's column as an image over the output grid."""
    (nh, nw), (h, w) = native, grid
    shrink = h < nh or w < nw

    def resize(img):
        return F.interpolate(img[None, None], size=(h, w), mode='bilinear',
                             align_corners=False, antialias=shrink)[0, 0]

    rows = torch.stack([resize(matrix[i].reshape(nh, nw)).flatten() for i in range(nh * nw)])
    cols = torch.stack([resize(rows[:, j].reshape(nh, nw)).flatten() for j in range(h * w)], 1)
    return cols / cols.sum(1, keepdim=True)


@pytest.mark.parametrize('grid', [(7, 9), (2, 3), (3, 11), (1, 1)])
def test_resampling_rule_and_rows_sum_to_one(grid):
    torch.manual_seed(0)
    mixer = RandomMixing(8, 16, image_size=(64, 96))
    matrix = mixer.matrix_for(grid)
    tokens = grid[0] * grid[1]
    assert matrix.shape == (tokens, tokens) and (matrix >= 0).all()
    torch.testing.assert_close(matrix.sum(1), torch.ones(tokens), atol=1e-6, rtol=0)
    torch.testing.assert_close(matrix, _loop_resample(mixer.random_matrix, (4, 6), grid),
                               atol=1e-6, rtol=1e-5)
    # A uniform matrix stays uniform at any grid: the rule adds no structure of its own.
    uniform = torch.full((24, 24), 1 / 24)
    torch.testing.assert_close(resample_token_matrix(uniform, (4, 6), grid),
                               torch.full((tokens, tokens), 1 / tokens))


def test_resampled_matrices_are_cached_within_a_byte_budget_and_invalidated():
    # (5x7)^2 and (6x8)^2 fp32 matrices are 4.9 kB and 9.2 kB: a 15 kB budget keeps both,
    # and a third size drops the least recently used.
    mixer = RandomMixing(8, 16, image_size=(64, 96), max_cache_mb=0.015)
    first = mixer.matrix_for((5, 7))
    assert mixer.matrix_for((5, 7)) is first  # repeated size: no new resampling
    assert 'random_matrix' in mixer.state_dict() and len(mixer.state_dict()) == 1
    mixer.matrix_for((6, 8))
    assert len(mixer._cache) == 2
    mixer.matrix_for((7, 9))  # 15.9 kB alone: bigger than the budget, so never kept
    assert [key[0] for key in mixer._cache] == [(5, 7), (6, 8)]
    mixer.matrix_for((4, 9)), mixer.matrix_for((5, 7))
    assert [key[0] for key in mixer._cache] == [(4, 9), (5, 7)]  # (6, 8) was the oldest
    assert sum(m.numel() * 4 for m in mixer._cache.values()) <= 15_000
    # A load changes the parameter: the cached copies follow it.
    other = RandomMixing(8, 16, image_size=(64, 96))
    mixer.load_state_dict(other.state_dict())
    torch.testing.assert_close(mixer.matrix_for((5, 7)), other.matrix_for((5, 7)))
    assert not torch.equal(mixer.matrix_for((5, 7)), first)
    mixer.double()
    assert mixer.matrix_for((5, 7)).dtype == torch.float64
    none_kept = RandomMixing(8, 16, image_size=(64, 96), max_cache_mb=0)
    none_kept.matrix_for((5, 7))
    assert not none_kept._cache


def test_a_native_matrix_above_max_matrix_mb_is_refused_before_it_is_built():
    """image_size=4096 means a 65,536-token stage-3 matrix (17 GB): refused at construction."""
    with pytest.raises(ValueError, match=r'65536x65536 matrix, 17180 MB.*above '
                                         r'max_matrix_mb=1024.*smaller image_size'):
        RandFormer(arch=dict(TINY), image_size=4096)
    for bad in (0, -1, float('nan'), float('inf'), '64', True):
        with pytest.raises(ValueError, match='max_matrix_mb must be a positive finite'):
            RandomMixing(8, 16, image_size=64, max_matrix_mb=bad)
    with pytest.raises(ValueError, match='max_cache_mb must be a non-negative finite'):
        RandomMixing(8, 16, image_size=64, max_cache_mb=-1)


@pytest.mark.parametrize('size', [(97, 131), (33, 40)])
def test_any_input_size(size):
    torch.manual_seed(0)
    model = _tiny()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, *size))
    h, w = (size[0] - 3) // 4 + 1, (size[1] - 3) // 4 + 1  # the 7x7/4 stem, padding 2
    for i, feat in enumerate(feats):
        assert feat.shape == (1, model.dims[i], h, w) and torch.isfinite(feat).all()
        h, w = (h + 1) // 2, (w + 1) // 2
    for mixer in _mixers(model):
        for matrix in mixer._cache.values():
            torch.testing.assert_close(matrix.sum(1), torch.ones(len(matrix)), atol=1e-6,
                                       rtol=0)


def test_detection_size_with_a_tiny_width_model():
    torch.manual_seed(0)
    model = RandFormer(arch=dict(base='randformer_s12', depths=[1, 1, 1, 1], dims=[8, 8, 8, 8]),
                       out_indices=(2, 3)).eval()
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 800, 1216))
    assert [tuple(f.shape) for f in feats] == [(1, 8, 50, 76), (1, 8, 25, 38)]
    assert all(torch.isfinite(f).all() for f in feats)
    mixer = model.stages[2].blocks[0].token_mixer
    assert mixer.native_grid == (14, 14)
    [matrix] = mixer._cache.values()
    assert matrix.shape == (3800, 3800)  # 58 MB in fp32
    torch.testing.assert_close(matrix.sum(1), torch.ones(3800), atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- never trained
@pytest.mark.parametrize('paramwise', [False, True])
def test_matrix_never_trains_under_an_mmengine_optimizer(paramwise):
    from mmengine.optim import build_optim_wrapper
    torch.manual_seed(0)
    model = _tiny().train()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = dict(optimizer=dict(type='AdamW', lr=1e-2, weight_decay=0.5))
    if paramwise:
        cfg['paramwise_cfg'] = dict(norm_decay_mult=0.0)
    wrapper = build_optim_wrapper(model, cfg)
    in_optimizer = {id(p) for g in wrapper.optimizer.param_groups for p in g['params']}
    params = dict(model.named_parameters())
    matrices = [n for n in params if n.endswith('random_matrix')]
    assert len(matrices) == 3 and not any(params[n].requires_grad for n in matrices)
    # mmengine's constructor drops them with paramwise options; the default constructor
    # hands all parameters over, and AdamW skips a parameter that never gets a gradient.
    assert any(id(params[n]) in in_optimizer for n in matrices) == (not paramwise)
    for _ in range(2):
        loss = sum(o.square().mean() for o in model(torch.randn(2, 3, 64, 96)))
        wrapper.update_params(loss)
    for name in matrices:  # no gradient, no update, no decoupled weight decay
        assert params[name].grad is None and torch.equal(params[name], before[name]), name
    assert not torch.equal(params['stages.3.blocks.0.mlp.fc1.weight'],
                           before['stages.3.blocks.0.mlp.fc1.weight'])


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize('image_size', [0, -32, (64,), (64, 96, 3), 'big', (64, 96.0), True])
def test_bad_image_size(image_size):
    with pytest.raises(ValueError, match='image_size must be a positive int or a pair'):
        RandFormer(arch=dict(TINY), image_size=image_size)


def test_image_size_not_a_multiple_of_the_stride():
    with pytest.raises(ValueError, match=r'image_size \(64, 112\) must be a multiple of the '
                                         r'token stride 32'):
        RandFormer(arch=dict(TINY), image_size=(64, 112))


def test_checkpoint_of_another_grid(reference_dir):
    model = _tiny(image_size=224)
    _, state = convert_state_dict(_ref(reference_dir, 'official.pth'))
    # The backbone's load check names the tensor, both shapes and the grid they imply.
    with pytest.raises(CheckpointError, match=r'checkpoint tensor stages\.2\.blocks\.0\.token_mixer'
                                              r'\.random_matrix has shape \(24, 24\): 24 tokens.*'
                                              r'native grid is 14x14 = 196 tokens'):
        model.load_state_dict(state, strict=False)
    # The mixer refuses it by itself too (a load that bypasses the backbone's check).
    mixer = model.stages[2].blocks[0].token_mixer
    with pytest.raises(ValueError, match=r'random_matrix has shape \(24, 24\).*14x14'):
        mixer.load_state_dict({'random_matrix': state['stages.2.blocks.0.token_mixer.random_matrix']})
    # Through init_cfg the loader's shape check names the tensor and both shapes.
    with pytest.raises(CheckpointError, match=r'random_matrix: \(24, 24\) in the '
                                              r'checkpoint, \(196, 196\).*native grid is 14x14'):
        _tiny(reference_dir, image_size=224)


def test_input_smaller_than_one_stage4_token():
    model = _tiny()
    with pytest.raises(ValueError, match=r'input x of at least 32x32 pixels.*\(1, 3, 31, 64\)'):
        model(torch.randn(1, 3, 31, 64))


def test_memory_limit_names_the_size_and_can_be_raised():
    mixer = RandomMixing(8, 16, image_size=224, max_matrix_mb=1)
    with pytest.raises(ValueError, match=r'24x24 token grid.*576x576 matrix, 1 MB in fp32, '
                                         r'above max_matrix_mb=1'):
        mixer.matrix_for((24, 24))
    model = RandFormer(arch=dict(TINY), max_matrix_mb=1)
    with pytest.raises(ValueError, match='raise max_matrix_mb'):
        model(torch.randn(1, 3, 384, 384))
    mixer = build_mixer(dict(type='random', image_size=224, max_matrix_mb=2), 8, 16)
    assert mixer.matrix_for((24, 24)).shape == (576, 576)


def test_family_refuses_other_presets():
    with pytest.raises(ValueError, match=r"RandFormer does not build arch 'poolformerv2_s12'"):
        RandFormer(arch='poolformerv2_s12')
    with pytest.raises(ValueError, match=r"PoolFormerV2 does not build arch 'randformer_s12'"):
        PoolFormerV2(arch='randformer_s12')
    assert isinstance(MetaFormer(arch=dict(TINY)).stages[3].blocks[0].token_mixer, RandomMixing)


# --------------------------------------------------------------------------- presets, configs
@pytest.mark.parametrize('arch', sorted(ORIGINAL_PARAMS))
def test_presets_have_the_original_parameter_counts(arch):
    model = RandFormer(arch=arch, fork_feat=False)
    total = sum(p.numel() for p in model.parameters())
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert (total, frozen) == ORIGINAL_PARAMS[arch]
    assert [b.token_mixer.native_grid for b in model.stages[3].blocks][0] == (7, 7)
    block = model.stages[2].blocks[0]
    assert type(block.mlp.act).__name__ == 'StarReLU' and block.norm1.bias is None
    assert block.norm1.num_groups == 1 and hasattr(block.res_scale1, 'scale')
    assert not hasattr(model.stages[1].blocks[0].res_scale1, 'scale')


def _run(repo_root, tool, *args):
    """tools/TOOL's main(ARGS) in this process; fails the test with its output if it fails."""
    from in_process import run_main
    proc = run_main(f'tools/{tool}', *args, cwd=repo_root)
    assert proc.returncode == 0, f'{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}'


@pytest.mark.slow
def test_retinanet_trains_and_tests(repo_root, coco_mini_run, tmp_path):
    config, options = coco_mini_run(tmp_path, 'retinanet_randformer_s12', scale=(256, 160))
    work, test_work = tmp_path / 'work', tmp_path / 'test'
    _run(repo_root, 'train.py', config, '--work-dir', work, '--cfg-options', *options)
    ckpt = work / 'epoch_1.pth'
    state = torch.load(ckpt, map_location='cpu', weights_only=False)['state_dict']
    matrix = state['backbone.stages.2.blocks.0.token_mixer.random_matrix']
    assert matrix.shape == (196, 196)
    torch.testing.assert_close(matrix.sum(1), torch.ones(196))
    _run(repo_root, 'test.py', config, ckpt, '--work-dir', test_work, '--cfg-options', *options)
    [log] = glob.glob(str(test_work / '*' / '*.json'))
    metrics = json.loads(open(log).readlines()[-1])
    assert 0.0 <= metrics['coco/bbox_mAP'] <= 1.0


@pytest.mark.slow
def test_semantic_fpn_trains_and_evaluates(repo_root, ade_mini_run, tmp_path):
    config = ade_mini_run(tmp_path, 'fpn_randformer_s12', 2)
    work = tmp_path / 'work'
    _run(repo_root, 'train.py', config, '--work-dir', work)
    [scalars] = glob.glob(str(work / '*' / 'vis_data' / 'scalars.json'))
    records = [json.loads(line) for line in open(scalars) if line.strip()]
    assert all(0 < r['loss'] < 100 for r in records if 'loss' in r)
    [val] = [r for r in records if 'mIoU' in r]
    assert 0 <= val['mIoU'] <= 100


def test_deploy_path_equals_the_plain_forward():
    torch.manual_seed(0)
    model = _tiny()
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        plain = model(x)
        deployed = model.switch_to_deploy()(x)  # identity stages fold, random stages do not
    for a, b in zip(plain, deployed):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
