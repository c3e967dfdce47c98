"""MetaFormer baselines: PoolFormerV2, IdentityFormer, ConvFormer, CAFormer.

Fidelity to sail-sg/metaformer (``shared/reference/{caformer,poolformerv2}_tiny``), the
timm layout, preset parameter counts against the paper, and odd input sizes.
"""
import os.path as osp
import re
from typing import Dict

import pytest
import torch
import torch.nn.functional as F

import metaformer_mm  # noqa: F401  (registers the backbones)
from metaformer_mm.checkpoint import convert_state_dict, save_converted
from metaformer_mm.models.backbones import (CAFormer, ConvFormer, IdentityFormer, MetaFormer,
                                            PoolFormerV2)
from metaformer_mm.models.layers import StarReLU
from metaformer_mm.models.mixers import Attention, IdentityMixer, Pooling, SepConv

REFERENCES = {
    'caformer_tiny': dict(base='caformer_s18', depths=[1, 1, 2, 1], dims=[16, 32, 64, 64]),
    'poolformerv2_tiny': dict(base='poolformerv2_s12', depths=[1, 1, 2, 1],
                              dims=[16, 32, 48, 64]),
}

# Parameters (millions, 1000-class head) in the sail-sg/metaformer README / paper tables.
PAPER_PARAMS = {
    'poolformerv2_s12': 11.9, 'poolformerv2_s24': 21.3, 'poolformerv2_s36': 30.8,
    'poolformerv2_m36': 56.1, 'poolformerv2_m48': 73.3,
    'identityformer_s12': 11.9, 'identityformer_s24': 21.3, 'identityformer_s36': 30.8,
    'identityformer_m36': 56.1, 'identityformer_m48': 73.3,
    'convformer_s18': 26.8, 'convformer_s36': 40.0, 'convformer_m36': 57.1,
    'convformer_b36': 99.9,
    'caformer_s18': 26.3, 'caformer_s36': 39.3, 'caformer_m36': 56.2, 'caformer_b36': 98.8,
}
FAMILIES = {'poolformerv2': PoolFormerV2, 'identityformer': IdentityFormer,
            'convformer': ConvFormer, 'caformer': CAFormer}


def _path(reference_dir: str, ref: str, name: str) -> str:
    return osp.join(reference_dir, ref, name)


def _load(reference_dir: str, ref: str, name: str):
    return torch.load(_path(reference_dir, ref, name), weights_only=True)


def _model(reference_dir: str, ref: str, checkpoint: str, fork_feat: bool = False,
           **kwargs) -> MetaFormer:
    """The reference architecture, loaded from ``checkpoint`` through ``init_cfg``."""
    model = MetaFormer(arch=dict(REFERENCES[ref]), fork_feat=fork_feat, num_classes=10,
                       init_cfg=dict(type='Pretrained', checkpoint=checkpoint, **kwargs))
    model.init_weights()
    return model.eval()


def _official_to_timm(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Renames a sail-sg/metaformer state dict the way timm's ``metaformer.py`` stores it.

    timm runs stages without attention channels-first, so their MLP and pointwise-conv
    weights are 1x1 convs ``[out, in, 1, 1]``; attention stages (and the head) keep the
    Linear ``[out, in]`` weights.
    """
    attention_stages = {int(m.group(1)) for k in state
                        for m in [re.match(r'stages\.(\d)\.\d+\.token_mixer\.qkv\.', k)] if m}
    out = {}
    for key, value in state.items():
        value = value.clone()
        if m := re.fullmatch(r'downsample_layers\.0\.conv\.(.+)', key):
            new = f'stem.conv.{m[1]}'
        elif m := re.fullmatch(r'downsample_layers\.0\.post_norm\.(.+)', key):
            new = f'stem.norm.{m[1]}'
        elif m := re.fullmatch(r'downsample_layers\.(\d)\.pre_norm\.(.+)', key):
            new = f'stages.{m[1]}.downsample.norm.{m[2]}'
        elif m := re.fullmatch(r'downsample_layers\.(\d)\.conv\.(.+)', key):
            new = f'stages.{m[1]}.downsample.conv.{m[2]}'
        elif m := re.fullmatch(r'stages\.(\d)\.(\d+)\.(.+)', key):
            new = f'stages.{m[1]}.blocks.{m[2]}.{m[3]}'
            if (int(m[1]) not in attention_stages
                    and re.search(r'(mlp\.fc[12]|pwconv[12])\.weight$', key)):
                value = value[:, :, None, None]
        elif m := re.fullmatch(r'norm\.(.+)', key):
            new = f'head.norm.{m[1]}'
        elif m := re.fullmatch(r'head\.(fc1|norm|fc2)\.(.+)', key):
            new = f'head.fc.{m[1]}.{m[2]}'  # MlpHead
        elif m := re.fullmatch(r'head\.(weight|bias)', key):
            new = f'head.fc.{m[1]}'
        else:
            raise AssertionError(f'unexpected key in the reference file: {key}')
        out[new] = value
    return out


# --------------------------------------------------------------------------- fidelity
@pytest.mark.parametrize('ref', sorted(REFERENCES))
def test_matches_original_stage_outputs_and_logits(reference_dir, ref):
    model = _model(reference_dir, ref, _path(reference_dir, ref, 'official.pth'))
    x = _load(reference_dir, ref, 'input.pt')
    assert x.shape[-2:] == (64, 96)  # not square: attention sees 4x6 and 2x3 tokens
    with torch.no_grad():
        stages = model.forward_stages(x)
        logits = model(x)
    for i, (out, expected) in enumerate(zip(stages, _load(reference_dir, ref,
                                                          'stage_outputs.pt'))):
        assert out.shape == expected.shape, f'stage {i}'
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0, msg=f'stage {i}')
    torch.testing.assert_close(logits, _load(reference_dir, ref, 'logits.pt'), atol=1e-5,
                               rtol=0)


@pytest.mark.parametrize('ref', sorted(REFERENCES))
def test_fork_feat_from_a_classification_file(reference_dir, ref):
    model = _model(reference_dir, ref, _path(reference_dir, ref, 'official.pth'),
                   fork_feat=True)
    assert not hasattr(model, 'head')
    with torch.no_grad():
        feats = model(_load(reference_dir, ref, 'input.pt'))
    assert len(feats) == 4
    for i, (feat, raw) in enumerate(zip(feats, _load(reference_dir, ref, 'stage_outputs.pt'))):
        assert feat.shape[-2:] == (64 // 2 ** (i + 2), 96 // 2 ** (i + 2))
        # Output norms: channel LayerNorm (eps 1e-6) with their initial weight 1, bias 0.
        normed = F.layer_norm(raw.permute(0, 2, 3, 1), (raw.shape[1],), eps=1e-6)
        torch.testing.assert_close(feat, normed.permute(0, 3, 1, 2), atol=1e-5, rtol=0)


@pytest.mark.parametrize('ref', sorted(REFERENCES))
def test_timm_layout_loads_to_identical_outputs(reference_dir, ref, tmp_path):
    official = _load(reference_dir, ref, 'official.pth')
    timm_state = _official_to_timm(official)
    assert convert_state_dict(timm_state)[0] == 'timm'
    if ref == 'caformer_tiny':  # the file really has both weight forms
        assert timm_state['stages.0.blocks.0.mlp.fc1.weight'].dim() == 4
        assert timm_state['stages.3.blocks.0.mlp.fc1.weight'].dim() == 2
        assert 'head.fc.fc2.weight' in timm_state
    timm_file = str(tmp_path / 'timm.pth')
    torch.save(timm_state, timm_file)

    x = _load(reference_dir, ref, 'input.pt')
    expected = _model(reference_dir, ref, _path(reference_dir, ref, 'official.pth'))
    loaded = _model(reference_dir, ref, timm_file)
    with torch.no_grad():
        for a, b in zip(expected.forward_stages(x), loaded.forward_stages(x)):
            assert torch.equal(a, b)
        assert torch.equal(expected(x), loaded(x))
    for key, value in expected.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


@pytest.mark.parametrize('ref', sorted(REFERENCES))
def test_own_format_and_detector_checkpoints_load(reference_dir, ref, tmp_path):
    x = _load(reference_dir, ref, 'input.pt')
    with torch.no_grad():
        expected = _model(reference_dir, ref, _path(reference_dir, ref, 'official.pth'))(x)

    ours = str(tmp_path / 'ours.pth')
    layout, _ = save_converted(_path(reference_dir, ref, 'official.pth'), ours)
    assert layout == 'official_v2'
    with torch.no_grad():
        assert torch.equal(_model(reference_dir, ref, ours)(x), expected)

    # A detector/segmentor file: the backbone (with its output norms) under 'backbone.'.
    backbone = _model(reference_dir, ref, _path(reference_dir, ref, 'official.pth'),
                      fork_feat=True)
    with torch.no_grad():
        for norm in backbone.out_norms.values():
            norm.weight.uniform_(0.5, 1.5)
        feats = backbone(x)
    det = str(tmp_path / 'detector.pth')
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in backbone.state_dict().items()},
                'meta': {}}, det)
    reloaded = _model(reference_dir, ref, det, fork_feat=True, prefix='backbone.')
    with torch.no_grad():
        for a, b in zip(feats, reloaded(x)):
            assert torch.equal(a, b)


# --------------------------------------------------------------------------- presets
@pytest.mark.parametrize('name', sorted(PAPER_PARAMS))
def test_preset_parameter_counts_match_the_paper(name):
    family, arch = name.split('_')
    model = FAMILIES[family](arch=arch, fork_feat=False, num_classes=1000)
    count = sum(p.numel() for p in model.parameters()) / 1e6
    assert abs(count - PAPER_PARAMS[name]) <= 0.05, f'{name}: {count:.3f}M'


def test_preset_building_blocks():
    caformer = CAFormer('s18', fork_feat=False)
    assert caformer.depths == [3, 3, 9, 3] and caformer.dims == [64, 128, 320, 512]
    mixers = [stage.blocks[0].token_mixer for stage in caformer.stages]
    assert [type(m) for m in mixers] == [SepConv, SepConv, Attention, Attention]
    assert mixers[0].pwconv1.out_channels == 128 and mixers[0].dwconv.kernel_size == (7, 7)
    assert mixers[0].pwconv1.bias is None and isinstance(mixers[0].act1, StarReLU)
    assert [m.num_heads for m in mixers[2:]] == [10, 16]  # head dim 32
    assert mixers[2].qkv.bias is None and mixers[2].proj.bias is None
    block = caformer.stages[1].blocks[0]
    assert block.mlp.fc1.bias is None and isinstance(block.mlp.act, StarReLU)
    assert block.norm1.bias is None  # LayerNorm without bias
    # Res-scale in the last two stages only; no layer-scale.
    assert [hasattr(s.blocks[0].res_scale1, 'scale') for s in caformer.stages] == [
        False, False, True, True]
    assert not hasattr(block.layer_scale1, 'scale')
    # Stem with post-norm, downsampling with pre-norm.
    assert not caformer.stem.pre_norm and caformer.stem.conv.kernel_size == (7, 7)
    assert all(s.downsample.pre_norm for s in caformer.stages[1:])

    assert ConvFormer('m36').dims == [96, 192, 384, 576]
    assert ConvFormer('b36').depths == [3, 12, 18, 3]
    assert CAFormer('b36').dims == [128, 256, 512, 768]
    assert PoolFormerV2('m48').dims == [96, 192, 384, 768]
    pool = PoolFormerV2('s12').stages[0].blocks[0]
    assert isinstance(pool.token_mixer, Pooling) and pool.norm1.num_groups == 1
    assert pool.norm1.bias is None
    assert isinstance(IdentityFormer('s12').stages[2].blocks[0].token_mixer, IdentityMixer)
    with pytest.raises(ValueError, match=r"allowed: \['b36', 'm36', 's18', 's36'\]"):
        CAFormer('s12')


@pytest.mark.parametrize('family', ['PoolFormer', 'PoolFormerV2', 'IdentityFormer',
                                    'ConvFormer', 'CAFormer', 'SMLPNet'])
def test_odd_input_sizes(family):
    from mmdet.registry import MODELS
    model = MODELS.build(dict(type=family)).eval()  # the default preset of each family
    with torch.no_grad():
        feats = model(torch.randn(1, 3, 97, 131))
    if family == 'SMLPNet':  # 4x4 and 2x2 patch convs without padding
        sizes = [(24, 32), (12, 16), (6, 8), (3, 4)]
    else:  # 7x7/4 conv with padding 2, then 3x3/2 convs with padding 1
        sizes = [(24, 33), (12, 17), (6, 9), (3, 5)]
    assert [tuple(f.shape[-2:]) for f in feats] == sizes
    assert [f.shape[1] for f in feats] == model.dims
    assert all(torch.isfinite(f).all() for f in feats)
