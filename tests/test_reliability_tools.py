"""The tools' own failures: one ``error:`` line and a non-zero exit, nothing lost.

Two ``tools/train.py`` runs into one work dir, a killed one, a read-only work dir, a full
disk; bad arguments of ``tools/train.py``, ``tools/convert_checkpoint.py``,
``tools/deploy/export_onnx.py`` and ``demo/image_demo.py``. Every tool runs as the command a
user types, on the shapes dataset with a 1-block-per-stage PoolFormer and a narrow head.
"""
import os
import os.path as osp
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO = osp.join(ROOT, 'configs', 'detection', 'demo', 'retinanet_poolformer_s12_shapes.py')
# A RetinaNet small enough that a checkpoint is ~0.3 MB and an iteration takes milliseconds.
TINY = '''
_base_ = [{config!r}]
data_root = {data_root!r}
model = dict(backbone=dict(arch=dict(_delete_=True, base='poolformer_s12', depths=[1, 1, 1, 1],
                                     dims=[8, 16, 24, 32])),
             neck=dict(in_channels=[16, 24, 32], out_channels=16),
             bbox_head=dict(in_channels=16, feat_channels=16, stacked_convs=1))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(64, 64), keep_ratio=True),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
train_cfg = dict(max_iters={iters}, val_interval=100000)
param_scheduler = []
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval={interval}))
'''


def tool(*args, timeout: int = 300, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env, **kwargs)


def one_error(proc: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of a tool that failed cleanly (no traceback)."""
    assert proc.returncode not in (0, None), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


@pytest.fixture(scope='module')
def shapes(tmp_path_factory) -> str:
    from metaformer_mm.datasets.shapes import make_shapes_dataset
    root = str(tmp_path_factory.mktemp('shapes') / 'data')
    make_shapes_dataset(root, num_train=4, num_val=2, image_size=64, size_range=(12, 32),
                        progress=False)
    return root + '/'


def tiny_config(tmp_path, shapes, iters: int = 2, interval: int = 1) -> str:
    path = tmp_path / f'tiny_{iters}_{interval}.py'
    path.write_text(TINY.format(config=DEMO, data_root=shapes, iters=iters, interval=interval))
    return str(path)


def wait_for(condition, timeout: float, what: str, proc=None) -> None:
    end = time.monotonic() + timeout
    while not condition():
        if proc is not None and proc.poll() is not None:
            pytest.fail(f'{what}: the process ended first:\n{proc.stderr.read()[-3000:]}')
        if time.monotonic() > end:
            pytest.fail(f'{what}: not within {timeout} s')
        time.sleep(0.2)


# =========================================================================== one run per work dir
def test_second_run_into_a_work_dir_is_refused_and_a_killed_run_leaves_no_lock(tmp_path,
                                                                               shapes):
    """A real run holds the work dir; a second ``tools/train.py`` into it stops at once,
    naming the first, and writes nothing there; once the first is killed (SIGKILL), the
    next run starts (no stale lock) and resumes from what the killed one wrote."""
    config = tiny_config(tmp_path, shapes, iters=100000, interval=1)
    work_dir = tmp_path / 'work'
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONWARNINGS='ignore')
    first = subprocess.Popen([sys.executable, 'tools/train.py', config, '--work-dir',
                              str(work_dir)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (work_dir / 'last_checkpoint').exists(), 240,
                 'the first run writing a checkpoint', first)
        before = sorted(os.listdir(work_dir))
        second = tool('tools/train.py', config, '--work-dir', work_dir, timeout=240)
        error = one_error(second)
        assert error.startswith(f'error: work dir {work_dir} is in use by another training '
                                f'run (pid {first.pid} on ')
        assert '--work-dir' in error
        # nothing of the second run: no log dir of its own, the first's files untouched
        assert [n for n in sorted(os.listdir(work_dir)) if not n.startswith('iter_')] == \
            [n for n in before if not n.startswith('iter_')]
        assert first.poll() is None  # the first run goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
        first.stderr.close()
    assert first.returncode == -signal.SIGKILL
    last = int(re.search(r'iter_(\d+)\.pth', (work_dir / 'last_checkpoint').read_text())[1])
    third = tool('tools/train.py', config, '--work-dir', work_dir, '--resume',
                 '--cfg-options', f'train_cfg.max_iters={last + 1}', timeout=240)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f'resumed epoch: 0, iter: {last}' in third.stdout, third.stdout[-2000:]
    assert (work_dir / f'iter_{last + 1}.pth').is_file()


def test_work_dir_lock_is_released_when_its_holder_is_killed(tmp_path):
    """The lock alone, between bare processes: held while the holder lives, free the moment
    it is SIGKILLed, and held by one process only."""
    work_dir = str(tmp_path / 'w')
    take = ('import sys, time\n'
            'from metaformer_mm.cli.checkpoints import prepare_work_dir\n'
            'prepare_work_dir(sys.argv[1], lock=True)\n'
            'print("locked", flush=True)\n'
            'if len(sys.argv) > 2: time.sleep(600)\n')
    holder = subprocess.Popen([sys.executable, '-c', take, work_dir, 'hold'], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == 'locked', holder.stderr.read()
        refused = tool('-c', take, work_dir, timeout=120)
        assert refused.returncode != 0
        assert f'is in use by another training run (pid {holder.pid} on' in refused.stderr
    finally:
        holder.kill()
        holder.wait(timeout=60)
        holder.stdout.close()
        holder.stderr.close()
    taken = tool('-c', take, work_dir, timeout=120)
    assert taken.returncode == 0 and taken.stdout.strip() == 'locked', taken.stderr[-2000:]
