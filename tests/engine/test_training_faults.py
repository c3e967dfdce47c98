"""Faults survived during training: failed checkpoint writes, a killed run, AMP, determinism.

* Failing checkpoint writes run in-process on a tiny PoolFormer classifier trained by a real
  mmengine Runner; the failure is a file object whose ``write`` stops part-way with ENOSPC,
  as on a full disk.
* The killed run, resume and determinism checks run ``tools/train.py`` as a user does, on
  the mini COCO set with RetinaNet (a 1-block-per-stage, narrow PoolFormer, no pretrained
  weights, 192x128 images) and compare the losses in mmengine's ``scalars.json`` logs.
* GroupNorm statistics under autocast. ``tools/train.py --amp`` runs (every loss and weight
  finite) are the RetinaNet and Semantic FPN runs of tests/tools/test_train_test_*.py.
"""
import builtins
import errno
import glob
import hashlib
import json
import os
import os.path as osp
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest
import torch
import torch.nn.functional as F
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.runner import Runner
from torch.utils._python_dispatch import TorchDispatchMode

import metaformer_mm  # noqa: F401  (registers SafeCheckpointHook)
from metaformer_mm.checkpoint import read_checkpoint
from metaformer_mm.engine import SafeCheckpointHook
from metaformer_mm.models import PoolFormer
from tiny_runner import RandomImages, TinyClassifier



# =========================================================================== failing writes




class ImprovingScore(BaseMetric):
    """A validation score that improves at every evaluation: every validation saves a best."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def process(self, data_batch, data_samples) -> None:
        self.results.append(len(data_samples))

    def compute_metrics(self, results) -> Dict[str, float]:
        self.calls += 1
        return dict(score=float(self.calls))


class FullDisk:
    """A file object on a disk that fills up: ``room`` bytes get written, then ENOSPC."""

    def __init__(self, file, room: int) -> None:
        self._file = file
        self._room = room

    def write(self, data) -> int:
        taken = data[:self._room]
        self._file.write(taken)
        self._room -= len(taken)
        if len(taken) < len(data):
            raise OSError(errno.ENOSPC, 'No space left on device')
        return len(data)

    def __getattr__(self, name):
        return getattr(self._file, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._file.close()


def fill_disk_on(monkeypatch, name: str, nth: int = 1, room: int = 4096) -> None:
    """From the ``nth`` time on that a file whose name contains ``name`` is opened for
    writing (by whoever: mmengine, torch or us), the disk is full after ``room`` bytes."""
    real_open = builtins.open
    opened = []

    def open_on_full_disk(file, mode='r', *args, **kwargs):
        handle = real_open(file, mode, *args, **kwargs)
        if isinstance(file, (str, os.PathLike)) and name in osp.basename(os.fspath(file)) \
                and any(m in mode for m in 'wxa'):
            opened.append(file)
            if len(opened) >= nth:
                return FullDisk(handle, room)
        return handle

    monkeypatch.setattr(builtins, 'open', open_on_full_disk)


class Fingerprints(Hook):
    """Records the sha256 of each checkpoint file once it exists (before the next iteration)."""

    def __init__(self) -> None:
        self.sha = {}

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        for path in glob.glob(osp.join(runner.work_dir, '*.pth')):
            self.sha.setdefault(osp.basename(path), _sha256(path))


def _sha256(path: str) -> str:
    with open(path, 'rb') as f:
        return hashlib.sha256(f.read()).hexdigest()


def _runner(work_dir, max_iters: int = 6, hook: str = 'SafeCheckpointHook', validate=False,
            **kwargs) -> Runner:
    checkpoint = dict(type=hook, interval=2, by_epoch=False, max_keep_ckpts=1)
    val = {}
    if validate:
        checkpoint.update(save_best='score', rule='greater')
        val = dict(val_dataloader=dict(dataset=RandomImages(), batch_size=4,
                                       sampler=dict(type='DefaultSampler', shuffle=False),
                                       collate_fn=dict(type='default_collate')),
                   val_evaluator=[ImprovingScore()], val_cfg=dict())
    return Runner(
        model=TinyClassifier(), work_dir=str(work_dir),
        train_dataloader=dict(dataset=RandomImages(), batch_size=4,
                              sampler=dict(type='InfiniteSampler', shuffle=True),
                              collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters, val_interval=2),
        default_hooks=dict(checkpoint=checkpoint, logger=dict(type='LoggerHook', interval=1)),
        randomness=dict(seed=0), **val, **kwargs)


def _leftovers(work_dir) -> List[str]:
    """Temporary or partial files a failed write may leave in the work dir."""
    return [f for f in os.listdir(work_dir) if f.endswith('.tmp') or '.tmp' in f]


def _last_checkpoint(work_dir) -> str:
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def test_config_name_builds_the_safe_hook(tmp_path):
    """``type='SafeCheckpointHook'`` resolves from the configs' mmdet and mmseg scopes."""
    from mmengine.registry import init_default_scope
    for scope in ('mmdet', 'mmseg'):
        init_default_scope(scope)
        runner = _runner(tmp_path / scope)
        hooks = [h for h in runner.hooks if isinstance(h, SafeCheckpointHook)]
        assert len(hooks) == 1, runner.hooks


def test_failed_checkpoint_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    fingerprints = Fingerprints()
    fill_disk_on(monkeypatch, 'iter_4.pth')
    with pytest.raises(OSError, match='No space left on device'):
        _runner(tmp_path, custom_hooks=[fingerprints]).train()
    monkeypatch.undo()

    # The previous checkpoint (max_keep_ckpts=1 would have deleted it) is there, unchanged,
    # complete; --resume's pointer still names it; nothing partial is left behind.
    previous = tmp_path / 'iter_2.pth'
    assert previous.is_file() and _sha256(str(previous)) == fingerprints.sha['iter_2.pth']
    assert read_checkpoint(str(previous))['meta']['iter'] == 2
    assert not (tmp_path / 'iter_4.pth').exists()
    assert _leftovers(tmp_path) == []
    assert _last_checkpoint(tmp_path) == str(previous)

    resumed = _runner(tmp_path, resume=True)
    resumed.train()
    assert resumed.iter == 6
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith('.pth')) == ['iter_6.pth']
    assert _last_checkpoint(tmp_path) == str(tmp_path / 'iter_6.pth')


def test_failed_last_checkpoint_write_keeps_a_loadable_pointer(tmp_path, monkeypatch):
    fill_disk_on(monkeypatch, 'last_checkpoint', nth=2, room=3)
    with pytest.raises(OSError, match='No space left on device'):
        _runner(tmp_path).train()
    monkeypatch.undo()
    # The pointer is the old one, whole, and the checkpoint it names was not pruned.
    assert _last_checkpoint(tmp_path) == str(tmp_path / 'iter_2.pth')
    assert read_checkpoint(str(tmp_path / 'iter_2.pth'))['meta']['iter'] == 2
    assert read_checkpoint(str(tmp_path / 'iter_4.pth'))['meta']['iter'] == 4
    assert _leftovers(tmp_path) == []


def test_failed_best_checkpoint_write_keeps_previous_best(tmp_path, monkeypatch):
    fingerprints = Fingerprints()
    fill_disk_on(monkeypatch, 'best_score_iter_4')
    with pytest.raises(OSError, match='No space left on device'):
        _runner(tmp_path, validate=True, custom_hooks=[fingerprints]).train()
    monkeypatch.undo()
    best = tmp_path / 'best_score_iter_2.pth'
    assert best.is_file() and _sha256(str(best)) == fingerprints.sha[best.name]
    assert read_checkpoint(str(best))['meta']['iter'] == 2
    assert not (tmp_path / 'best_score_iter_4.pth').exists()
    assert _leftovers(tmp_path) == []


# =========================================================================== tools/train.py runs
SMALL_RETINANET = '''
_base_ = [{config!r}]
data_root = {data_root!r}
model = dict(
    backbone=dict(arch=dict(_delete_=True, base='poolformer_s12', depths=[1, 1, 1, 1],
                            dims=[8, 16, 24, 32]), init_cfg=None),
    neck=dict(in_channels=[16, 24, 32]))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(192, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
train_dataloader = dict(
    batch_size=2, num_workers=0, persistent_workers=False,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters={iters})
val_dataloader = None
val_cfg = None
val_evaluator = None
param_scheduler = [dict(type='LinearLR', start_factor=0.1, by_epoch=False, begin=0, end=3)]
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook', by_epoch=False, interval=2),
                     logger=dict(interval=1))
log_processor = dict(by_epoch=False)
'''
ITERS = 8
DETERMINISTIC = ['randomness.seed=0', 'randomness.deterministic=True']


def _tool(repo_root: str, name: str) -> str:
    path = osp.join(repo_root, 'tools', name)
    if not osp.isfile(path):
        pytest.fail(f'{path} is missing')
    return path


SUPPORT = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), 'support')


def _start(args: List[str], log: str, threads: int = 1) -> subprocess.Popen:
    """Starts a tool; 1 thread each so that two runs share the 2 cores without contention.
    tests/support is on its PYTHONPATH (``custom_imports`` of the kill hook)."""
    path = os.pathsep.join(p for p in (SUPPORT, os.environ.get('PYTHONPATH')) if p)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS='ignore',
               PYTHONPATH=path)
    with open(log, 'w') as out:
        return subprocess.Popen([sys.executable, *args], stdout=out, stderr=subprocess.STDOUT,
                                env=env)


def _finish(proc: subprocess.Popen, log: str, timeout: float = 600) -> None:
    proc.wait(timeout=timeout)
    with open(log) as f:
        text = f.read()
    assert proc.returncode == 0, f'{proc.args} failed ({proc.returncode}):\n{text[-5000:]}'


def _runs(work_dir: str) -> List[List[Dict]]:
    """The scalars.json records of each run in ``work_dir``, oldest run first."""
    runs = []
    for path in sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))):
        with open(path) as f:
            runs.append([json.loads(line) for line in f if line.strip()])
    return runs


def _losses(records: List[Dict]) -> Dict[int, Dict[str, float]]:
    return {r['iter']: {k: v for k, v in r.items() if 'loss' in k}
            for r in records if 'loss' in r}


@pytest.fixture(scope='module')
def small_retinanet(repo_root, data_dir, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp('cfg') / 'retinanet_tiny.py'
    path.write_text(SMALL_RETINANET.format(
        config=osp.join(repo_root, 'configs', 'detection', 'retinanet_poolformer_s12.py'),
        data_root=osp.join(data_dir, 'coco_mini') + '/', iters=ITERS))
    return str(path)


@pytest.fixture(scope='module')
def killed_and_resumed(repo_root, small_retinanet, tmp_path_factory):
    """Run A trains 8 iterations; run B, the same, SIGKILLs itself right after its second
    checkpoint (iteration 4) is complete (``KillAtIteration``), then is resumed with
    ``--resume`` from the plain config; run C uses another seed.

    Returns the work dirs of A, B and C.
    """
    root = tmp_path_factory.mktemp('runs')
    train = _tool(repo_root, 'train.py')
    killed = root / 'retinanet_tiny_killed_at_4.py'
    killed.write_text(
        f'_base_ = [{small_retinanet!r}]\n'
        "custom_imports = dict(imports=['metaformer_mm', 'kill_at_iteration'],\n"
        '                      allow_failed_imports=False)\n'
        "custom_hooks = [dict(type='KillAtIteration', at=4)]\n")
    a, b, c = (str(root / name) for name in 'abc')
    args = lambda work, *more: [train, small_retinanet, '--work-dir', work,  # noqa: E731
                                '--cfg-options', *more]
    started = []

    def start(*args_, **kwargs):
        started.append(_start(*args_, **kwargs))
        return started[-1]

    try:
        run_a = start(args(a, *DETERMINISTIC), f'{a}.log')
        run_b = start([train, str(killed), '--work-dir', b, '--cfg-options', *DETERMINISTIC],
                      f'{b}.log')
        run_b.wait(timeout=600)
        assert run_b.returncode == -signal.SIGKILL, Path(f'{b}.log').read_text()[-5000:]
        assert Path(b, 'last_checkpoint').read_text().endswith('iter_4.pth')
        assert not osp.exists(osp.join(b, 'iter_6.pth')), 'run B went on past the kill'

        resume = start([train, small_retinanet, '--work-dir', b, '--resume',
                        '--cfg-options', *DETERMINISTIC], f'{b}.resume.log')
        run_c = start(args(c, 'randomness.seed=1', 'randomness.deterministic=True',
                           'train_cfg.max_iters=2'), f'{c}.log')
        _finish(run_a, f'{a}.log')
        _finish(resume, f'{b}.resume.log')
        _finish(run_c, f'{c}.log')
    finally:  # a failed assertion must not leave training runs behind
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return a, b, c


@pytest.mark.slow
def test_killed_run_resumes_with_identical_losses(killed_and_resumed):
    a, b, _ = killed_and_resumed
    (full,) = _runs(a)
    _, resumed = _runs(b)  # the killed run, then the resumed one
    with open(f'{b}.resume.log') as f:
        log = f.read()
    assert 'resumed epoch: 0, iter: 4' in log, log[-3000:]
    assert osp.join(b, 'iter_4.pth') in log  # --resume without a value: the latest checkpoint
    assert sorted(_losses(resumed)) == list(range(5, ITERS + 1))
    expected = _losses(full)
    for it, losses in _losses(resumed).items():
        assert losses == expected[it], (it, losses, expected[it])
    assert read_checkpoint(osp.join(b, f'iter_{ITERS}.pth'))['meta']['iter'] == ITERS


@pytest.mark.slow
def test_same_seed_deterministic_runs_give_identical_losses(killed_and_resumed):
    a, b, c = killed_and_resumed
    first, second = _losses(_runs(a)[0]), _losses(_runs(b)[0])
    assert sorted(second)[:4] == [1, 2, 3, 4]
    for it in range(1, 5):
        assert first[it] == second[it], (it, first[it], second[it])
    # Another seed (other initial weights and image order) gives other losses: the equality
    # above is not one of runs that ignore the seed.
    other = _losses(_runs(c)[0])
    assert other[1] != first[1]


# =========================================================================== mixed precision


class GroupNormInputs(TorchDispatchMode):
    """Records the dtype each GroupNorm kernel computes its statistics in."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket is torch.ops.aten.native_group_norm:
            self.dtypes.append(args[0].dtype)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize('mode', ['train', 'inference'])
@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
def test_group_norm_statistics_are_fp32_under_autocast(dtype, mode):
    """PoolFormer's GroupNorms compute their statistics in fp32 under autocast (fp16
    statistics over C*H*W elements overflow: sail-sg/poolformer issue 22), in training and in
    inference: fp16 maps are cast up; bf16 maps go to the CPU kernel, which accumulates in fp32
    itself (no casting passes), checked against float64 on a large-offset map."""
    model = PoolFormer(arch='s12').train(mode == 'train')
    x = torch.randn(1, 3, 64, 64) * 50
    with torch.set_grad_enabled(mode == 'train'), torch.autocast('cpu', dtype=dtype), \
            GroupNormInputs() as seen:
        outs = model(x)
    assert len(seen.dtypes) == 2 * 12 + 4  # two norms per block, one per output map
    assert set(seen.dtypes) <= {torch.float32, dtype if dtype == torch.bfloat16 else None}
    assert all(torch.isfinite(o).all() for o in outs)
    if dtype == torch.bfloat16:
        norm = model.stages[0].blocks[0].norm1
        z = (torch.randn(1, 64, 96, 96) * 3 + 300).bfloat16().requires_grad_(mode == 'train')
        with torch.set_grad_enabled(mode == 'train'), torch.autocast('cpu', dtype=dtype):
            out = norm(z)
        ref = F.group_norm(z.detach().double(), 1, norm.weight.double(), norm.bias.double())
        assert out.dtype == torch.bfloat16
        assert float((out.double() - ref).abs().max()) <= 4e-3 * float(ref.max() - ref.min())
