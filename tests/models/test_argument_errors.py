"""Backbone and token-mixer arguments of a wrong type or value: one error, when the model is
built, naming the argument and the value given.

Each case is a RetinaNet or Semantic FPN config of this project with one ``model.backbone``
setting changed, built with mmdet's / mmseg's model registry as a Runner would; mixer options
go through ``token_mixers`` of the same configs. Without the checks these were a
``TypeError`` inside torch, a ``ZeroDivisionError``, a failure at the first forward pass, or
(``strict_load='false'``, ``depths=[True, ...]``) no error at all.
"""
import copy
import functools
import os.path as osp
import traceback

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import metaformer_mm  # noqa: F401
from metaformer_mm.models import PoolFormer
from metaformer_mm.models.checks import ArgumentError

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
CONFIGS = {'retinanet': ('detection/retinanet_poolformer_s12.py', 'mmdet'),
           'fpn': ('segmentation/fpn_poolformer_s12.py', 'mmseg')}
TINY = dict(base='poolformer_s12', depths=[1, 1, 1, 1], dims=[8, 16, 24, 32])
CAFORMER = dict(base='caformer_s18', depths=[1, 1, 1, 1], dims=[8, 16, 32, 32])


@functools.lru_cache(maxsize=None)
def _parse(path: str) -> Config:
    return Config.fromfile(osp.join(ROOT, 'configs', path))


def build(name: str, **backbone):
    path, scope = CONFIGS[name]
    cfg = copy.deepcopy(_parse(path))
    for key, value in dict(dict(init_cfg=None, arch=dict(TINY)), **backbone).items():
        cfg.model.backbone[key] = value  # replaced, not merged into the config's value
    init_default_scope(scope)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    return registry.build(cfg.model)


BAD = [
    # (backbone settings, the message (a regex))
    (dict(frozen_stages=1.5), r"frozen_stages must be in -1\.\.4, got 1\.5 \(a float; an "
                              r"integer is needed\)"),
    (dict(frozen_stages='1'), r"frozen_stages must be in -1\.\.4, got '1' \(a str; "),
    (dict(frozen_stages=None), r'frozen_stages must be in -1\.\.4, got None \(a NoneType; '),
    (dict(frozen_stages=True), r'frozen_stages must be in -1\.\.4, got True \(a bool; '),
    (dict(drop_path_rate='0.1'), r"drop_path_rate must be in \[0, 1\), got '0\.1' \(a str; a "
                                 r"number is needed\)"),
    (dict(drop_path_rate=None), r'drop_path_rate must be in \[0, 1\), got None'),
    (dict(drop_path_rate=float('nan')), r'drop_path_rate must be in \[0, 1\), got nan$'),
    (dict(out_indices=None), r'out_indices must be a stage index in -4\.\.3 or a list of '
                             r'them, got None'),
    (dict(out_indices=(0, 1.0, 2)), r'out_indices must hold stage indices in -4\.\.3'),
    (dict(in_channels='3'), r"in_channels must be a positive integer, got '3' \(a str; "),
    (dict(in_channels=0), r'in_channels must be a positive integer, got 0$'),
    (dict(mlp_ratios=float('inf')), r'mlp_ratios must be positive numbers .* got inf'),
    (dict(mlp_ratios=[4, 4, 'x', 4]), r'mlp_ratios must be positive numbers'),
    (dict(layer_scale_init_value=float('nan')),
     r'layer_scale_init_value must be a finite number or None, got nan'),
    (dict(res_scale_init_values=[None, None, '1', 1.0]), r'res_scale_init_values must be a '
                                                         r'finite number or None'),
    (dict(strict_load='false'), r"strict_load must be True or False, got 'false' \(a str; "),
    (dict(norm_eval='yes'), r"norm_eval must be True or False, got 'yes'"),
    (dict(arch=dict(TINY, depths=[True, 1, 1, 1])),
     r'depths and dims must be positive integers, got depths=\[True, 1, 1, 1\]'),
    (dict(arch=dict(TINY, dims=[8, 16, 24.0, 32])), r'depths and dims must be positive integers'),
    (dict(init_cfg=dict(type='Pretrained')),
     r"init_cfg=dict\(type='Pretrained'\) needs checkpoint=a file, URL or model name, got "
     r'checkpoint=None'),
    (dict(init_cfg=dict(type='Pretrained', checkpoint='')), r'needs checkpoint='),
    (dict(init_cfg='pretrained.pth'), r"init_cfg must be None, a dict or a list of dicts"),
    (dict(pool_size='3'), r"pool_size must be a positive odd integer or None, got '3'"),
    (dict(pool_size=4), r'pool_size must be a positive odd integer or None, got 4'),
    # token-mixer options
    (dict(type='MetaFormer', arch=dict(CAFORMER), token_mixers=dict(type='attention', head_dim=0)),
     r'attention mixer: head_dim must be a positive integer, got 0'),
    (dict(type='MetaFormer', arch=dict(CAFORMER),
          token_mixers=dict(type='attention', num_heads=2.5)),
     r'attention mixer: num_heads must be a positive integer or None, got 2\.5'),
    (dict(type='MetaFormer', arch=dict(CAFORMER), token_mixers=dict(type='sepconv', kernel_size=0)),
     r'sepconv mixer: kernel_size must be a positive odd integer, got 0'),
    (dict(type='MetaFormer', arch=dict(CAFORMER), token_mixers=dict(type='sepconv', kernel_size=4)),
     r'sepconv mixer: kernel_size must be a positive odd integer, got 4'),
    (dict(type='MetaFormer', arch=dict(CAFORMER),
          token_mixers=dict(type='sepconv', expansion_ratio=0.01)),
     r'sepconv mixer: expansion_ratio must be at least 1/8 \(one hidden channel of 8\)'),
    (dict(type='SMLPNet', image_size=0, arch=dict(TINY, base='smlpnet_tiny')),
     r'smlp mixer: image_size must be a positive integer, got 0'),
    (dict(type='SMLPNet', image_size=-64, arch=dict(TINY, base='smlpnet_tiny')),
     r'smlp mixer: image_size must be a positive integer, got -64'),
]
# Unknown names, values out of range, lists of the wrong length: a ValueError.
BAD_VALUES = [
    (dict(arch='s13'), r"unknown arch 's13' for PoolFormer; allowed: \['m36', 'm48', 's12'"),
    (dict(arch=dict(base='poolformer_s13')), r"unknown arch base 'poolformer_s13'; allowed: \["),
    (dict(arch=dict(base='poolformer_s12', dim=[8, 16, 24, 32])),
     r"unknown arch dict keys \['dim'\]; allowed: \['base', 'depths', 'dims'"),
    (dict(type='ConvFormer', arch='s12'), r"unknown arch 's12' for ConvFormer; allowed: "
                                          r"\['b36', 'm36', 's18', 's36'\]"),
    (dict(type='SMLPNet', arch='huge'), r"unknown arch 'huge' for SMLPNet; allowed: "
                                        r"\['base', 'small', 'tiny'\]"),
    (dict(token_mixers='convolution'), r"unknown token mixer 'convolution'; allowed: "
                                       r"\['attention', 'identity', 'pooling'"),
    (dict(out_indices=(1, 2, 4)), r'out_indices must hold stage indices in -4\.\.3, got'),
    (dict(out_indices=(2, 2, 3)), r'out_indices must be non-empty and name each stage once'),
    (dict(frozen_stages=5), r'frozen_stages must be in -1\.\.4, got 5'),
    (dict(token_mixers=['pooling'] * 3), r'token_mixers must have 4 entries \(one per stage\)'),
    (dict(mlp_ratios=[4, 4]), r'mlp_ratios must have 4 entries \(one per stage\)'),
    (dict(arch=dict(base='poolformer_s12', dims=[64, 128, 320])),
     r'depths and dims must have 4 entries'),
    (dict(arch=dict(base='poolformer_s12', dims=[64, 128, -320, 512])),
     r'depths and dims must be positive integers'),
    (dict(drop_path_rate=-0.1), r'drop_path_rate must be in \[0, 1\), got -0\.1'),
]


CASES = [(backbone, match, ArgumentError) for backbone, match in BAD] + \
    [(backbone, match, ValueError) for backbone, match in BAD_VALUES]


@pytest.mark.parametrize('name', sorted(CONFIGS))
@pytest.mark.parametrize('backbone,match,error', CASES, ids=[str(i) for i in range(len(CASES))])
def test_bad_argument_is_named_when_the_model_is_built(name, backbone, match, error):
    with pytest.raises(error, match=match) as err:
        build(name, **backbone)
    if error is ArgumentError:  # a wrong type: a TypeError and a ValueError, what callers catch
        assert isinstance(err.value, TypeError) and isinstance(err.value, ValueError)
    # raised by the argument checks (the backbone's, or the mixer table for a mixer name),
    # not by a layer (or torch) that received the value
    raised_in = traceback.extract_tb(err.value.__traceback__)[-1].filename
    checks = ['checks.py', osp.join('backbones', 'arch.py'), osp.join('backbones', 'metaformer.py')]
    if 'token_mixers' in backbone:
        checks.append('mixers.py')
    assert any(raised_in.endswith(osp.join('metaformer_mm', 'models', c)) for c in checks), \
        raised_in


def test_the_error_names_the_backbone_class():
    with pytest.raises(ValueError, match=r'^PoolFormer: frozen_stages must be in -1\.\.4'):
        PoolFormer(arch=TINY, frozen_stages='2')


def test_good_arguments_of_other_types_still_build():
    """What the checks must not refuse: numpy/torch integers, ints for floats, tuples."""
    import numpy as np
    model = PoolFormer(arch=dict(TINY, dims=tuple(np.array([8, 16, 24, 32]))),
                       frozen_stages=np.int64(1), drop_path_rate=0, out_indices=3,
                       layer_scale_init_value=1, mlp_ratios=[4, 4.0, 3, 2])
    assert model.out_indices == (3,)
    assert model(torch.randn(1, 3, 32, 32))[0].shape == (1, 32, 1, 1)
