"""Backbone arguments that set an option of every token mixer of one kind (``MIXER_OPTIONS``):
each default lives once, in the preset table and the mixer; an option that no mixer of the
model takes is refused, naming it. Also the backbone's ``in_channels`` and
``res_scale_init_values``, and the attention and sepconv mixer options, by what they compute."""
import pytest

from metaformer_mm.models.backbones import MetaFormer, PoolFormer, RandFormer, SMLPNet
from metaformer_mm.models.checks import ArgumentError
from metaformer_mm.models.mixers import SMLP, Attention, SepConv
from metaformer_mm.models.random_mixing import RandomMixing

TINY = dict(depths=[1, 1, 1, 1], dims=[8, 8, 8, 8])


def _mixers(model, kind):
    return [m for m in model.modules() if isinstance(m, kind)]


def test_image_size_and_max_matrix_mb_reach_every_random_mixer():
    default = RandFormer(arch=dict(TINY, base='randformer_s12'))
    assert {m.image_size for m in _mixers(default, RandomMixing)} == {(224, 224)}
    model = RandFormer(arch=dict(TINY, base='randformer_s12'), image_size=(64, 96),
                       max_matrix_mb=2)
    mixers = _mixers(model, RandomMixing)
    assert len(mixers) == 2
    assert all(m.image_size == (64, 96) and m.max_matrix_mb == 2 for m in mixers)


def test_image_size_and_resize_mode_reach_the_smlp_mixers_of_a_hybrid():
    model = PoolFormer(arch=dict(TINY, base='poolformer_s12'),
                       token_mixers=['pooling', 'pooling', 'smlp', 'smlp'], image_size=64,
                       resize_mode='window')
    mixers = _mixers(model, SMLP)
    assert [m.native_size for m in mixers] == [4, 2]
    assert {m.resize_mode for m in mixers} == {'window'}
    assert SMLPNet(arch=dict(TINY, base='smlpnet_tiny')).stages[0].blocks[0] \
        .token_mixer.native_size == 56  # the table's image_size=224


@pytest.mark.parametrize('cls, arch, option', [
    (PoolFormer, 'poolformer_s12', dict(image_size=224)),
    (SMLPNet, 'smlpnet_tiny', dict(max_matrix_mb=8)),
    (RandFormer, 'randformer_s12', dict(pool_size=5)),
])
def test_an_option_no_mixer_takes_is_refused(cls, arch, option):
    (name, _), = option.items()
    with pytest.raises(ArgumentError, match=rf'{cls.__name__}: {name} is an option of the '
                                            rf'.* token mixers, and this model has none'):
        cls(arch=dict(TINY, base=arch), **option)


# --------------------------------------------------------------------------- backbone arguments
def test_in_channels_sets_the_stem_and_the_accepted_input():
    import torch
    for cls, arch in [(PoolFormer, 'poolformer_s12'), (SMLPNet, 'smlpnet_tiny')]:
        model = cls(arch=dict(TINY, base=arch), in_channels=1, fork_feat=True).eval()
        assert model.stem.conv.in_channels == 1 and model.stem.conv.weight.shape[1] == 1
        with torch.no_grad():
            feats = model(torch.randn(2, 1, 64, 64))
        assert [tuple(f.shape[:2]) for f in feats] == [(2, 8)] * 4
        with pytest.raises(ValueError, match=r'expected an input of shape \(N, 1, H, W\)'):
            model(torch.randn(2, 3, 64, 64))


def test_res_scale_init_values_scale_the_residual_of_each_stage():
    import torch
    model = MetaFormer(arch=dict(TINY, base='identityformer_s12'),
                       res_scale_init_values=[None, None, 0.5, 2.0]).eval()
    scales = [s.blocks[0].res_scale1 for s in model.stages]
    assert [hasattr(m, 'scale') for m in scales] == [False, False, True, True]
    assert torch.equal(scales[2].scale, torch.full((8,), 0.5))
    assert torch.equal(model.stages[3].blocks[0].res_scale2.scale, torch.full((8,), 2.0))
    assert scales[3].scale.requires_grad
    # A block is r * x + branch, twice: with both branches zeroed it multiplies by r * r.
    block = model.stages[3].blocks[0]
    with torch.no_grad():
        for part in (block.norm1, block.norm2, block.mlp):
            for p in part.parameters():
                p.zero_()
        x = torch.randn(1, 8, 4, 4)
        torch.testing.assert_close(block(x), 4.0 * x)


def test_attention_options_set_heads_biases_and_dropout_and_compute_attention():
    import torch
    model = MetaFormer(arch=dict(TINY, base='caformer_s18', dims=[8, 8, 16, 16]),
                       token_mixers=dict(type='attention', head_dim=4, qkv_bias=True,
                                         proj_bias=True, attn_drop=0.5, proj_drop=0.25))
    mixers = _mixers(model, Attention)
    assert len(mixers) == 4
    assert [m.num_heads for m in mixers] == [2, 2, 4, 4]  # dim // head_dim
    assert all(m.qkv.bias is not None and m.proj.bias is not None for m in mixers)
    assert all(m.attn_drop == 0.5 and m.proj_drop.p == 0.25 for m in mixers)
    fixed = MetaFormer(arch=dict(TINY, base='caformer_s18', dims=[8, 8, 16, 16]),
                       token_mixers=dict(type='attention', head_dim=4, num_heads=3))
    mixer = _mixers(fixed, Attention)[2]
    assert mixer.num_heads == 3 and mixer.qkv.weight.shape == (3 * 12, 16)
    assert mixer.proj.weight.shape == (16, 12) and mixer.qkv.bias is None
    # What it computes: softmax(q k^T / sqrt(head_dim)) v per head over all tokens, then proj.
    x = torch.randn(2, 16, 3, 5)
    tokens = x.flatten(2).transpose(1, 2)
    q, k, v = mixer.qkv(tokens).reshape(2, 15, 3, 3, 4).permute(2, 0, 3, 1, 4)
    attn = (q @ k.transpose(-1, -2) / 2.0).softmax(-1)
    expected = mixer.proj((attn @ v).transpose(1, 2).reshape(2, 15, 12))
    torch.testing.assert_close(mixer.eval()(x), expected.transpose(1, 2).reshape(2, 16, 3, 5),
                               atol=1e-5, rtol=1e-5)
    # attn_drop acts in training only
    drop = mixers[2].train()
    y = torch.randn(2, 16, 4, 4)
    torch.manual_seed(0)
    assert not torch.allclose(drop(y), drop(y))
    drop.eval()
    torch.testing.assert_close(drop(y), drop(y))


def test_sepconv_options_set_width_kernel_activations_and_bias():
    import torch
    import torch.nn.functional as F
    model = MetaFormer(arch=dict(TINY, base='convformer_s18'),
                       token_mixers=dict(type='sepconv', expansion_ratio=3, kernel_size=5,
                                         act_cfg=dict(type='GELU'), act2_cfg=dict(type='ReLU'),
                                         bias=True))
    mixers = _mixers(model, SepConv)
    assert len(mixers) == 4
    m = mixers[0]
    assert m.pwconv1.out_channels == 24 and m.dwconv.groups == 24
    assert m.dwconv.kernel_size == (5, 5) and m.dwconv.padding == (2, 2)
    assert isinstance(m.act1, torch.nn.GELU) and isinstance(m.act2, torch.nn.ReLU)
    assert m.pwconv1.bias is not None and m.pwconv2.bias is not None
    x = torch.randn(2, 8, 7, 9)
    expected = F.conv2d(F.relu(F.conv2d(F.gelu(F.conv2d(x, m.pwconv1.weight, m.pwconv1.bias)),
                                        m.dwconv.weight, m.dwconv.bias, padding=2, groups=24)),
                        m.pwconv2.weight, m.pwconv2.bias)
    torch.testing.assert_close(m(x), expected, atol=1e-5, rtol=1e-5)
    default = _mixers(MetaFormer(arch=dict(TINY, base='convformer_s18')), SepConv)[0]
    assert default.pwconv1.out_channels == 16 and default.dwconv.kernel_size == (7, 7)
    assert default.pwconv1.bias is None
