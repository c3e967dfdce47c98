"""2-process CPU runs (torchrun, gloo) through tools/dist_train.sh and tools/dist_test.sh.

* Mask R-CNN trains 3 iterations in 2 processes: DDP without ``find_unused_parameters``
  raises from the second iteration on if any parameter got no gradient, so finishing is the
  check that none is left unused (the stride-4 map feeds the FPN, every head is used).
* ``tools/test.py --out`` on that checkpoint writes COCO bbox and segm metrics and RLE masks
  at each image's original size.
* Evaluating a checkpoint with 2 processes gives the same metrics and the same predictions
  as with 1 process, for Mask R-CNN (CocoMetric bbox + segm) and Semantic FPN (IoUMetric).
  The 3 test images do not split evenly over 2 ranks, so the sampler's padding and the
  gathering of the results are exercised too.

Models are the S12 configs with a 1-block-per-stage, narrow PoolFormer at about 192x128.
Semantic FPN keeps its SyncBN head, which the tools run as BN in CPU processes (DDP refuses
SyncBN on CPU). The Semantic FPN *training* run in 2 processes is in test_train_test_segmentation.py,
RetinaNet's in test_dist_scripts.py.
"""
import glob
import json
import os
import os.path as osp
import pickle
import signal
import socket
import subprocess
import sys
from typing import Dict, List

import numpy as np
import pytest
import torch

TINY = dict(base='poolformer_s12', depths=[1, 1, 1, 1], dims=[8, 16, 24, 32])
ITERS = 3

MASK_RCNN = '''
_base_ = [{config!r}]
data_root = {data_root!r}
model = dict(
    backbone=dict(arch=dict(_delete_=True, **{tiny!r}), init_cfg=None),
    neck=dict(in_channels={dims!r}),
    test_cfg=dict(rcnn=dict(score_thr=0.0)))  # keep every box of a barely trained model
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='Resize', scale=(192, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(192, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
# The 3 training images as the test set: the 1 validation image would not be split.
test_dataloader = dict(
    batch_size=1, num_workers=0, persistent_workers=False,
    dataset=dict(data_root=data_root, ann_file='annotations/instances_train2017.json',
                 data_prefix=dict(img='train2017/'), pipeline=test_pipeline))
test_evaluator = dict(ann_file=data_root + 'annotations/instances_train2017.json')
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters={iters})
val_cfg = None
val_dataloader = None
val_evaluator = None
param_scheduler = []
default_hooks = dict(checkpoint=dict(by_epoch=False, interval={iters}), logger=dict(interval=1))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
'''

FPN = '''
_base_ = [{config!r}]
data_root = {data_root!r}
model = dict(
    backbone=dict(arch=dict(_delete_=True, **{tiny!r}), init_cfg=None),
    neck=dict(in_channels={dims!r}))
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 128), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
test_dataloader = dict(num_workers=0, persistent_workers=False,
                       dataset=dict(data_root=data_root, pipeline=test_pipeline))
'''


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def _tool(repo_root: str, name: str) -> str:
    path = osp.join(repo_root, 'tools', name)
    if not osp.isfile(path):
        pytest.fail(f'{path} is missing')
    return path


class _Job:
    """A tool run in the background; 1 thread per process so that several share 2 cores."""

    def __init__(self, cmd: List[str], log: str) -> None:
        env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore',
                   PYTHON=sys.executable, PORT=str(_free_port()))
        self.log = log
        with open(log, 'w') as out:
            # its own process group: torchrun's workers are stopped with it
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def finish(self) -> str:
        self.proc.wait(timeout=900)
        with open(self.log) as f:
            text = f.read()
        assert self.proc.returncode == 0, f'{self.proc.args} failed:\n{text[-6000:]}'
        return text


def _train(repo_root, config, work_dir, gpus) -> _Job:
    if gpus == 1:
        cmd = [sys.executable, _tool(repo_root, 'train.py'), config]
    else:
        cmd = ['bash', _tool(repo_root, 'dist_train.sh'), config, str(gpus)]
    return _Job(cmd + ['--work-dir', work_dir, '--cfg-options', 'env_cfg.dist_cfg.backend=gloo'],
                f'{work_dir}.log')


def _test(repo_root, config, checkpoint, work_dir, gpus) -> _Job:
    if gpus == 1:
        cmd = [sys.executable, _tool(repo_root, 'test.py'), config, checkpoint]
    else:
        cmd = ['bash', _tool(repo_root, 'dist_test.sh'), config, checkpoint, str(gpus)]
    return _Job(cmd + ['--work-dir', work_dir, '--out', f'{work_dir}.pkl',
                       '--cfg-options', 'env_cfg.dist_cfg.backend=gloo'], f'{work_dir}.log')


def _metrics(work_dir: str) -> Dict:
    files = glob.glob(osp.join(work_dir, '*', '*.json'))
    assert len(files) == 1, files
    with open(files[0]) as f:
        last = f.readlines()[-1]
    # mmengine's LoggerHook dumps the test metrics on every rank into the same file, so two
    # processes may leave the (identical) record twice on one line: read the first.
    return json.JSONDecoder().raw_decode(last)[0]


def _predictions(work_dir: str) -> List[Dict]:
    with open(f'{work_dir}.pkl', 'rb') as f:
        return pickle.load(f)


def _random_fpn_checkpoint(config: str, path: str) -> None:
    """A Semantic FPN checkpoint with seeded random weights, in mmengine's layout."""
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(config).model)
    model.init_weights()
    torch.save({'state_dict': model.state_dict(), 'meta': {}}, path)


@pytest.fixture(scope='module')
def runs(repo_root, data_dir, tmp_path_factory) -> Dict[str, str]:
    """Runs everything, two phases of concurrent jobs; returns work dirs and logs by name."""
    root = tmp_path_factory.mktemp('dist')
    configs = {
        'mask_rcnn': root / 'mask_rcnn_tiny.py',
        'fpn': root / 'fpn_tiny.py',
    }
    configs['mask_rcnn'].write_text(MASK_RCNN.format(
        config=osp.join(repo_root, 'configs', 'detection', 'mask_rcnn_poolformer_s12.py'),
        data_root=osp.join(data_dir, 'coco_mini') + '/', tiny=TINY, dims=TINY['dims'],
        iters=ITERS))
    configs['fpn'].write_text(FPN.format(
        config=osp.join(repo_root, 'configs', 'segmentation', 'fpn_poolformer_s12.py'),
        data_root=osp.join(data_dir, 'ade_mini', 'ADEChallengeData2016'), tiny=TINY,
        dims=TINY['dims']))
    config = {k: str(v) for k, v in configs.items()}
    fpn_ckpt = str(root / 'fpn_random.pth')
    _random_fpn_checkpoint(config['fpn'], fpn_ckpt)
    out = {name: str(root / name) for name in
           ('train_mask_rcnn', 'test_mask_rcnn_1', 'test_mask_rcnn_2', 'test_fpn_1', 'test_fpn_2')}

    jobs: List[_Job] = []
    try:
        jobs += [_train(repo_root, config['mask_rcnn'], out['train_mask_rcnn'], gpus=2),
                 _test(repo_root, config['fpn'], fpn_ckpt, out['test_fpn_1'], gpus=1),
                 _test(repo_root, config['fpn'], fpn_ckpt, out['test_fpn_2'], gpus=2)]
        logs = dict(zip(('train_mask_rcnn', 'test_fpn_1', 'test_fpn_2'),
                        [job.finish() for job in jobs]))
        ckpt = osp.join(out['train_mask_rcnn'], f'iter_{ITERS}.pth')
        jobs += [_test(repo_root, config['mask_rcnn'], ckpt, out['test_mask_rcnn_1'], gpus=1),
                 _test(repo_root, config['mask_rcnn'], ckpt, out['test_mask_rcnn_2'], gpus=2)]
        logs.update(test_mask_rcnn_1=jobs[3].finish(), test_mask_rcnn_2=jobs[4].finish())
    finally:  # a failed run must not leave the others behind
        for job in jobs:
            job.stop()
    return dict(dirs=out, logs=logs)


def _world_size(log: str) -> int:
    for line in log.splitlines():
        if 'GPU number:' in line:  # mmengine's environment report: the world size
            return int(line.split('GPU number:')[1])
    raise AssertionError('no environment report in the log')


@pytest.mark.slow
def test_mask_rcnn_trains_in_two_processes_with_no_unused_parameter(runs):
    log = runs['logs']['train_mask_rcnn']
    assert 'Distributed training: True' in log and _world_size(log) == 2
    work_dir = runs['dirs']['train_mask_rcnn']
    from mmengine.config import Config
    dumped = Config.fromfile(osp.join(work_dir, 'mask_rcnn_tiny.py'))
    # DDP checks for unused parameters only when it is not told to look for them
    assert dumped.model_wrapper_cfg.type == 'MMDistributedDataParallel'
    assert dumped.model_wrapper_cfg.find_unused_parameters is False
    (scalars,) = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    with open(scalars) as f:
        records = [json.loads(line) for line in f if 'loss' in line]
    assert [r['iter'] for r in records] == list(range(1, ITERS + 1))
    for record in records:
        for key in ('loss_rpn_cls', 'loss_rpn_bbox', 'loss_cls', 'loss_bbox', 'loss_mask'):
            assert np.isfinite(record[key]), record
    assert osp.isfile(osp.join(work_dir, f'iter_{ITERS}.pth'))


@pytest.mark.slow
def test_mask_rcnn_test_py_reports_coco_metrics_and_rle_masks_at_each_image_size(
        runs, data_dir):
    """tools/test.py --out on the trained Mask R-CNN (the 1-process evaluation): bbox and segm
    metrics in [0, 1], a mask for every box, as COCO RLE at the image's original size."""
    metrics = _metrics(runs['dirs']['test_mask_rcnn_1'])
    for key in ('coco/bbox_mAP', 'coco/segm_mAP', 'coco/segm_mAP_50'):
        assert isinstance(metrics[key], float) and 0.0 <= metrics[key] <= 1.0, metrics
    with open(osp.join(data_dir, 'coco_mini', 'annotations', 'instances_train2017.json')) as f:
        sizes = {i['id']: [i['height'], i['width']] for i in json.load(f)['images']}
    predictions = _predictions(runs['dirs']['test_mask_rcnn_1'])
    assert sorted(p['img_id'] for p in predictions) == sorted(sizes)
    for prediction in predictions:
        pred = prediction['pred_instances']
        assert len(pred['masks']) == len(pred['bboxes']) > 0
        assert all(set(mask) == {'size', 'counts'} for mask in pred['masks'])  # COCO RLE
        assert {tuple(mask['size']) for mask in pred['masks']} == \
            {tuple(sizes[prediction['img_id']])}


def _same_detections(one: List[Dict], two: List[Dict]) -> None:
    assert [p['img_id'] for p in one] == [p['img_id'] for p in two]
    assert len(one) == 3
    for a, b in zip(one, two):
        a, b = a['pred_instances'], b['pred_instances']
        assert len(a['bboxes']) == len(b['bboxes']) > 0
        torch.testing.assert_close(a['bboxes'], b['bboxes'])
        torch.testing.assert_close(a['scores'], b['scores'])
        assert torch.equal(a['labels'], b['labels'])
        assert a['masks'] == b['masks']  # COCO RLE dicts


def _same_label_maps(one: List[Dict], two: List[Dict]) -> None:
    assert [p['img_path'] for p in one] == [p['img_path'] for p in two]
    assert len(one) == 3
    for a, b in zip(one, two):
        assert np.array_equal(a['pred_sem_seg']['data'], b['pred_sem_seg']['data'])


@pytest.mark.slow
@pytest.mark.parametrize('name,same_predictions,keys', [
    ('mask_rcnn', _same_detections, ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/segm_mAP')),
    ('fpn', _same_label_maps, ('mIoU', 'aAcc', 'mAcc')),
])
def test_two_process_evaluation_equals_one_process(runs, name, same_predictions, keys):
    """tools/dist_test.sh with 2 processes and with 1: the world size each reports, the
    sampler's split of the 3 images (2 per rank, one padded), and the same metrics and the
    same predictions for every image."""
    dirs, logs = runs['dirs'], runs['logs']
    one, two = dirs[f'test_{name}_1'], dirs[f'test_{name}_2']
    assert _world_size(logs[f'test_{name}_1']) == 1 and _world_size(logs[f'test_{name}_2']) == 2
    # each of the 2 ranks saw 2 of the 3 images (one padded), the single process all 3
    assert 'Iter(test) [3/3]' in logs[f'test_{name}_1']
    assert 'Iter(test) [2/2]' in logs[f'test_{name}_2']
    metrics_1, metrics_2 = _metrics(one), _metrics(two)
    for key in keys:
        assert key in metrics_1, metrics_1
    assert {k: v for k, v in metrics_1.items() if k in keys} == \
        {k: v for k, v in metrics_2.items() if k in keys}
    same_predictions(_predictions(one), _predictions(two))
