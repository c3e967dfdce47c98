"""Diverging runs and resumes: the non-finite guard, and ``--resume`` finding what is there.

* The guard runs in-process on a tiny PoolFormer classifier trained by a real mmengine Runner
  (a batch is turned to nan by a hook, as a broken image or an overflow would), and end to end
  through ``tools/train.py`` on the ``make demo`` config, with the learning rate jumping to
  1e6.
* ``--resume`` resolution runs on real checkpoint files; ``tools/train.py --resume`` on the
  shapes dataset with a 1-block-per-stage PoolFormer.
"""
import os
import os.path as osp
import shutil
import subprocess
import uuid
from typing import List

import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.runner import Runner

import metaformer_mm  # noqa: F401  (registers the hooks)
from metaformer_mm.checkpoint import read_checkpoint
from metaformer_mm.cli.checkpoints import (find_resume_checkpoint, remove_interrupted_writes,
                                           resolve_resume)
from metaformer_mm.cli.config import ToolError
from metaformer_mm.engine import NonFiniteError, NonFiniteGuardHook
from tiny_runner import RandomImages, TinyClassifier







class Poison(Hook):
    """Turns the batch of the given iterations (1-based) into nan, before the forward pass;
    records the parameters around each poisoned iteration."""

    priority = 'HIGHEST'

    def __init__(self, iters) -> None:
        self.iters = set(iters)
        self.before, self.after = {}, {}

    def before_train_iter(self, runner, batch_idx, data_batch=None) -> None:
        if runner.iter + 1 in self.iters:
            data_batch['inputs'].fill_(float('nan'))
            self.before[runner.iter + 1] = _params(runner)

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 in self.iters:
            self.after[runner.iter + 1] = _params(runner)


class BreakParams(Hook):
    """Sets a weight to inf after the given iteration's step (a step that overflowed)."""

    priority = 'HIGHEST'

    def __init__(self, at: int) -> None:
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 == self.at:
            with torch.no_grad():
                runner.model.head.weight[0, 0] = float('inf')


def _params(runner) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in runner.model.parameters()]).clone()


def _runner(work_dir, custom_hooks, max_iters: int = 6, compile_backend=None) -> Runner:
    """``compile_backend``: mmengine compiles the train step (``compile=dict(backend=...)``)."""
    return Runner(
        model=TinyClassifier(loss_name='loss_ce'), work_dir=str(work_dir),
        train_dataloader=dict(dataset=RandomImages(), batch_size=4,
                              sampler=dict(type='InfiniteSampler', shuffle=True),
                              collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.05)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type='SafeCheckpointHook', interval=2,
                                           by_epoch=False, max_keep_ckpts=1),
                           logger=dict(type='LoggerHook', interval=1)),
        custom_hooks=custom_hooks, randomness=dict(seed=0),
        # mmengine names a run (and its logger, which owns the log file) by its start second:
        # two runners started within one second would share the first one's log file.
        experiment_name=f'{osp.basename(str(work_dir))}_{uuid.uuid4().hex[:8]}',
        cfg=dict(compile=dict(backend=compile_backend)) if compile_backend else None)


def _last_checkpoint(work_dir) -> str:
    with open(osp.join(work_dir, 'last_checkpoint')) as f:
        return f.read().strip()


def _all_finite(path: str) -> bool:
    state = read_checkpoint(path)['state_dict']
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


# =========================================================================== the guard
# In a compiled train step the guard judges gradients where autograd accumulates them (see
# engine/guard.py); 'eager' is dynamo's tracing alone, the part that places the checks.
@pytest.mark.parametrize('compile_backend', [None, 'eager'])
def test_guard_stops_at_the_first_nan_and_keeps_the_last_checkpoint(tmp_path, compile_backend):
    poison = Poison([5])
    with pytest.raises(NonFiniteError) as err:
        _runner(tmp_path, [poison, dict(type='NonFiniteGuardHook')],
                compile_backend=compile_backend).train()
    message = str(err.value)
    assert 'iteration 5' in message and 'loss_ce=nan' in message
    assert 'gradient norm (nan)' in message and str(tmp_path / 'iter_4.pth') in message
    # no step with the nan gradients: the weights are those before the bad iteration
    assert torch.equal(poison.before[5], poison.after[5])
    assert _last_checkpoint(tmp_path) == str(tmp_path / 'iter_4.pth')
    assert sorted(f for f in os.listdir(tmp_path) if f.endswith('.pth')) == ['iter_4.pth']
    assert _all_finite(str(tmp_path / 'iter_4.pth'))


@pytest.mark.parametrize('compile_backend', [None, 'eager'])
def test_guard_skips_up_to_max_skips_bad_steps(tmp_path, compile_backend):
    poison = Poison([3])
    runner = _runner(tmp_path, [poison, dict(type='NonFiniteGuardHook', max_skips=1)],
                     compile_backend=compile_backend)
    runner.train()  # one bad step: skipped, training goes on
    assert runner.iter == 6
    assert torch.equal(poison.before[3], poison.after[3])
    guard = next(h for h in runner.hooks if isinstance(h, NonFiniteGuardHook))
    assert guard.skipped == 1
    assert _all_finite(str(tmp_path / 'iter_6.pth'))
    log = open(next(p for p in _logs(tmp_path))).read()
    assert 'iteration 3: non-finite loss (loss=nan, loss_ce=nan)' in log and 'skip 1 of max_skips=1' in log

    poison = Poison([3, 4])  # two bad steps: the second stops the run
    with pytest.raises(NonFiniteError, match='iteration 4 after 1 skipped steps'):
        _runner(tmp_path / 'two', [poison, dict(type='NonFiniteGuardHook', max_skips=1)],
                compile_backend=compile_backend).train()
    assert _last_checkpoint(tmp_path / 'two') == str(tmp_path / 'two' / 'iter_2.pth')


def _logs(work_dir) -> List[str]:
    return [osp.join(root, f) for root, _, files in os.walk(work_dir)
            for f in files if f.endswith('.log')]


def test_guard_stops_when_a_step_overflows_the_weights(tmp_path):
    with pytest.raises(NonFiniteError, match=r'iteration 3: 1 parameters non-finite after the '
                                             r'optimizer step \(first: head.weight\)'):
        _runner(tmp_path, [BreakParams(at=3), dict(type='NonFiniteGuardHook')]).train()
    assert _last_checkpoint(tmp_path) == str(tmp_path / 'iter_2.pth')


def test_safe_checkpoint_hook_refuses_non_finite_weights_without_the_guard(tmp_path):
    """The second line of defence: no guard (or one told not to look at the weights)."""
    for hooks in ([], [dict(type='NonFiniteGuardHook', check_params=False)]):
        work = tmp_path / str(len(hooks))
        with pytest.raises(NonFiniteError, match=r'not writing iter_4.pth: 1 model tensors are '
                                                 r'non-finite \(first: head.weight\)'):
            _runner(work, [BreakParams(at=4), *hooks]).train()
        assert _last_checkpoint(work) == str(work / 'iter_2.pth')
        assert sorted(f for f in os.listdir(work) if f.endswith('.pth')) == ['iter_2.pth']
        assert _all_finite(str(work / 'iter_2.pth'))


def test_bad_max_skips_is_refused():
    with pytest.raises(ValueError, match='max_skips must be an integer >= 0, got -1'):
        NonFiniteGuardHook(max_skips=-1)


@pytest.mark.parametrize('config', ['detection/retinanet_poolformer_s12.py',
                                    'detection/mask_rcnn_poolformer_s12.py',
                                    'segmentation/fpn_poolformer_s12.py',
                                    'detection/demo/retinanet_poolformer_s12_shapes.py',
                                    'detection/mask_rcnn_caformer_s18.py',
                                    'segmentation/fpn_smlpnet_tiny.py'])
def test_every_config_turns_the_guard_on(repo_root, config):
    cfg = Config.fromfile(osp.join(repo_root, 'configs', config))
    assert dict(type='NonFiniteGuardHook') in cfg.custom_hooks


# =========================================================================== end to end
def _tool(repo_root: str, *args) -> subprocess.CompletedProcess:
    """tools/train.py's main(ARGS) in this process: its exit status and output."""
    from in_process import run_main
    return run_main('tools/train.py', *args, cwd=repo_root)


@pytest.fixture(scope='module')
def shapes_root(tmp_path_factory) -> str:
    from metaformer_mm.datasets.shapes import make_shapes_dataset
    root = str(tmp_path_factory.mktemp('shapes') / 'data')
    make_shapes_dataset(root, num_train=16, num_val=4, image_size=96, progress=False)
    return root + '/'


DEMO_RUN = '''
_base_ = [{config!r}]
data_root = {data_root!r}
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root))
val_dataloader = None
val_cfg = None
val_evaluator = None
train_cfg = dict(max_iters={iters})
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval={interval}))
'''


def _demo_config(repo_root, data_root, path, iters, interval, extra='') -> str:
    with open(path, 'w') as f:
        f.write(DEMO_RUN.format(config=osp.join(repo_root, 'configs', 'detection', 'demo',
                                                'retinanet_poolformer_s12_shapes.py'),
                                data_root=data_root, iters=iters, interval=interval) + extra)
    return str(path)


@pytest.mark.slow
def test_lr_jump_to_1e6_stops_the_demo_run_and_keeps_a_finite_checkpoint(repo_root, shapes_root,
                                                                        tmp_path):
    """A diverging run: the lr x1e9 at iteration 4, a checkpoint every 3 iterations, one kept
    (the demo config's max_keep_ckpts=1)."""
    config = _demo_config(repo_root, shapes_root, tmp_path / 'nan.py', iters=12, interval=3,
                          extra="param_scheduler = [dict(type='MultiStepLR', by_epoch=False, "
                                "milestones=[4], gamma=1e9)]\n")
    work = tmp_path / 'work'
    proc = _tool(repo_root, config, '--work-dir', work)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
    assert len(errors) == 1 and 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert 'training stopped at iteration' in errors[0] and 'loss_cls=nan' in errors[0]
    last = _last_checkpoint(work)
    assert osp.isfile(last) and _all_finite(last)
    assert last in errors[0]
    assert [f for f in os.listdir(work) if f.endswith('.pth')] == [osp.basename(last)]


TINY_DEMO = '''
model = dict(backbone=dict(arch=dict(_delete_=True, base='poolformer_s12', depths=[1, 1, 1, 1],
                                     dims=[8, 16, 24, 32])),
             neck=dict(in_channels=[16, 24, 32]))
'''


@pytest.mark.slow
def test_resume_falls_back_to_what_is_in_a_moved_work_dir(repo_root, shapes_root, tmp_path):
    config = _demo_config(repo_root, shapes_root, tmp_path / 'tiny.py', iters=2, interval=2,
                          extra=TINY_DEMO)
    first = tmp_path / 'first'
    # --resume with nothing to resume from: one plain error, no training from scratch
    proc = _tool(repo_root, config, '--work-dir', first, '--resume')
    assert proc.returncode != 0 and 'Traceback' not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f'error: --resume: no checkpoint to resume from in {first} ')
    assert not osp.exists(first / 'iter_2.pth')
    # --resume auto: trains from scratch when there is nothing, and says so
    proc = _tool(repo_root, config, '--work-dir', first, '--resume', 'auto')
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'no checkpoint to resume from' in proc.stdout + proc.stderr
    assert _last_checkpoint(first) == str(first / 'iter_2.pth')

    moved = tmp_path / 'moved'
    shutil.move(str(first), str(moved))  # last_checkpoint still names first/iter_2.pth
    leftover = moved / '.iter_4.pth.0123abcd.tmp'  # an interrupted write
    leftover.write_bytes(b'partial')
    proc = _tool(repo_root, config, '--work-dir', moved, '--resume',
                 '--cfg-options', 'train_cfg.max_iters=3')
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert f'names {first}/iter_2.pth, which does not exist' in out
    assert f'resuming from the newest complete checkpoint found, {moved}/iter_2.pth' in out
    assert 'resumed epoch: 0, iter: 2' in out
    assert 'temporary file(s) of an interrupted checkpoint write' in out
    assert not leftover.exists()
    assert read_checkpoint(str(moved / 'iter_3.pth'))['meta']['iter'] == 3


# =========================================================================== --resume resolution
def _save(path, it: int) -> str:
    torch.save(dict(meta=dict(iter=it), state_dict=dict(w=torch.zeros(2))), str(path))
    return str(path)


def _cfg(work_dir) -> Config:
    return Config(dict(work_dir=str(work_dir)))


def test_resume_uses_last_checkpoint_when_it_is_there(tmp_path):
    _save(tmp_path / 'iter_2.pth', 2)
    target = _save(tmp_path / 'iter_4.pth', 4)
    _save(tmp_path / 'iter_6.pth', 6)
    (tmp_path / 'last_checkpoint').write_text(target)
    cfg = _cfg(tmp_path)
    resolve_resume(cfg, 'latest')
    assert (cfg.resume, cfg.load_from) == (True, target)


@pytest.mark.parametrize('pointer', ['missing', 'empty', 'deleted', 'truncated'])
def test_resume_falls_back_to_the_newest_complete_checkpoint(tmp_path, pointer):
    _save(tmp_path / 'iter_2.pth', 2)
    newest = _save(tmp_path / 'iter_10.pth', 10)  # 10 > 4 > 2 by number, not by name
    _save(tmp_path / 'iter_4.pth', 4)
    if pointer == 'empty':
        (tmp_path / 'last_checkpoint').write_text('')
    elif pointer == 'deleted':
        (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_12.pth'))
    elif pointer == 'truncated':
        data = (tmp_path / 'iter_10.pth').read_bytes()
        (tmp_path / 'iter_12.pth').write_bytes(data[:len(data) // 2])
        (tmp_path / 'last_checkpoint').write_text(str(tmp_path / 'iter_12.pth'))
    path, state = find_resume_checkpoint(str(tmp_path))
    assert path == newest
    assert {'missing': 'does not exist', 'empty': 'is empty', 'deleted': 'which does not exist',
            'truncated': 'which is incomplete'}[pointer] in state


def test_resume_skips_incomplete_checkpoints(tmp_path):
    good = _save(tmp_path / 'iter_2.pth', 2)
    data = (tmp_path / 'iter_2.pth').read_bytes()
    (tmp_path / 'iter_4.pth').write_bytes(data[:100])
    assert find_resume_checkpoint(str(tmp_path))[0] == good


def test_resume_without_any_checkpoint(tmp_path):
    with pytest.raises(ToolError, match=r'--resume: no checkpoint to resume from in .* does not '
                                        r'exist.*--resume auto'):
        resolve_resume(_cfg(tmp_path), 'latest')
    cfg = _cfg(tmp_path)
    resolve_resume(cfg, 'auto')
    assert (cfg.resume, cfg.load_from) == (False, None)
    with pytest.raises(ToolError, match=r'--resume: checkpoint not found: .*nope.pth'):
        resolve_resume(_cfg(tmp_path), str(tmp_path / 'nope.pth'))


def test_interrupted_writes_are_removed_and_nothing_else(tmp_path):
    keep = ['iter_2.pth', 'last_checkpoint', '.hidden', 'notes.tmp', '.iter_2.pth.xyz.tmp']
    drop = ['.iter_4.pth.0a1b2c3d.tmp', '.last_checkpoint.deadbeef.tmp']
    for name in keep + drop:
        (tmp_path / name).write_bytes(b'x')
    removed = remove_interrupted_writes(str(tmp_path))
    assert sorted(map(osp.basename, removed)) == sorted(drop)
    assert sorted(os.listdir(tmp_path)) == sorted(keep)
