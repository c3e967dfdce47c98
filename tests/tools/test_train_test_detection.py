"""tools/train.py and tools/test.py: a real short RetinaNet run on coco_mini (--amp, then
tools/test.py), the dataset check, --amp and --show-dir settings.

Mask R-CNN's tools/test.py output (segm metrics, RLE masks) is tested in test_dist_runs.py,
Semantic FPN's train and test run in test_train_test_segmentation.py, --resume in
tests/engine/test_training_faults.py."""
import glob
import json
import math
import os.path as osp
import pickle
import re
import shutil
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config

from metaformer_mm.cli.config import ToolError
from metaformer_mm.cli.datasets import DatasetMissingError, check_dataset, dataset_requirements
from metaformer_mm.cli.options import enable_amp, enable_show_dir
from metaformer_mm.engine import CPUAmpOptimWrapper


def run_tool(repo_root, tool, *args, cwd=None, timeout=900):
    """Runs tools/<tool> as a user would; returns the CompletedProcess (text output)."""
    cmd = [sys.executable, osp.join(repo_root, 'tools', tool), *map(str, args)]
    return subprocess.run(cmd, cwd=cwd or repo_root, capture_output=True, text=True,
                          timeout=timeout)


def check_ok(proc):
    assert proc.returncode == 0, \
        f'exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}'


def read_test_metrics(work_dir):
    """The metrics mmengine's logger wrote for the (only) test run in work_dir."""
    files = glob.glob(osp.join(work_dir, '*', '*.json'))
    assert len(files) == 1, files
    with open(files[0]) as f:
        return json.loads(f.readlines()[-1])


def mmseg_base_config(tmp_path, base):
    """One of mmseg's packaged base configs, read through a config that inherits it."""
    path = tmp_path / 'mmseg_base.py'
    path.write_text(f"_base_ = ['mmseg::{base}']\n")
    return Config.fromfile(str(path))


def config_path(repo_root, name):
    return osp.join(repo_root, 'configs', 'detection', f'{name}.py')


# --------------------------------------------------------------------------- dataset check
@pytest.mark.parametrize('remove', [None, 'train2017', 'annotations/instances_train2017.json'])
def test_missing_dataset_is_one_clear_message_naming_only_what_is_missing(repo_root, data_dir,
                                                                          tmp_path, remove):
    """``tools/train.py`` run from a directory without ``data/coco/`` (``remove=None``), or
    with a copy of a dataset that lacks one folder or file: one ``error:`` line, naming
    exactly what is missing and the options that point elsewhere, before the Runner starts."""
    if remove is None:
        missing = ['data/coco/annotations/instances_train2017.json', 'data/coco/train2017/',
                   'data/coco/annotations/instances_val2017.json', 'data/coco/val2017/']
    else:
        shutil.copytree(osp.join(data_dir, 'coco_mini'), tmp_path / 'data' / 'coco')
        target = tmp_path / 'data' / 'coco' / remove
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        missing = ['data/coco/' + remove + ('/' if target.suffix == '' else '')]
    proc = run_tool(repo_root, 'train.py', config_path(repo_root, 'retinanet_poolformer_s12'),
                    '--work-dir', tmp_path / 'w', cwd=tmp_path)
    assert proc.returncode != 0
    err = proc.stderr
    assert 'Traceback' not in err and 'Traceback' not in proc.stdout
    assert err.count('error:') == 1
    assert 'retinanet_poolformer_s12.py' in err
    listed = re.findall(r'Not found \(relative to [^)]*\):((?:\s+data/\S+)+)', err)
    assert len(listed) == 1 and listed[0].split() == missing, err
    for expected in ('--cfg-options', 'train_dataloader.dataset.data_root=/path/to/coco/',
                     'val_evaluator.ann_file=/path/to/coco/annotations/instances_val2017.json',
                     'ln -s /path/to/coco data/coco'):
        assert expected in err, (expected, err)
    assert not (tmp_path / 'w').exists()  # stopped before the Runner made anything


def test_check_dataset_detection(repo_root, data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = Config.fromfile(config_path(repo_root, 'mask_rcnn_poolformer_s12'))
    with pytest.raises(DatasetMissingError) as err:
        check_dataset(cfg, 'test')
    message = str(err.value)
    # test reads only the val split; its evaluator needs the same annotation file
    assert 'data/coco/annotations/instances_val2017.json' in message
    assert 'instances_train2017' not in message and 'train2017/' not in message
    assert 'test_dataloader.dataset.data_root=/path/to/coco/' in message
    assert 'test_evaluator.ann_file=/path/to/coco/annotations/instances_val2017.json' in message

    root = osp.join(data_dir, 'coco_mini') + '/'
    cfg.merge_from_dict({f'{s}_dataloader.dataset.data_root': root
                         for s in ('train', 'val', 'test')})
    with pytest.raises(DatasetMissingError, match='instances_val2017.json'):
        check_dataset(cfg, 'train')  # the evaluator's ann_file still points at data/coco
    cfg.merge_from_dict({f'{s}_evaluator.ann_file': root + 'annotations/instances_val2017.json'
                         for s in ('val', 'test')})
    check_dataset(cfg, 'train')
    check_dataset(cfg, 'test')
    needs, _ = dataset_requirements(cfg, 'train')
    assert {kind for _, kind, _ in needs} == {'file', 'dir'}
    assert osp.join(root, 'train2017/') in [p for p, _, _ in needs]

    # No validation loop configured: the val split is not required for training.
    cfg.val_cfg = None
    assert all('val2017' not in p for p, _, _ in dataset_requirements(cfg, 'train')[0])


def test_check_dataset_segmentation_and_wrappers(data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = mmseg_base_config(tmp_path, '_base_/datasets/ade20k.py')
    cfg.val_cfg = dict(type='ValLoop')
    with pytest.raises(DatasetMissingError) as err:
        check_dataset(cfg, 'train')
    message = str(err.value)
    for expected in ('data/ade/ADEChallengeData2016/images/training/',
                     'data/ade/ADEChallengeData2016/annotations/training/',
                     'data/ade/ADEChallengeData2016/images/validation/',
                     'train_dataloader.dataset.data_root=/path/to/ADEChallengeData2016/'):
        assert expected in message, (expected, message)

    root = osp.join(data_dir, 'ade_mini', 'ADEChallengeData2016')
    cfg.merge_from_dict({f'{s}_dataloader.dataset.data_root': root
                         for s in ('train', 'val', 'test')})
    check_dataset(cfg, 'train')
    check_dataset(cfg, 'test')

    # A wrapped dataset (RepeatDataset) is looked into.
    cfg.train_dataloader.dataset = dict(type='RepeatDataset', times=2,
                                        dataset=dict(cfg.train_dataloader.dataset,
                                                     data_root=str(tmp_path / 'nowhere')))
    with pytest.raises(DatasetMissingError,
                       match=r'train_dataloader\.dataset\.dataset\.data_root='):
        check_dataset(cfg, 'train')


# --------------------------------------------------------------------------- --amp, --show-dir
def test_enable_amp(repo_root):
    cfg = Config.fromfile(config_path(repo_root, 'retinanet_poolformer_s12'))
    enable_amp(cfg, cuda=True)
    assert cfg.optim_wrapper.type == 'AmpOptimWrapper'
    assert cfg.optim_wrapper.loss_scale == 'dynamic'
    assert cfg.optim_wrapper.optimizer.type == 'AdamW'

    cfg = Config.fromfile(config_path(repo_root, 'retinanet_poolformer_s12'))
    enable_amp(cfg, cuda=False)
    assert (cfg.optim_wrapper.type, cfg.optim_wrapper.dtype) == ('CPUAmpOptimWrapper',
                                                                 'bfloat16')

    cfg = Config.fromfile(config_path(repo_root, 'mask_rcnn_poolformer_s12'))
    with pytest.raises(ToolError, match='bfloat16'):
        enable_amp(cfg, cuda=False)


def test_cpu_amp_wrapper_runs_in_bfloat16():
    model = torch.nn.Linear(4, 2)
    wrapper = CPUAmpOptimWrapper(optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    with wrapper.optim_context(model):
        out = model(torch.randn(3, 4))
    assert out.dtype == torch.bfloat16
    before = model.weight.detach().clone()
    wrapper.update_params(out.float().pow(2).sum())
    assert model.weight.dtype == torch.float32  # master weights stay float32
    assert not torch.equal(before, model.weight)


def test_amp_config_dump_builds_with_only_the_package_imported(repo_root, tmp_path):
    """A config as ``tools/train.py --amp`` dumps it builds in a fresh interpreter that only
    has ``custom_imports=['metaformer_mm']`` (no import of the tools' modules)."""
    cfg = Config.fromfile(config_path(repo_root, 'retinanet_poolformer_s12'))
    enable_amp(cfg, cuda=False)
    dumped = tmp_path / 'dumped.py'
    cfg.dump(str(dumped))
    script = (
        'import sys, torch\n'
        'from mmengine.config import Config\n'
        'from mmengine.optim import build_optim_wrapper\n'
        'from mmengine.utils import import_modules_from_strings\n'
        f'cfg = Config.fromfile({str(dumped)!r})\n'
        'import_modules_from_strings(**cfg.custom_imports)\n'
        'wrapper = build_optim_wrapper(torch.nn.Linear(2, 2), cfg.optim_wrapper)\n'
        'assert not any(m.startswith(("metaformer_mm.cli", "tools")) for m in sys.modules)\n'
        'print(type(wrapper).__name__, wrapper.cast_dtype)\n')
    proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split()[-2:] == ['CPUAmpOptimWrapper', 'torch.bfloat16']


def test_enable_show_dir(repo_root, tmp_path):
    cfg = Config.fromfile(config_path(repo_root, 'retinanet_poolformer_s12'))
    enable_show_dir(cfg, str(tmp_path / 'show'))
    hook = cfg.default_hooks.visualization
    assert (hook.type, hook.draw, hook.test_out_dir) == ('DetVisualizationHook', True,
                                                         str(tmp_path / 'show'))
    cfg = mmseg_base_config(tmp_path, '_base_/default_runtime.py')
    enable_show_dir(cfg, str(tmp_path / 'seg'))
    hook = cfg.default_hooks.visualization
    assert (hook.type, hook.draw, hook.interval) == ('SegVisualizationHook', True, 1)
    assert cfg.visualizer.save_dir == str(tmp_path / 'seg')


def test_bad_out_path_and_checkpoint(repo_root, coco_mini_run, tmp_path):
    config, options = coco_mini_run(tmp_path, 'retinanet_poolformer_s12')
    proc = run_tool(repo_root, 'test.py', config, tmp_path / 'missing.pth',
                    '--work-dir', tmp_path / 'w', '--cfg-options', *options)
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr
    assert 'checkpoint file not found' in proc.stderr and 'missing.pth' in proc.stderr


# --------------------------------------------------------------------------- real runs
def read_train_losses(work_dir):
    """Each training iteration's losses, from mmengine's vis_data/scalars.json of the run."""
    (path,) = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return {r['iter']: {k: v for k, v in r.items() if 'loss' in k} for r in records if 'loss' in r}


@pytest.mark.slow
def test_retinanet_trains_in_bfloat16_with_amp_and_test_py_reports_bbox_map(
        repo_root, coco_mini_run, tmp_path):
    """``tools/train.py --amp --auto-scale-lr`` on the RetinaNet S12 config (full backbone),
    then ``tools/test.py --out --show-dir`` on its checkpoint."""
    # Batches of 1: coco_mini's 3 training images make 3 iterations, so the losses after two
    # bfloat16 steps are checked too.
    config, options = coco_mini_run(tmp_path, 'retinanet_poolformer_s12', batch_size=1)
    work = tmp_path / 'work'
    # --amp trains in bfloat16 on CPU; --auto-scale-lr scales lr 1e-4 by 1/16.
    proc = run_tool(repo_root, 'train.py', config, '--work-dir', work, '--amp',
                    '--auto-scale-lr', '--cfg-options', *options)
    check_ok(proc)
    ckpt = work / 'epoch_1.pth'
    assert ckpt.is_file()
    log = open(glob.glob(str(work / '*' / '*.log'))[0]).read()
    assert 'Scaling the original LR by 0.0625' in log
    losses = read_train_losses(str(work))
    assert sorted(losses) == [1, 2, 3], losses
    for it, values in losses.items():
        for key in ('loss_cls', 'loss_bbox'):
            assert math.isfinite(values[key]), (it, values)
    dumped = Config.fromfile(str(work / osp.basename(config)))
    assert (dumped.optim_wrapper.type, dumped.optim_wrapper.dtype) == ('CPUAmpOptimWrapper',
                                                                       'bfloat16')
    assert dumped.model.backbone.out_indices == (1, 2, 3)
    state = torch.load(ckpt, map_location='cpu')['state_dict']
    assert 'backbone.out_norms.1.weight' in state and 'backbone.out_norms.0.weight' not in state
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    # the weights are float32 masters: autocast only lowers the compute precision
    assert state['backbone.stem.conv.weight'].dtype == torch.float32

    out, show, test_work = tmp_path / 'preds.pkl', tmp_path / 'show', tmp_path / 'test'
    proc = run_tool(repo_root, 'test.py', config, ckpt, '--work-dir', test_work,
                    '--out', out, '--show-dir', show, '--cfg-options', *options)
    check_ok(proc)
    metrics = read_test_metrics(test_work)
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75'):
        assert isinstance(metrics[key], float) and 0.0 <= metrics[key] <= 1.0, metrics
    with open(out, 'rb') as f:
        preds = pickle.load(f)
    assert len(preds) == 1 and preds[0]['img_id'] == 39769
    assert 'gt_instances' not in preds[0]
    boxes = preds[0]['pred_instances']['bboxes']
    assert boxes.shape == (100, 4)  # score_thr 0: max_per_img boxes
    assert float(boxes[:, 2].max()) <= 640 + 1e-3  # rescaled to the original 640x480 image
    assert (show / '000000039769.jpg').is_file()
