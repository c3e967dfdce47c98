"""The tools take model names and ``metaformer_mm::`` paths wherever they take a config, and
``tools/convert_checkpoint.py`` labels a whole-model file by what it is (mmdet 2.x / mmseg 0.x
release, or this project's own mmdet 3.x / mmseg 1.x checkpoint).
Each tool's main() runs in this process with a user's command line.
"""
import os.path as osp
import subprocess

import pytest
import torch
from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
VISUALIZE = osp.join('tools', 'analysis', 'visualize_features.py')


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    """The script's main(ARGS) in this process, as the command a user types would run it: its
    exit status, stdout and stderr."""
    from in_process import run_main
    return run_main(script, *args, cwd=ROOT)


@pytest.fixture(scope='module')
def s12_backbone_file(tmp_path_factory) -> str:
    """A PoolFormer-S12 backbone file of distinct weights (what retinanet_poolformer_s12 holds)."""
    from metaformer_mm.models import PoolFormer
    state = {k: v + 0.5 if v.is_floating_point() else v
             for k, v in PoolFormer(arch='s12', fork_feat=True).state_dict().items()}
    path = str(tmp_path_factory.mktemp('s12') / 'poolformer_s12_backbone.pth')
    torch.save({'state_dict': state}, path)
    return path


@pytest.mark.parametrize('config', ['retinanet_poolformer_s12',
                                    'retinanet_poolformer_s12_fpn_1x_coco',
                                    'metaformer_mm::detection/retinanet_poolformer_s12.py'])
def test_visualize_features_takes_model_names(config, s12_backbone_file, data_dir, tmp_path):
    out_file = tmp_path / 'features.png'
    result = run(VISUALIZE, osp.join(data_dir, 'demo', 'demo.jpg'), config, s12_backbone_file,
                 '--out-file', str(out_file), '--size', '64')
    assert result.returncode == 0, result.stderr[-2000:]
    # 640x427 -> 64x32 (multiples of 32); all four stages.
    assert ('feature maps (C, H, W): [(64, 8, 16), (128, 4, 8), (320, 2, 4), (512, 1, 2)]'
            in result.stdout), result.stdout
    assert 'random weights' not in result.stdout
    assert out_file.stat().st_size > 0


def test_visualize_features_unknown_name_lists_the_closest(data_dir, tmp_path):
    result = run(VISUALIZE, osp.join(data_dir, 'demo', 'demo.jpg'), 'retinanet_poolformer_s13',
                 '--out-file', str(tmp_path / 'f.png'))
    assert result.returncode != 0 and 'Traceback' not in result.stderr
    assert result.stderr.startswith('error: ') and 'retinanet_poolformer_s12' in result.stderr
    assert 'config file not found' not in result.stderr
    assert not (tmp_path / 'f.png').exists()


# --------------------------------------------------------------------------- convert_checkpoint
def _tiny_model(kind: str):
    """A tiny RetinaNet-S12 (mmdet 3.x) or Semantic FPN-S12 (mmseg 1.x) of this project."""
    from mmengine.registry import init_default_scope
    rel = ('detection/retinanet_poolformer_s12.py' if kind == 'det'
           else 'segmentation/fpn_poolformer_s12.py')
    cfg = Config.fromfile(osp.join(ROOT, 'configs', rel))
    cfg.model.backbone.arch = dict(base='poolformer_s12', depths=[1, 1, 1, 1])
    cfg.model.backbone.init_cfg = None
    scope = 'mmdet' if kind == 'det' else 'mmseg'
    init_default_scope(scope)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    return registry.build(cfg.model).eval()


@pytest.mark.parametrize('kind, label', [('det', 'mmdet3'), ('seg', 'mmseg1')])
def test_convert_checkpoint_labels_this_projects_checkpoints_as_current(kind, label, tmp_path):
    model = _tiny_model(kind)
    src, dst = str(tmp_path / 'epoch_12.pth'), str(tmp_path / 'copy.pth')
    torch.save({'state_dict': model.state_dict(), 'meta': {'dataset_meta': {'classes': ('a',)}}},
               src)
    result = run('tools/convert_checkpoint.py', src, dst)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f'from {label} (backbone: metaformer_mm) to the metaformer_mm layout' \
        in result.stdout, result.stdout
    assert 'mmdet2' not in result.stdout and 'mmseg0' not in result.stdout
    saved = torch.load(dst, weights_only=True)
    assert saved['meta']['converted_from'] == f'{label}/metaformer_mm'
    model.load_state_dict(saved['state_dict'], strict=True)
