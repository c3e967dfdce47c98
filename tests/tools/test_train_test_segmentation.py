"""tools/train.py and tools/test.py on the Semantic FPN S12 config, on CPU with ADE20K images.

The runs use a small derived config: ``_base_`` is configs/segmentation/fpn_poolformer_s12.py,
pointed at the 3-image ADE20K sample, with 128-pixel crops, 4 iterations and no ImageNet
weights. Everything else (model, optimizer, schedule type, SyncBN head, evaluator) is the
recipe's own. The single-process run trains with ``--amp``; the 2-process one in float32.
"""
import json
import math
import os
import os.path as osp
import pickle
import socket
import subprocess
import sys
from typing import Dict, List

import pytest
import torch

MAX_ITERS = 4
LR = 2e-4



@pytest.fixture(scope='module')
def small_config(ade_mini_run, tmp_path_factory) -> str:
    return ade_mini_run(tmp_path_factory.mktemp('seg_cfg'), 'fpn_poolformer_s12', MAX_ITERS)


def _tool(repo_root: str, name: str) -> str:
    path = osp.join(repo_root, 'tools', name)
    if not osp.isfile(path):
        pytest.fail(f'{path} is missing')
    return path


def _run(repo_root: str, args: List[str], cwd: str, **env: str) -> subprocess.CompletedProcess:
    """Runs a tool (``python TOOL ...``, or a shell script) and asserts it succeeded."""
    # PYTHONFAULTHANDLER: a crash of a tool (a signal) shows its Python stack in the output.
    env = dict(os.environ, **{'OMP_NUM_THREADS': '2', 'PYTHONWARNINGS': 'ignore',
                              'PYTHONFAULTHANDLER': '1', **env})
    command = ['bash', *args] if args[0].endswith('.sh') else [sys.executable, *args]
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, (
        f'{" ".join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n'
        f'{result.stderr[-5000:]}')
    return result


def _scalars(work_dir: str) -> List[Dict]:
    """The records of the (single) run in ``work_dir``: mmengine's vis_data/scalars.json."""
    runs = sorted(d for d in os.listdir(work_dir)
                  if osp.isfile(osp.join(work_dir, d, 'vis_data', 'scalars.json')))
    assert runs, f'no run logged in {work_dir}: {os.listdir(work_dir)}'
    with open(osp.join(work_dir, runs[-1], 'vis_data', 'scalars.json')) as f:
        return [json.loads(line) for line in f if line.strip()]


def _test_metrics(work_dir: str) -> Dict:
    """The metrics of ``runner.test()``, from the json the LoggerHook writes after testing."""
    runs = sorted(d for d in os.listdir(work_dir) if osp.isfile(osp.join(work_dir, d, f'{d}.json')))
    assert runs, f'no test metrics in {work_dir}: {os.listdir(work_dir)}'
    with open(osp.join(work_dir, runs[-1], f'{runs[-1]}.json')) as f:
        return json.load(f)


def test_runner_reverts_syncbn_when_not_distributed(small_config, tmp_path):
    """The head's SyncBN (kept for multi-GPU runs) becomes BN in a single-process run."""
    import torch.nn as nn
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmengine.runner import Runner
    from mmseg.registry import MODELS
    cfg = Config.fromfile(small_config)
    cfg.work_dir = str(tmp_path)
    init_default_scope('mmseg')
    built = MODELS.build(cfg.model)
    assert any(isinstance(m, nn.SyncBatchNorm) for m in built.modules())
    runner = Runner.from_cfg(cfg)
    norms = [m for m in runner.model.decode_head.modules() if isinstance(m, nn.BatchNorm2d)
             or type(m).__name__ == '_BatchNormXd']
    # One per ConvModule of the scale heads at strides 4, 8, 16, 32: 1 + 1 + 2 + 3.
    assert len(norms) == 7
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in runner.model.modules())


@pytest.mark.slow
def test_amp_train_then_test_report_the_same_miou(repo_root, small_config, tmp_path):
    """``tools/train.py --amp`` (bfloat16 on CPU): the schedule, finite losses and float32
    weights, one validation; ``tools/test.py --out --show-dir`` on the checkpoint it wrote."""
    work_dir = tmp_path / 'train'
    _run(repo_root, [_tool(repo_root, 'train.py'), small_config, '--amp',
                     '--work-dir', str(work_dir)], cwd=str(tmp_path))
    checkpoint = work_dir / f'iter_{MAX_ITERS}.pth'
    assert checkpoint.is_file()
    assert (work_dir / 'last_checkpoint').read_text().strip() == str(checkpoint)
    dumped = (work_dir / osp.basename(small_config)).read_text()
    assert "type='CPUAmpOptimWrapper'" in dumped and "dtype='bfloat16'" in dumped
    state = torch.load(checkpoint, map_location='cpu', weights_only=False)['state_dict']
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    # the weights are float32 masters: autocast only lowers the compute precision
    assert state['backbone.stem.conv.weight'].dtype == torch.float32

    records = _scalars(str(work_dir))
    train = [r for r in records if 'loss' in r]
    assert [r['iter'] for r in train] == list(range(1, MAX_ITERS + 1))
    assert all(r['loss'] == r['loss'] and 0 < r['loss'] < 20 for r in train)  # finite
    assert all(math.isfinite(r['decode.loss_ce']) for r in train)
    # AdamW at lr 2e-4 under mmengine's PolyLR (power 0.9, eta_min 0), which reaches 0 at the
    # last iteration: lr_t = 2e-4 * (1 - t / (max_iters - 1)) ** 0.9.
    lrs = [r['lr'] for r in train]
    assert lrs == pytest.approx([LR * (1 - t / (MAX_ITERS - 1)) ** 0.9
                                 for t in range(MAX_ITERS)], abs=1e-12)
    val = [r for r in records if 'mIoU' in r]
    assert len(val) == 1 and val[0]['step'] == MAX_ITERS

    test_dir, show_dir, out = tmp_path / 'test', tmp_path / 'show', tmp_path / 'preds.pkl'
    # The training split pointed nowhere: a test run must not read it.
    result = _run(repo_root, [_tool(repo_root, 'test.py'), small_config, str(checkpoint),
                              '--work-dir', str(test_dir), '--out', str(out),
                              '--show-dir', str(show_dir), '--cfg-options',
                              f'train_dataloader.dataset.data_root={tmp_path / "nowhere"}'],
                  cwd=str(tmp_path))
    metrics = _test_metrics(str(test_dir))
    assert isinstance(metrics['mIoU'], float) and 0 <= metrics['mIoU'] <= 100
    assert 'aAcc' in metrics
    assert 'mIoU' in result.stdout + result.stderr
    # The same weights and images as the validation at the end of training: the same mIoU,
    # so test.py evaluated the trained checkpoint (validation and test run in float32).
    assert metrics['mIoU'] == pytest.approx(val[0]['mIoU'])

    with open(out, 'rb') as f:
        predictions = pickle.load(f)
    shapes = {osp.basename(p['img_path']): p['pred_sem_seg']['data'].shape for p in predictions}
    assert shapes == {'ADE_val_00000001.jpg': (1, 512, 683), 'ADE_val_00000002.jpg': (1, 364, 500),
                      'ADE_val_00000003.jpg': (1, 300, 400)}
    assert all(p['pred_sem_seg']['data'].dtype.name == 'uint8' for p in predictions)
    assert all(p['pred_sem_seg']['data'].max() < 150 for p in predictions)
    assert not any('seg_logits' in p or 'gt_sem_seg' in p for p in predictions)
    assert len(list(show_dir.rglob('*.png'))) == 3
    drawn = sorted(os.listdir(show_dir / 'vis_data' / 'vis_image'))
    assert len(drawn) == 3 and all(name.startswith('test_ADE_val_') for name in drawn)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_distributed_cpu_training_turns_sync_bn_into_bn(repo_root, small_config, tmp_path):
    """Two processes on CPU (gloo). DDP refuses SyncBN on CPU ("SyncBatchNorm layers only work
    with GPU modules"), so the tools run the head's SyncBN as BN there, and say so."""
    work_dir = tmp_path / 'dist'
    result = _run(repo_root, [_tool(repo_root, 'dist_train.sh'), small_config, '2',
                              '--work-dir', str(work_dir)],
                  cwd=str(tmp_path), PYTHON=sys.executable, PORT=str(_free_port()),
                  OMP_NUM_THREADS='1')
    assert 'SyncBN layers of the config run as BN' in result.stdout + result.stderr
    assert (work_dir / f'iter_{MAX_ITERS}.pth').is_file()
    records = _scalars(str(work_dir))
    assert [r['iter'] for r in records if 'loss' in r] == list(range(1, MAX_ITERS + 1))
    assert any('mIoU' in r for r in records)
