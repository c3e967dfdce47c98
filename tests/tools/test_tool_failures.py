"""The tools' own failures: one ``error:`` line and a non-zero exit, nothing lost.

Two ``tools/train.py`` runs into one work dir, a killed one, a read-only work dir, a full
disk; bad arguments of ``tools/train.py``, ``tools/convert_checkpoint.py``,
``tools/deploy/export_onnx.py`` and ``demo/image_demo.py``. Every tool runs as the command a
user types, on the shapes dataset with a 1-block-per-stage PoolFormer and a narrow head.
"""
import contextlib
import logging
import os
import os.path as osp
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
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


def tool_main(relpath: str, *args) -> subprocess.CompletedProcess:
    """The script's main(ARGS) in this process (its exit status and output), for what is not
    about the process itself."""
    from in_process import run_main
    return run_main(relpath, *args)


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


# =========================================================================== where runs write
@contextlib.contextmanager
def read_only_dir(path: str):
    """A directory no one can write in: mode 0555, or for root (whom modes do not stop) a
    read-only tmpfs mounted there; skipped where neither is possible."""
    os.makedirs(path)
    if os.geteuid() != 0:
        os.chmod(path, 0o555)
        try:
            yield path
        finally:
            os.chmod(path, 0o755)
        return
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', 'ro,size=64k', 'tmpfs', path],
                      capture_output=True).returncode:
        pytest.skip('root without the right to mount: cannot make a read-only directory')
    try:
        yield path
    finally:
        subprocess.run(['umount', path], check=True)


def test_read_only_work_dir_is_one_error(tmp_path, shapes):
    config = tiny_config(tmp_path, shapes)
    with read_only_dir(str(tmp_path / 'ro')) as ro:
        for args in (['tools/train.py', config], ['tools/test.py', config, 'none.pth']):
            error = one_error(tool_main(*args, '--work-dir', ro))
            assert error.startswith(f'error: work dir {ro} is not writable ('), error
            assert 'give a writable --work-dir' in error
            error = one_error(tool_main(*args, '--work-dir', osp.join(ro, 'sub')))
            assert error.startswith(f'error: work dir {ro}/sub is not writable (')


# Written through a wrapper: file writes past LIMIT bytes fail with EFBIG (SIGXFSZ ignored, so
# the write returns the error instead of killing the process), as on a full disk.
FSIZE_WRAPPER = '''
import resource, runpy, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
limit = int(sys.argv.pop(1))
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
'''


@contextlib.contextmanager
def small_disk(path: str, size_kb: int):
    """``path`` on a ``size_kb`` tmpfs when this process may mount one (a real ENOSPC);
    otherwise a plain directory and a command prefix that caps file sizes (EFBIG)."""
    os.makedirs(path)
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size_kb}k', 'tmpfs', path],
                             capture_output=True).returncode == 0
    try:
        yield [] if mounted else ['-c', FSIZE_WRAPPER, str(size_kb * 1024 // 3)]
    finally:
        if mounted:
            subprocess.run(['umount', path], check=True)


def test_full_disk_stops_training_with_one_error_and_keeps_the_checkpoint(tmp_path, shapes):
    """One iteration and its checkpoint (0.8 MB) fit; the second checkpoint does not."""
    config = tiny_config(tmp_path, shapes, iters=1)
    with small_disk(str(tmp_path / 'disk'), size_kb=1500) as prefix:
        work_dir = str(tmp_path / 'disk' / 'w')
        first = tool_main('tools/train.py', config, '--work-dir', work_dir)
        assert first.returncode == 0, first.stderr[-3000:]
        kept = osp.join(work_dir, 'iter_1.pth')
        second = tool(*prefix, 'tools/train.py', config, '--work-dir', work_dir, '--resume',
                      '--cfg-options', 'train_cfg.max_iters=2')
        error = one_error(second)
        assert re.fullmatch(rf'error: cannot write {work_dir}/iter_2\.pth: .* \(errno '
                            rf'(28|27)\); training stopped, the last complete checkpoint, '
                            rf'{kept}, is kept \(resume with --resume\)', error), error
        with open(osp.join(work_dir, 'last_checkpoint')) as f:
            assert f.read().strip() == kept
        assert torch.load(kept, weights_only=False)['meta']['iter'] == 1
        assert not [n for n in os.listdir(work_dir) if n.endswith('.tmp')]
        assert not osp.exists(osp.join(work_dir, 'iter_2.pth'))


# =========================================================================== bad settings
def test_bad_architecture_and_schedule_through_train_py(tmp_path, shapes):
    config = tiny_config(tmp_path, shapes)
    error = one_error(tool_main('tools/train.py', config, '--work-dir', tmp_path / 'w',
                                '--cfg-options', 'model.backbone.frozen_stages=1.5'))
    assert error == (f'error: {config}: the model does not build: ArgumentError: PoolFormer: '
                     f'frozen_stages must be in -1..4, got 1.5 (a float; an integer is needed)')
    error = one_error(tool_main('tools/train.py', config, '--work-dir', tmp_path / 'w',
                                '--cfg-options', 'model.backbone.type=PoolFormerX'))
    assert 'the model does not build: KeyError: PoolFormerX is not in the mmdet::model' in error
    error = one_error(tool_main('tools/train.py', config, '--work-dir', tmp_path / 'w',
                                '--cfg-options', 'train_cfg.max_iters=-5'))
    assert error == ('error: train_cfg.max_iters must be a positive integer, got -5 (nothing '
                     'would be trained)')


def test_amp_warns_once_on_a_cpu_without_bf16_units(monkeypatch):
    from mmengine.logging import MMLogger
    import metaformer_mm.inference.bf16 as bf16
    from metaformer_mm.cli.options import enable_amp
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        for flags, expected in (((), 1), (('avx512_bf16',), 0)):
            monkeypatch.setattr(bf16, 'cpu_bf16_flags', lambda flags=flags: flags)
            records.clear()
            cfg = Config.fromfile(DEMO)
            enable_amp(cfg, cuda=False)
            assert cfg.optim_wrapper.type == 'CPUAmpOptimWrapper'
            warned = [r for r in records if r.startswith('--amp: ')]
            assert len(warned) == expected, records
    finally:
        logger.removeHandler(handler)
    monkeypatch.undo()
    assert warned == [] and 'bfloat16 is emulated on this CPU' not in ' '.join(records)


def test_test_py_with_no_detection_at_all_is_an_error(tmp_path, shapes):
    from mmengine.registry import init_default_scope
    config = tiny_config(tmp_path, shapes)
    init_default_scope('mmdet')
    from mmdet.registry import MODELS
    checkpoint = tmp_path / 'tiny.pth'
    torch.save(dict(state_dict=MODELS.build(Config.fromfile(config).model).state_dict()),
               checkpoint)
    proc = tool_main('tools/test.py', config, checkpoint, '--work-dir', tmp_path / 'w',
                     '--cfg-options', 'model.test_cfg.score_thr=1.01')
    error = one_error(proc)
    assert error.startswith('error: the test gave no metrics (CocoMetric): the model made no '
                            'detection on the test set')
    assert 'score_thr=1.01' in error


# =========================================================================== output files
def _demo_tool(relpath: str):
    """The repo script's main(), imported once, to call in-process."""
    from in_process import script
    return script(relpath).main


def exits_with(main, *args) -> str:
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    assert info.value.code not in (0, None)
    return str(info.value.code)


@pytest.fixture(scope='module')
def backbone_file(tmp_path_factory) -> str:
    """A converted-layout backbone checkpoint of a tiny PoolFormer."""
    from metaformer_mm.models import PoolFormer
    path = str(tmp_path_factory.mktemp('ckpt') / 'tiny_backbone.pth')
    model = PoolFormer(arch=dict(base='poolformer_s12', depths=[1, 1, 1, 1],
                                 dims=[8, 16, 24, 32]), fork_feat=False, num_classes=3)
    torch.save({'state_dict': model.state_dict()}, path)
    return path


def test_convert_checkpoint_refuses_a_directory_and_a_device_and_writes_through_a_link(
        tmp_path, backbone_file):
    main = _demo_tool('tools/convert_checkpoint.py')
    folder = tmp_path / 'existing'
    folder.mkdir()
    for args in ([backbone_file, folder, '--force'], [backbone_file, folder]):
        message = exits_with(main, *args)
        assert message.startswith(f'error: DST {folder} is a directory; give a file name in '
                                  f'it'), message
    assert os.listdir(folder) == []
    message = exits_with(main, backbone_file, '/dev/null', '--force')
    assert message == ('error: DST /dev/null is not a regular file (a device, pipe or socket); '
                       'give the path of a file to write')
    assert osp.exists('/dev/null') and not osp.isfile('/dev/null')  # still the device
    link_to_device = tmp_path / 'null.pth'
    link_to_device.symlink_to('/dev/null')
    assert 'is not a regular file' in exits_with(main, backbone_file, link_to_device, '--force')
    # a link to a file: written through, the link kept
    target = tmp_path / 'real.pth'
    target.write_bytes(b'old')
    link = tmp_path / 'link.pth'
    link.symlink_to(target)
    assert 'exists; give --force' in exits_with(main, backbone_file, link)
    main([backbone_file, str(link), '--force'])
    assert link.is_symlink() and osp.realpath(link) == str(target)
    assert 'state_dict' in torch.load(str(target), weights_only=True)
    same = tmp_path / 'same.pth'
    same.symlink_to(backbone_file)
    assert exits_with(main, backbone_file, same, '--force') == \
        'error: SRC and DST are the same file'
    # through the command line: one line, no traceback
    proc = tool('tools/convert_checkpoint.py', backbone_file, folder, '--force', timeout=120)
    assert one_error(proc).startswith(f'error: DST {folder} is a directory')


def test_export_onnx_bad_checkpoint_shape_and_out(tmp_path, backbone_file):
    main = _demo_tool('tools/deploy/export_onnx.py')
    config = osp.join(ROOT, 'configs', 'detection', 'retinanet_poolformer_s12.py')
    listed = tmp_path / 'list.pth'
    torch.save([torch.zeros(1)], str(listed))
    out = tmp_path / 'x.onnx'
    message = exits_with(main, config, listed, '--shape', 64, 64, '--out', out)
    assert message.startswith('error: ') and str(listed) in message, message
    for shape in ((0, 0), (-1, 64), (31, 64)):
        message = exits_with(main, config, '--shape', *shape, '--out', out)
        assert message == (f'error: --shape {shape[0]} {shape[1]}: height and width must be at '
                           f'least 32 (one token in the last stage); the export takes any size '
                           f'from there')
    message = exits_with(main, config, '--shape', 64, 64, '--out', tmp_path)
    assert message.startswith(f'error: --out {tmp_path} is a directory')
    (tmp_path / 'file').write_text('x')
    message = exits_with(main, config, '--shape', 64, 64, '--out', tmp_path / 'file' / 'x.onnx')
    assert message.startswith(f'error: --out {tmp_path}/file/x.onnx: cannot write in '
                              f'{tmp_path}/file (')
    with read_only_dir(str(tmp_path / 'ro')) as ro:
        message = exits_with(main, config, '--shape', 64, 64, '--out', osp.join(ro, 'x.onnx'))
        assert message.startswith(f'error: --out {ro}/x.onnx: cannot write in {ro} (')
    assert not out.exists()


def test_image_demo_checks_its_options_before_inference(tmp_path, data_dir):
    main = _demo_tool('demo/image_demo.py')
    image = osp.join(data_dir, 'demo', 'demo.jpg')
    # a checkpoint that is no checkpoint: every refusal below comes before it is read
    checkpoint = tmp_path / 'never_read.pth'
    checkpoint.write_bytes(b'not read')
    config = osp.join(ROOT, 'configs', 'detection', 'retinanet_poolformer_s12.py')
    message = exits_with(main, image, config, checkpoint, '--out-file', tmp_path / 'x.unknownext')
    assert message == (f"error: --out-file {tmp_path}/x.unknownext: no image format for the "
                       f"extension '.unknownext'; use .jpg or .png")
    for value in ('nan', '-0.1', '1.5', 'inf'):
        message = exits_with(main, image, config, checkpoint, '--score-thr', value)
        assert message == f'error: --score-thr must be in [0, 1], got {float(value)}'
    assert exits_with(main, image, config, checkpoint, '--device', 'gpu0') == \
        'error: --device gpu0: not a device name (e.g. cpu, cuda, cuda:0)'
    if not torch.cuda.is_available():
        assert exits_with(main, image, config, checkpoint, '--device', 'cuda:0').startswith(
            'error: --device cuda:0: CUDA is not available on this machine')
    assert exits_with(main, image, config, checkpoint, '--out-file', tmp_path).startswith(
        f'error: --out-file {tmp_path} is a directory')
    assert not list(tmp_path.glob('*.jpg')) and not list(tmp_path.glob('x.*'))
    proc = tool('demo/image_demo.py', image, config, checkpoint, '--out-file', 'x.unknownext',
                timeout=120)
    assert one_error(proc).startswith('error: --out-file x.unknownext: no image format')
