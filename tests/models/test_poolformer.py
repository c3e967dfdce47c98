"""PoolFormer / MetaFormer backbone: fidelity to the original, the backbone contract, errors."""
import os.path as osp
from collections import OrderedDict

import pytest
import torch

from metaformer_mm.checkpoint import CheckpointError, convert_state_dict, load_pretrained
from metaformer_mm.models import MetaFormer, PoolFormer

TINY = dict(base='poolformer_s12', depths=[1, 1, 2, 1], dims=[16, 32, 48, 64])
LAYOUTS = ['official.pth', 'mmpretrain.pth', 'timm.pth']
PARAMS = {'s12': 11915176, 's24': 21388968, 's36': 30862760, 'm36': 56172520, 'm48': 73473448}


def _tiny(**kwargs) -> MetaFormer:
    return MetaFormer(arch=TINY, **kwargs)


def _ref(reference_dir, name):
    return torch.load(osp.join(reference_dir, 'poolformer_tiny', name), weights_only=True)


@pytest.mark.parametrize('layout', LAYOUTS)
def test_fork_feat_matches_original(reference_dir, layout):
    path = osp.join(reference_dir, 'poolformer_tiny', layout)
    model = _tiny(fork_feat=True, init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    model.eval()
    with torch.no_grad():
        feats = model(_ref(reference_dir, 'input.pt'))
    expected = _ref(reference_dir, 'features.pt')
    assert len(feats) == 4
    for ours, theirs in zip(feats, expected):
        assert ours.shape == theirs.shape
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize('layout', LAYOUTS)
def test_classifier_logits_match_original(reference_dir, layout):
    path = osp.join(reference_dir, 'poolformer_tiny', layout)
    model = _tiny(fork_feat=False, num_classes=10,
                  init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    with torch.no_grad():
        logits = model.eval()(_ref(reference_dir, 'input.pt'))
    torch.testing.assert_close(logits, _ref(reference_dir, 'logits.pt'), atol=1e-5, rtol=0)


def test_classification_file_drops_head_and_keeps_out_norms_initial(reference_dir, caplog):
    model = _tiny(fork_feat=True)
    with torch.no_grad():
        for norm in model.out_norms.values():
            norm.weight.fill_(1.0)
            norm.bias.zero_()
    report = load_pretrained(model, osp.join(reference_dir, 'poolformer_tiny', 'mmpretrain.pth'))
    assert report['layout'] == 'mmpretrain'
    assert sorted(report['dropped']) == ['head.fc.bias', 'head.fc.weight', 'head.norm.bias',
                                         'head.norm.weight']
    assert report['missing'] == [f'out_norms.{i}.{p}' for i in range(4) for p in ('weight', 'bias')]
    assert report['unexpected'] == []
    for norm in model.out_norms.values():
        assert torch.all(norm.weight == 1) and torch.all(norm.bias == 0)


def test_dense_checkpoint_loads_output_norms(tmp_path):
    source = _tiny(out_indices=(1, 2, 3))
    with torch.no_grad():
        for norm in source.out_norms.values():
            norm.weight.uniform_(0.5, 1.5)
    path = str(tmp_path / 'det.pth')
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in source.state_dict().items()}}, path)
    target = _tiny(out_indices=(1, 2, 3),
                   init_cfg=dict(type='Pretrained', checkpoint=path, prefix='backbone.'))
    target.init_weights()
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


@pytest.mark.parametrize('arch', list(PARAMS))
def test_full_size_original_keys_map_completely(key_shapes, arch):
    shapes = key_shapes(f'poolformer_{arch}')
    state = OrderedDict((k, torch.zeros(s)) for k, s in shapes.items())
    layout, converted = convert_state_dict(state)
    assert layout == 'official_v1'
    model_state = PoolFormer(arch=arch, fork_feat=False).state_dict()
    assert set(converted) == set(model_state)
    for key, value in converted.items():
        assert value.shape == model_state[key].shape, key


@pytest.mark.parametrize('arch', list(PARAMS))
def test_parameter_counts_equal_originals(arch):
    model = PoolFormer(arch=arch, fork_feat=False)
    assert sum(p.numel() for p in model.parameters()) == PARAMS[arch]


@pytest.mark.parametrize('arch,width', [('s12', 64), ('s24', 64), ('s36', 64), ('m36', 96),
                                        ('m48', 96)])
def test_preset_shapes(arch, width):
    model = PoolFormer(arch=arch).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 96))
    widths = [width * m for m in (1, 2, 5, 8)] if width == 64 else [96, 192, 384, 768]
    assert [tuple(o.shape) for o in outs] == [
        (1, w, 64 // s, 96 // s) for w, s in zip(widths, (4, 8, 16, 32))]


@pytest.mark.parametrize('size', [(32, 32), (97, 131), (33, 200), (255, 65)])
def test_odd_sizes_follow_conv_arithmetic(size):
    model = _tiny(token_mixers=['pooling', 'pooling', 'attention', 'attention']).eval()
    h, w = size
    with torch.no_grad():
        outs = model(torch.randn(2, 3, h, w))
    h, w = (h + 4 - 7) // 4 + 1, (w + 4 - 7) // 4 + 1
    expected = []
    for i, dim in enumerate([16, 32, 48, 64]):
        if i:
            h, w = (h + 2 - 3) // 2 + 1, (w + 2 - 3) // 2 + 1
        expected.append((2, dim, h, w))
    assert [tuple(o.shape) for o in outs] == expected
    assert all(torch.isfinite(o).all() for o in outs)


def test_out_indices_build_norms_only_for_returned_stages():
    model = _tiny(out_indices=(-3, -2, -1))
    assert model.out_indices == (1, 2, 3)
    assert sorted(model.out_norms) == ['1', '2', '3']
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [32, 48, 64]
    sum(o.sum() for o in outs).backward()
    unused = [n for n, p in model.named_parameters() if p.grad is None]
    assert unused == [], unused


def test_frozen_stages_stay_frozen_after_train():
    model = _tiny(frozen_stages=2, norm_cfg=dict(type='BN'))
    model.train()
    frozen = [model.stem, model.stages[0], model.stages[1], model.out_norms['0'],
              model.out_norms['1']]
    for module in frozen:
        assert not module.training
        assert all(not p.requires_grad for p in module.parameters())
    for module in (model.stages[2], model.stages[3], model.out_norms['2']):
        assert module.training
        assert all(p.requires_grad for p in module.parameters())
    before = model.stages[0].blocks[0].norm1.running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    assert torch.equal(before, model.stages[0].blocks[0].norm1.running_mean)


def test_norm_eval_keeps_batchnorm_statistics():
    model = _tiny(norm_cfg=dict(type='BN'), norm_eval=True).train()
    bn = model.stages[2].blocks[0].norm1
    assert not bn.training and model.stages[2].training
    before = bn.running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    assert torch.equal(before, bn.running_mean)


@pytest.mark.parametrize('mixer', ['pooling', 'identity', 'attention', 'sepconv', 'smlp'])
def test_every_mixer_runs_in_the_backbone(mixer):
    model = _tiny(token_mixers=mixer).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [16, 32, 48, 64]


@pytest.mark.parametrize('norm_cfg,act_cfg', [
    (dict(type='GN', num_groups=1), dict(type='GELU')),
    (dict(type='LN2d', eps=1e-6), dict(type='ReLU')),
    (dict(type='BN'), dict(type='SiLU')),
])
def test_norm_and_activation_choices(norm_cfg, act_cfg):
    model = _tiny(norm_cfg=norm_cfg, act_cfg=act_cfg)
    block = model.stages[0].blocks[0]
    assert type(block.mlp.act).__name__ == act_cfg['type']
    assert all(o.isfinite().all() for o in model(torch.randn(2, 3, 64, 64)))


def test_group_norm_normalizes_channels_and_space_together():
    model = _tiny()
    norm = model.stages[0].blocks[0].norm1
    x = torch.randn(2, 16, 8, 8) * 3 + 1
    y = norm(x)
    torch.testing.assert_close(y.mean((1, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(y.var((1, 2, 3), unbiased=False), torch.ones(2), atol=1e-3, rtol=0)


def test_custom_settings_and_layer_scale():
    model = PoolFormer(arch='s12', layer_scale_init_value=1e-6, pool_size=5, mlp_ratios=3)
    block = model.stages[1].blocks[0]
    assert torch.all(block.layer_scale1.scale == 1e-6)
    assert block.token_mixer.pool.kernel_size == 5
    assert block.mlp.fc1.out_channels == 3 * 128
    assert torch.all(PoolFormer(arch='s36').stages[0].blocks[0].layer_scale2.scale == 1e-6)
    assert torch.all(PoolFormer(arch='s24').stages[0].blocks[0].layer_scale2.scale == 1e-5)


def test_drop_path_rate_is_linear_over_blocks():
    model = _tiny(drop_path_rate=0.3)
    rates = [b.drop_path1.drop_prob if hasattr(b.drop_path1, 'drop_prob') else 0.0
             for s in model.stages for b in s.blocks]
    torch.testing.assert_close(torch.tensor(rates), torch.linspace(0, 0.3, 5))


def test_bad_input_shape_is_named():
    with pytest.raises(ValueError, match=r'expected an input of shape \(N, 3, H, W\), got \(3, 64, 64\)'):
        _tiny()(torch.randn(3, 64, 64))


def test_shape_mismatch_names_tensor_and_shapes(tmp_path, key_shapes):
    state = {k: torch.zeros(s) for k, s in key_shapes('poolformer_m36').items()}
    path = str(tmp_path / 'm36.pth')
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r'stem\.conv\.weight: \(96, 3, 7, 7\) in the '
                                              r'checkpoint, \(64, 3, 7, 7\) in the model'):
        load_pretrained(PoolFormer(arch='s36'), path)


def test_other_depths_are_refused(tmp_path, key_shapes):
    state = {k: torch.zeros(s) for k, s in key_shapes('poolformer_s24').items()}
    path = str(tmp_path / 's24.pth')
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r'stages have \[4, 4, 12, 4\] blocks, the model '
                                              r'has \[2, 2, 6, 2\]'):
        load_pretrained(PoolFormer(arch='s12'), path)


def test_mostly_unmatched_file_raises(tmp_path, reference_dir):
    state = torch.load(osp.join(reference_dir, 'poolformer_tiny', 'official.pth'),
                       weights_only=True)
    partial = {k: v for k, v in state.items() if k.startswith(('patch_embed', 'network.0.'))}
    path = str(tmp_path / 'partial.pth')
    torch.save(partial, path)
    with pytest.raises(CheckpointError, match=r'partial\.pth does not fit the MetaFormer .*\d+ of its \d+ tensors missing'):
        load_pretrained(_tiny(), path)


def test_missing_file_names_the_path(tmp_path):
    missing = str(tmp_path / 'nope' / 'poolformer_s12.pth.tar')
    model = _tiny(init_cfg=dict(type='Pretrained', checkpoint=missing))
    with pytest.raises(FileNotFoundError, match='nope/poolformer_s12.pth.tar'):
        model.init_weights()


def test_load_logs_format_count_and_keys(reference_dir):
    from mmengine.logging import MMLogger
    logger = MMLogger.get_instance('metaformer_test_log', log_level='INFO')
    records = []
    handler = __import__('logging').Handler()
    handler.emit = records.append
    logger.addHandler(handler)
    load_pretrained(_tiny(), osp.join(reference_dir, 'poolformer_tiny', 'timm.pth'), logger=logger)
    messages = [r.getMessage() for r in records]
    assert len(messages) == 1
    assert 'format: timm' in messages[0] and 'Loaded 58/66 tensors' in messages[0]
    assert 'out_norms.0.weight' in messages[0] and 'unexpected: none' in messages[0]
