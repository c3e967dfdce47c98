"""Installs as a user gets them: a wheel (``pip wheel --no-deps .``) and an editable install
(PEP 660), each into a fresh venv that reuses this environment's packages, used from a
directory outside the checkout: configs and the model index come with the package."""
import os
import os.path as osp
import subprocess
import sys

import pytest

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

from venvs import checkout_copy, clean_env, make_venv, pip_install, run_outside

pytestmark = pytest.mark.slow


USER_CONFIG = """\
_base_ = ['metaformer_mm::detection/retinanet_poolformer_s12.py']
# tiny overrides: no ImageNet download, a small test scale, every box kept
model = dict(backbone=dict(init_cfg=None), test_cfg=dict(score_thr=0.0))
test_dataloader = dict(dataset=dict(pipeline=[
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 256), keep_ratio=True),
    dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                                          'scale_factor'))]))
"""


def test_wheel_holds_configs_and_index_and_works_outside_the_checkout(tmp_path, data_dir):
    import zipfile
    src = checkout_copy(str(tmp_path / 'src'))
    wheels = tmp_path / 'wheels'
    result = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps',
                             '--no-build-isolation', '-q', '-w', str(wheels), src],
                            capture_output=True, text=True, timeout=600, env=clean_env())
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = wheels.glob('metaformer_mm-*.whl')
    names = zipfile.ZipFile(wheel).namelist()
    configs = sorted(n for n in names if n.startswith('metaformer_mm/.mim/configs/'))
    expected = sorted('metaformer_mm/.mim/' + osp.relpath(osp.join(root, f), ROOT)
                      for root, _, files in os.walk(osp.join(ROOT, 'configs'))
                      for f in files if f.endswith(('.py', '.yml')))
    assert configs == expected
    assert 'metaformer_mm/.mim/model-index.yml' in names
    assert 'metaformer_mm/zoo.py' in names

    python = make_venv(str(tmp_path / 'venv'))
    pip_install(python, str(wheel))
    out = run_outside(python, str(tmp_path / 'elsewhere'), f"""
        import os.path as osp
        import metaformer_mm
        from metaformer_mm import zoo
        package = osp.dirname(metaformer_mm.__file__)
        assert package.startswith({str(tmp_path / 'venv')!r}), package
        # real files, not links back into a checkout
        assert osp.isdir(osp.join(package, '.mim', 'configs'))
        assert not osp.islink(osp.join(package, '.mim', 'configs'))
        config = zoo.resolve_config('retinanet_poolformer_s12')
        assert config == osp.join(package, '.mim', 'configs', 'detection',
                                  'retinanet_poolformer_s12.py'), config
        assert len(zoo.model_index()) >= 24
        with open('my_retinanet.py', 'w') as f:
            f.write({USER_CONFIG!r})
        from mmdet.apis import inference_detector, init_detector
        model = init_detector('my_retinanet.py', None, device='cpu')
        assert type(model.backbone).__name__ == 'PoolFormer'
        result = inference_detector(model, {osp.join(data_dir, 'demo', 'demo.jpg')!r})
        print('boxes', len(result.pred_instances.bboxes), tuple(result.img_shape))
        """)
    assert 'boxes 100 ' in out


def test_editable_install_resolves_package_configs_from_the_checkout(tmp_path):
    """PEP 660 (setuptools' editable wheel): mmengine finds ``metaformer_mm::`` configs
    through the committed ``.mim`` links, and an edit in configs/ shows at once."""
    src = checkout_copy(str(tmp_path / 'src'))
    python = make_venv(str(tmp_path / 'venv'))
    pip_install(python, '-e', src)
    with open(osp.join(src, 'configs', 'detection', 'retinanet_poolformer_s12.py'), 'a') as f:
        f.write('edited_in_checkout = True\n')
    out = run_outside(python, str(tmp_path / 'elsewhere'), f"""
        import os.path as osp
        import metaformer_mm
        assert metaformer_mm.__file__ == {osp.join(src, 'metaformer_mm', '__init__.py')!r}
        from mmengine.config import Config
        from mmengine.hub import get_config
        with open('mine.py', 'w') as f:
            f.write("_base_ = ['metaformer_mm::detection/retinanet_poolformer_s12.py']\\n"
                    "model = dict(bbox_head=dict(num_classes=3))\\n")
        cfg = Config.fromfile('mine.py')
        assert cfg.edited_in_checkout and cfg.model.bbox_head.num_classes == 3
        assert get_config('metaformer_mm::segmentation/fpn_poolformer_s12.py').model.backbone.arch == 's12'
        from metaformer_mm.zoo import resolve_config
        print('config', resolve_config('mask_rcnn_poolformer_s12'))
        """)
    assert f'config {osp.join(src, "metaformer_mm", ".mim", "configs", "detection")}' in out
