"""Model definitions: presets as literal tables, family classes that refuse other
families' presets, norms and activations through mmengine/mmcv registries, and the backbone's
argument checks (``mlp_ratios=0``, unknown-argument hints)."""
import os.path as osp
import re

import pytest
import torch
import torch.nn as nn
from mmengine.registry import MODELS

import metaformer_mm  # noqa: F401  (registers the backbones)
from metaformer_mm.models.backbones import (ARCH_SETTINGS, CAFormer, ConvFormer, IdentityFormer,
                                            MetaFormer, PoolFormer, PoolFormerV2, RandFormer,
                                            SMLPNet)
from metaformer_mm.models.backbones.presets import FAMILIES
from metaformer_mm.models.layers import SquaredReLU, StarReLU, build_act
from metaformer_mm.models.norms import GroupNorm, GroupNorm1, LayerNorm2d, build_norm

TINY = dict(base='poolformer_s12', depths=[1, 1, 1, 1], dims=[8, 16, 24, 32])
CLASSES = {'poolformer': PoolFormer, 'poolformerv2': PoolFormerV2,
           'identityformer': IdentityFormer, 'randformer': RandFormer,
           'convformer': ConvFormer, 'caformer': CAFormer, 'smlpnet': SMLPNet}


# --------------------------------------------------------------------------- presets
def test_every_preset_is_defined_on_a_line_of_its_own(repo_root):
    source = open(osp.join(repo_root, 'metaformer_mm', 'models', 'backbones',
                           'presets.py')).read()
    assert len(ARCH_SETTINGS) == 31
    for name in ARCH_SETTINGS:  # grep finds the line that defines each preset
        assert len(re.findall(rf"^    '{name}': dict\(depths=\[", source, re.M)) == 1, name
    # no loop variables left behind as module globals
    import metaformer_mm.models.backbones.presets as presets
    assert not [k for k in vars(presets) if k.startswith('_') and not k.startswith('__')
                and k not in ('_BASELINES', '_MLP_HEAD', '_SEPCONV', '_ATTENTION')]


@pytest.mark.parametrize('family', sorted(CLASSES))
def test_family_classes_build_only_their_own_presets(family):
    cls = CLASSES[family]
    assert set(cls.arch_settings) == set(FAMILIES[family])
    other = 'caformer_s18' if family != 'caformer' else 'poolformer_s12'
    with pytest.raises(ValueError, match=rf"{cls.__name__} does not build arch '{other}', a "
                                         rf"preset of the \w+ family; allowed for "
                                         rf"{cls.__name__}: \["):
        cls(arch=other)
    with pytest.raises(ValueError, match=rf"{cls.__name__} does not build"):
        cls(arch=dict(base=other, depths=[1, 1, 1, 1]))


def test_metaformer_takes_any_preset_and_poolformer_no_longer_builds_caformer():
    model = MetaFormer(arch=dict(base='caformer_s18', depths=[1, 1, 1, 1],
                                 dims=[32, 32, 32, 32]))
    assert type(model.stages[3].blocks[0].token_mixer).__name__ == 'Attention'
    with pytest.raises(ValueError, match=r"PoolFormer does not build arch 'caformer_s18'.*"
                                         r"\['m36', 'm48', 's12', 's24', 's36'\]"):
        PoolFormer(arch='caformer_s18')


def test_typo_in_arch_name_gets_the_closest_preset():
    with pytest.raises(ValueError, match=r"unknown arch 'm366' for PoolFormer.*did you mean "
                                         r"'m36'\?"):
        PoolFormer(arch='m366')


# --------------------------------------------------------------------------- arguments
def test_unknown_argument_lists_every_argument_and_the_closest_one():
    with pytest.raises(TypeError) as err:
        PoolFormer(arch=dict(TINY), out_indice=(0, 1))
    message = str(err.value)
    assert "unexpected arguments ['out_indice'] (did you mean 'out_indices' for 'out_indice'?)" \
        in message
    for arg in ('out_indices', 'frozen_stages', 'norm_eval', 'with_cp', 'init_cfg', 'fork_feat',
                'drop_path_rate', 'token_mixers', 'mlp_ratios', 'pool_size'):
        assert f"'{arg}'" in message, arg
    # a subclass's own arguments are valid arguments too
    with pytest.raises(TypeError, match=r"did you mean 'image_size' for 'img_size'\?.*"
                                        r"'resize_mode'"):
        SMLPNet(arch='tiny', img_size=224)


@pytest.mark.parametrize('ratios', [0, [4, 4, 0, 4], -1, 0.01, 'four'])
def test_mlp_ratios_must_give_hidden_channels(ratios):
    with pytest.raises(ValueError, match=r'mlp_ratios must be positive numbers .* got'):
        PoolFormer(arch=dict(TINY), mlp_ratios=ratios)


# --------------------------------------------------------------------------- norms
def test_norm_names():
    gn1 = build_norm(dict(type='GN1', eps=1e-6, bias=False), 8)
    assert type(gn1) is GroupNorm1 and gn1.num_groups == 1 and gn1.bias is None
    gn = build_norm(dict(type='GN', num_groups=4), 8)  # mmcv's meaning
    assert type(gn) is GroupNorm and gn.num_groups == 4
    # existing configs that spell GroupNorm(1) as GN with num_groups=1 keep working
    legacy = build_norm(dict(type='GN', num_groups=1, eps=1e-5), 8)
    x = torch.randn(2, 8, 5, 7)
    torch.testing.assert_close(legacy(x), build_norm(dict(type='GN1'), 8)(x))
    assert isinstance(build_norm(dict(type='LN2d'), 8), LayerNorm2d)
    # mmcv's own norms, built by mmcv.cnn.build_norm_layer
    assert type(build_norm(dict(type='BN'), 8)) is nn.BatchNorm2d
    assert type(build_norm(dict(type='LN', eps=1e-6), 8)) is nn.LayerNorm
    assert type(build_norm(dict(type='IN'), 8)) is nn.InstanceNorm2d
    frozen = build_norm(dict(type='BN', requires_grad=False), 8)
    assert not any(p.requires_grad for p in frozen.parameters())
    # ours are in mmengine's registry for mmcv's builder too
    from mmcv.cnn import build_norm_layer
    assert type(build_norm_layer(dict(type='GN1'), 8)[1]) is GroupNorm1


def test_gn_without_num_groups_points_to_gn1():
    with pytest.raises(ValueError, match=r"type='GN' needs num_groups.*write type='GN1'"):
        build_norm(dict(type='GN'), 8)
    with pytest.raises(ValueError, match=r"did you mean 'LN2d'\?"):
        build_norm(dict(type='LN2D'), 8)
    with pytest.raises(ValueError, match=r"'GN1' has one group by definition"):
        build_norm(dict(type='GN1', num_groups=2), 8)


def test_user_registered_norm_is_built():
    @MODELS.register_module(name='TestOnlyRMSNorm2d', force=True)
    class RMSNorm2d(nn.Module):
        def __init__(self, num_channels, eps=1e-5):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(num_channels))

        def forward(self, x):
            return x * self.weight.view(1, -1, 1, 1)

    model = PoolFormer(arch=dict(TINY), norm_cfg=dict(type='TestOnlyRMSNorm2d'))
    assert type(model.stages[0].blocks[0].norm1).__name__ == 'RMSNorm2d'


# --------------------------------------------------------------------------- activations
def test_activations_come_from_the_registry():
    assert type(build_act(dict(type='StarReLU', scale_value=2.0))) is StarReLU
    assert type(build_act(dict(type='SquaredReLU'))) is SquaredReLU
    assert MODELS.get('StarReLU') is StarReLU and MODELS.get('SquaredReLU') is SquaredReLU
    assert type(build_act(dict(type='GELU'))) is nn.GELU
    assert type(build_act(dict(type='LeakyReLU', negative_slope=0.2))) is nn.LeakyReLU
    assert build_act(dict(type='LeakyReLU', negative_slope=0.2)).negative_slope == 0.2
    assert type(build_act(dict(type='HSwish'))).__name__ in ('HSwish', 'Hardswish')
    from mmcv.cnn import build_activation_layer
    assert type(build_activation_layer(dict(type='StarReLU'))) is StarReLU

    @MODELS.register_module(name='TestOnlyMish', force=True)
    class Mish(nn.Module):
        def forward(self, x):
            return x * torch.tanh(nn.functional.softplus(x))

    model = PoolFormer(arch=dict(TINY), act_cfg=dict(type='TestOnlyMish'))
    assert type(model.stages[0].blocks[0].mlp.act) is Mish
    assert all(torch.isfinite(o).all() for o in model(torch.randn(1, 3, 64, 64)))


def test_unknown_activation_suggests_the_closest():
    with pytest.raises(ValueError, match=r"unknown activation 'GELu'.*did you mean 'GELU'\?"):
        build_act(dict(type='GELu'))
