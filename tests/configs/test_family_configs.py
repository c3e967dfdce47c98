"""Detection/segmentation configs of sMLPNet-T, CAFormer-S18, ConvFormer-S18 and
RandFormer-S12.

Each inherits the PoolFormer-S12 config of its task (same recipe) and swaps the backbone.
Here: they parse, keep the recipe, build with real mmdet/mmseg models, run a forward on a
mini dataset through the config's own test pipeline (at a small scale), and a few CPU
training iterations run through tools/train.py.
"""
import ast
import copy
import functools
import json
import os
import os.path as osp
import subprocess
import sys
from typing import Any, Dict, List

import pytest
import torch

import metaformer_mm  # noqa: F401  (registers the backbones)

# config -> (task, backbone type, arch, PoolFormer config it inherits, ImageNet weights name
# (metaformer_mm.zoo.IMAGENET_WEIGHTS) or None)
CONFIGS = {
    'detection/retinanet_smlpnet_tiny': ('det', 'SMLPNet', 'tiny', 'retinanet_poolformer_s12',
                                         None),
    'detection/mask_rcnn_smlpnet_tiny': ('det', 'SMLPNet', 'tiny', 'mask_rcnn_poolformer_s12',
                                         None),
    'segmentation/fpn_smlpnet_tiny': ('seg', 'SMLPNet', 'tiny', 'fpn_poolformer_s12', None),
    'detection/retinanet_caformer_s18': ('det', 'CAFormer', 's18', 'retinanet_poolformer_s12',
                                         'caformer_s18'),
    'detection/mask_rcnn_caformer_s18': ('det', 'CAFormer', 's18', 'mask_rcnn_poolformer_s12',
                                         'caformer_s18'),
    'detection/mask_rcnn_convformer_s18': ('det', 'ConvFormer', 's18',
                                           'mask_rcnn_poolformer_s12',
                                           'convformer_s18'),
    'segmentation/fpn_caformer_s18': ('seg', 'CAFormer', 's18', 'fpn_poolformer_s12',
                                      'caformer_s18'),
    'segmentation/fpn_convformer_s18': ('seg', 'ConvFormer', 's18', 'fpn_poolformer_s12',
                                        'convformer_s18'),
    'detection/retinanet_randformer_s12': ('det', 'RandFormer', 's12',
                                           'retinanet_poolformer_s12',
                                           'randformer_s12'),
    'detection/mask_rcnn_randformer_s12': ('det', 'RandFormer', 's12',
                                           'mask_rcnn_poolformer_s12',
                                           'randformer_s12'),
    'segmentation/fpn_randformer_s12': ('seg', 'RandFormer', 's12', 'fpn_poolformer_s12',
                                        'randformer_s12'),
}
# What may differ from the inherited PoolFormer config: the backbone and the neck's inputs.
SWAPPED = {'model.backbone', 'model.neck.in_channels'}


def _path(repo_root: str, name: str) -> str:
    path = osp.join(repo_root, 'configs', f'{name}.py')
    if not osp.isfile(path):
        pytest.fail(f'{path} is missing')
    return path


@functools.lru_cache(maxsize=None)
def _parse(path: str):
    from mmengine.config import Config
    return Config.fromfile(path)


def _load(repo_root: str, name: str):
    return copy.deepcopy(_parse(_path(repo_root, name)))


def _flatten(obj: Any, prefix: str = '') -> Dict[str, Any]:
    """``{'a.b.c': leaf}``; lists of dicts (pipelines, schedulers) stay whole leaves."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if key != '_scope_':
                out.update(_flatten(value, f'{prefix}{key}.'))
        return out
    return {prefix[:-1]: obj}


def _build(cfg, task: str):
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet' if task == 'det' else 'mmseg')
    if task == 'det':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    return MODELS.build(cfg.model)


# --------------------------------------------------------------------------- parse and build
@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_config_keeps_the_poolformer_recipe(repo_root, name):
    task, backbone_type, arch, base, url = CONFIGS[name]
    path = _path(repo_root, name)
    declared = [node for node in ast.parse(open(path).read()).body
                if isinstance(node, ast.Assign) and node.targets[0].id == '_base_']
    assert ast.literal_eval(declared[0].value) == [f'./{base}.py']

    cfg = _load(repo_root, name)
    base_cfg = _load(repo_root, f'{osp.dirname(name)}/{base}')
    ours, theirs = _flatten(cfg.to_dict()), _flatten(base_cfg.to_dict())
    changed = {k for k in set(ours) | set(theirs) if ours.get(k) != theirs.get(k)}
    assert all(any(k == s or k.startswith(s + '.') for s in SWAPPED) for k in changed), \
        sorted(changed)

    backbone = cfg.model.backbone
    assert backbone.type == backbone_type and backbone.arch == arch and backbone.fork_feat
    if url is None:
        # No sMLPNet-T release; BatchNorm inside the mixers keeps pretrained statistics.
        assert backbone.init_cfg is None and backbone.norm_eval is True
        assert backbone.image_size == 224 and backbone.resize_mode == 'interpolate'
    else:
        assert backbone.init_cfg == dict(type='Pretrained', checkpoint=url)
    if backbone_type == 'RandFormer':  # the released matrices belong to 224x224 inputs
        assert backbone.image_size == 224
    # The PoolFormer backbone's own settings did not leak through (_delete_).
    assert 'pool_size' not in backbone and 'layer_scale_init_value' not in backbone


@pytest.mark.parametrize('name', sorted(CONFIGS))
def test_config_builds_and_runs_on_a_mini_dataset(repo_root, data_dir, name):
    from mmengine.dataset import pseudo_collate
    task, backbone_type, arch, _, _ = CONFIGS[name]
    cfg = _load(repo_root, name)
    cfg.model.backbone.init_cfg = None
    model = _build(cfg, task)
    backbone = model.backbone
    assert type(backbone).__name__ == backbone_type
    assert [backbone.dims[i] for i in backbone.out_indices] == list(cfg.model.neck.in_channels)
    if backbone_type == 'SMLPNet':
        assert backbone.norm_eval
        model.train()
        assert not any(m.training for m in backbone.modules()
                       if isinstance(m, torch.nn.BatchNorm2d))
    model.init_weights()
    model.eval()

    # The config's own test dataset and pipeline, pointed at the mini data, small scale.
    dataset_cfg = copy.deepcopy(cfg.test_dataloader.dataset)
    small = (256, 160) if task == 'det' else (256, 128)
    dataset_cfg.pipeline = [dict(t, scale=small) if t['type'] == 'Resize' else t
                            for t in dataset_cfg.pipeline]
    if task == 'det':
        from mmdet.registry import DATASETS
        dataset_cfg.data_root = osp.join(data_dir, 'coco_mini') + '/'
    else:
        from mmseg.registry import DATASETS
        dataset_cfg.data_root = osp.join(data_dir, 'ade_mini', 'ADEChallengeData2016')
    dataset = DATASETS.build(dataset_cfg)
    with torch.no_grad():
        [result] = model.test_step(pseudo_collate([dataset[0]]))
    ori_shape = tuple(result.ori_shape)
    if task == 'det':
        boxes = result.pred_instances.bboxes
        assert boxes.ndim == 2 and boxes.shape[1] == 4 and torch.isfinite(boxes).all()
        if 'mask' in name:
            assert result.pred_instances.masks.shape[1:] == ori_shape
    else:
        assert tuple(result.pred_sem_seg.data.shape) == (1, *ori_shape)
        assert int(result.pred_sem_seg.data.max()) < 150


# --------------------------------------------------------------------------- training runs


def _train(repo_root: str, config: str, work_dir: str, options: List[str] = ()) -> None:
    tool = osp.join(repo_root, 'tools', 'train.py')
    if not osp.isfile(tool):
        pytest.fail(f'{tool} is missing')
    args = [sys.executable, tool, config, '--work-dir', work_dir]
    if options:
        args += ['--cfg-options', *options]
    env = dict(os.environ, OMP_NUM_THREADS='2', PYTHONWARNINGS='ignore')
    result = subprocess.run(args, cwd=osp.dirname(work_dir), env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, (f'{" ".join(args)} failed:\n{result.stdout[-3000:]}\n'
                                    f'{result.stderr[-5000:]}')


def _records(work_dir: str) -> List[Dict]:
    """What the run logged (mmengine's vis_data/scalars.json), one dict per logging step."""
    runs = sorted(d for d in os.listdir(work_dir)
                  if osp.isfile(osp.join(work_dir, d, 'vis_data', 'scalars.json')))
    assert runs, f'no run logged in {work_dir}: {os.listdir(work_dir)}'
    with open(osp.join(work_dir, runs[-1], 'vis_data', 'scalars.json')) as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.mark.slow
@pytest.mark.parametrize('name', ['retinanet_smlpnet_tiny', 'mask_rcnn_caformer_s18'])
def test_detection_training_iterations(repo_root, coco_mini_run, tmp_path, name):
    config, options = coco_mini_run(tmp_path, name, scale=(256, 160), batch_size=2)
    work_dir = str(tmp_path / 'work')
    _train(repo_root, config, work_dir, options)
    records = [r for r in _records(work_dir) if 'loss' in r]
    assert len(records) == 2  # 3 images, batches of 2, one epoch
    assert all(0 < r['loss'] < 100 for r in records)  # finite (NaN fails too)
    if 'mask_rcnn' in name:
        assert all('loss_mask' in r and 'loss_rpn_cls' in r for r in records)
    else:
        assert all('loss_cls' in r and 'loss_bbox' in r for r in records)
    assert osp.isfile(osp.join(work_dir, 'epoch_1.pth'))


@pytest.mark.slow
def test_segmentation_training_iterations(repo_root, ade_mini_run, tmp_path):
    iters = 2
    config = ade_mini_run(tmp_path, 'fpn_smlpnet_tiny', iters)
    work_dir = str(tmp_path / 'work')
    _train(repo_root, str(config), work_dir)
    records = _records(work_dir)
    train = [r for r in records if 'loss' in r]
    assert [r['iter'] for r in train] == list(range(1, iters + 1))
    assert all(0 < r['loss'] < 100 for r in train)
    assert osp.isfile(osp.join(work_dir, f'iter_{iters}.pth'))
    val = [r for r in records if 'mIoU' in r]
    assert len(val) == 1 and 0 <= val[0]['mIoU'] <= 100
