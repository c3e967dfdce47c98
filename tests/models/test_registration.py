"""Registration: our backbones are found from mmdet's and mmseg's scopes, in one process."""
import subprocess
import sys
import textwrap

import pytest

BACKBONES = ['MetaFormer', 'PoolFormer', 'PoolFormerV2', 'IdentityFormer', 'ConvFormer',
             'CAFormer', 'SMLPNet', 'RandFormer']
TINY = dict(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32])
# type -> a preset of that family (built tiny from the scope's registry)
PRESETS = {'MetaFormer': 'caformer_s18', 'PoolFormer': 'poolformer_s12',
           'PoolFormerV2': 'poolformerv2_s12', 'IdentityFormer': 'identityformer_s12',
           'ConvFormer': 'convformer_s18', 'CAFormer': 'caformer_s18', 'SMLPNet': 'smlpnet_tiny',
           'RandFormer': 'randformer_s12'}


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_every_backbone_class_is_registered_and_builds_from_scope(scope):
    import metaformer_mm  # noqa: F401
    from mmengine.registry import DefaultScope

    from metaformer_mm.models import backbones
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    for name in BACKBONES:
        assert registry.get(name) is getattr(backbones, name), f'{name} missing from {scope}'
    with DefaultScope.overwrite_default_scope(scope):
        for name in BACKBONES:
            extra = dict(image_size=64) if name in ('SMLPNet', 'RandFormer') else {}
            model = registry.build(dict(type=name, arch=dict(TINY, base=PRESETS[name]),
                                        out_indices=(1, 2, 3), **extra))
            assert type(model) is getattr(backbones, name)
            assert model.out_indices == (1, 2, 3) and model.dims == TINY['dims']


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-c', textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=300)


def test_custom_imports_in_both_scopes_one_process():
    """mmdet, mmseg and metaformer_mm imported together: no duplicate registration."""
    result = _run('''
        from mmengine.config import Config
        from mmengine.utils import import_modules_from_strings
        import mmdet.models, mmseg.models  # register the packages' own modules first
        cfg = Config(dict(custom_imports=dict(imports=['metaformer_mm'], allow_failed_imports=False)))
        import_modules_from_strings(**cfg.custom_imports)
        import metaformer_mm  # a second import must be a no-op
        from mmdet.registry import MODELS as DET
        from mmseg.registry import MODELS as SEG
        from mmengine.registry import init_default_scope
        init_default_scope('mmdet')
        det = DET.build(dict(type='RetinaNet',
            backbone=dict(type='PoolFormer', arch=dict(base='poolformer_s12', depths=[1,1,1,1]),
                          out_indices=(1, 2, 3)),
            neck=dict(type='FPN', in_channels=[128, 320, 512], out_channels=32, start_level=0,
                      add_extra_convs='on_input', num_outs=5),
            bbox_head=dict(type='RetinaHead', num_classes=3, in_channels=32, feat_channels=32,
                anchor_generator=dict(type='AnchorGenerator', octave_base_scale=4,
                    scales_per_octave=3, ratios=[0.5, 1.0, 2.0], strides=[8, 16, 32, 64, 128]),
                bbox_coder=dict(type='DeltaXYWHBBoxCoder', target_means=[0.0] * 4,
                                target_stds=[1.0] * 4),
                loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                              loss_weight=1.0),
                loss_bbox=dict(type='L1Loss', loss_weight=1.0))))
        print('DET', type(det.backbone).__name__)
        init_default_scope('mmseg')
        seg = SEG.build(dict(type='SMLPNet', arch=dict(base='smlpnet_tiny', depths=[1, 1, 1, 1])))
        print('SEG', type(seg).__name__)
    ''')
    assert result.returncode == 0, result.stderr[-3000:]
    assert 'DET PoolFormer' in result.stdout and 'SEG SMLPNet' in result.stdout


def test_missing_downstream_package_is_reported():
    """A user of only mmseg: mmdet absent is logged by name, and mmseg still works."""
    result = _run('''
        import sys
        sys.modules['mmdet'] = None  # makes `import mmdet` raise ModuleNotFoundError
        import metaformer_mm
        from metaformer_mm.registry import REGISTRIES
        from mmseg.registry import MODELS
        print(sorted(REGISTRIES), MODELS.get('PoolFormer').__name__)
    ''')
    assert result.returncode == 0, result.stderr[-3000:]
    assert "['mmseg'] PoolFormer" in result.stdout
    assert 'mmdet not installed' in result.stdout + result.stderr


def test_broken_downstream_package_is_not_hidden():
    """An mmdet that fails to import for another reason raises instead of being skipped."""
    result = _run('''
        import sys, types
        broken = types.ModuleType('mmdet.registry')
        def __getattr__(name):
            raise ImportError('mmdet is broken: mmcv ops mismatch')
        broken.__getattr__ = __getattr__
        sys.modules['mmdet.registry'] = broken
        import metaformer_mm
    ''')
    assert result.returncode != 0
    assert 'mmdet is broken' in result.stderr
