#!/usr/bin/env python
"""Latency, images/s, peak memory and distance to the matrix-multiply limit of backbones and models.

    python tools/analysis/benchmark.py [--suite backbones|models|all] [--models NAME|CONFIG ...]
        [--config PATH ...] [--shape H W] [--batch N] [--threads T] [--repeats R] [--warmup W]

``--suite backbones`` (default) times each backbone in these ways, on one input:

* ``eager``: the model's own forward, the plain formulation of the original code (NCHW,
  GroupNorm, ``AvgPool2d - x``, 1x1 convs, separate layer-scale multiplies), and the same code
  on channels-last activations (``eager, channels-last``: ``kernels='reference'``);
* the eager kernels of ``metaformer_mm.accel`` on each GEMM library (``aten``, ``onednn``) and
  ``default``: ``model.eval()`` under ``torch.no_grad()``, what mmdet/mmseg run
  (``kernels='auto'``, which picks one of them for this CPU);
* ``deploy``: ``kernels='deploy'`` (``switch_to_deploy()``, the folded formulation);
* ``compiled`` and ``compiled, freezing`` (``--compile-models``): ``torch.compile`` of the
  model, which traces its plain forward (channels-last), without and with Inductor's
  ``freezing``; the table's note gives each one's compile time cold (empty FX graph cache) and
  warm (the same graph from the cache, as a second run of a job finds it);
* ``onnxruntime``: the deploy path exported to ONNX, run by onnxruntime (if installed);

beside mmdet's ResNet-50 and ResNet-18 backbones, and (``--train-models``) a training step
(forward and backward, ``--train-batch`` images) eager, default and with ``with_cp=True``.
``--suite models`` times whole detectors/segmentors built from configs (``predict`` mode, at
their test scale: 800x1216 for detection and 512x512 for segmentation unless ``--shape``),
eager / default / deploy for MetaFormer backbones, and the ResNet-50 configs they replace.
``--suite all`` runs both with their defaults (``make bench``).

Every row shows the median time and the spread (inter-quartile range) of ``--repeats``
timed runs after ``--warmup`` untimed ones, images/s, the peak memory of one extra run and
the ratio to the matrix-multiply limit: the model's convolution (and linear) multiply-adds
divided by the fp32 GEMM rate measured on a 2048^3 product in the same run. The cases of
one table are timed in interleaved rounds, each with one GEMM, so that a busy machine
slows all of them alike; the limit takes the best GEMM round (the machine's rate) and the
ratio the median time, so contention can only make a ratio look worse. Peak memory is the peak of the tensors PyTorch allocates during
the call (activations, gradients, workspaces; weights and input excluded), from
``torch.profiler``; for onnxruntime it is the peak resident-memory growth of one run in a
fresh process (marked ``rss``).
"""
import argparse
import contextlib
import copy
import functools
import json
import os
import os.path as osp
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Callable, Dict, List, Optional, Sequence, Tuple

warnings.filterwarnings('ignore')

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from bench_common import conv_macs, cpu_line  # noqa: E402  (this folder is on sys.path)

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEFAULT_BACKBONES = ['poolformer_s12', 'poolformer_s24', 'poolformer_m36', 'smlpnet_tiny',
                     'randformer_s12', 'resnet50', 'resnet18']
DEFAULT_CONFIGS = [
    'configs/detection/retinanet_poolformer_s12.py',
    'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
    'configs/detection/mask_rcnn_poolformer_s12.py',
    'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
    'configs/segmentation/fpn_poolformer_s12.py',
    'mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py',
]
RESNETS = {'resnet50': 50, 'resnet18': 18}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--suite', choices=['backbones', 'models', 'all'], default='backbones',
                        help='all: the backbones suite, then the models suite (make bench)')
    parser.add_argument('--models', nargs='*', default=None, metavar='NAME',
                        help='backbones (e.g. poolformer_s12 smlpnet_tiny resnet50, any preset '
                             'of metaformer_mm ARCH_SETTINGS) or, for --suite models, configs '
                             '(files or mmdet::/mmseg:: names)')
    parser.add_argument('--config', nargs='+', default=None, metavar='PATH',
                        help='benchmark these whole-model configs (implies --suite models)')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'), default=None,
                        help='input size (default 800 1216; models: 800 1216 detection, '
                             '512 512 segmentation)')
    parser.add_argument('--batch', type=int, default=1, help='images per inference call')
    parser.add_argument('--threads', type=int, default=2, help='CPU threads (torch and ORT)')
    parser.add_argument('--repeats', type=int, default=5, help='timed runs per case')
    parser.add_argument('--warmup', type=int, default=1, help='untimed runs per case first')
    parser.add_argument('--device', default='cpu', help='cpu or cuda')
    parser.add_argument('--train-models', nargs='*', default=['poolformer_s12', 'poolformer_m36'],
                        metavar='NAME',
                        help='backbones also timed in training (backbones suite); none: skip')
    parser.add_argument('--compile-models', nargs='*', default=['poolformer_s12'],
                        metavar='NAME', help='backbones also timed under torch.compile '
                                             '(backbones suite); none: skip')
    parser.add_argument('--train-batch', type=int, default=2)
    parser.add_argument('--train-repeats', type=int, default=3,
                        help='timed training steps per case (a step takes seconds)')
    parser.add_argument('--no-onnx', action='store_true', help='skip the onnxruntime rows')
    parser.add_argument('--no-memory', action='store_true', help='skip peak-memory runs')
    parser.add_argument('--json', default=None, help='also write the results to this file')
    args = parser.parse_args(argv)
    if args.suite == 'all' and (args.models is not None or args.config):
        parser.error('--suite all runs the default backbones and configs; choose '
                     '--suite backbones or --suite models to name --models/--config')
    if args.config:
        args.suite = 'models'
        args.models = list(args.config) + [m for m in (args.models or []) if osp.exists(m)]
    return args


# ============================================================================ measuring
def gemm_case(device: str, size: int = 2048) -> Tuple[Callable[[], None], float]:
    """A 2048^3 fp32 matrix product (and its FLOPs): the machine's arithmetic rate."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    out = torch.empty(size, size, device=device)
    return (lambda: torch.mm(a, b, out=out)), 2.0 * size ** 3


def _sync(device: str) -> None:
    if device.startswith('cuda'):
        torch.cuda.synchronize()


def time_interleaved(cases: Dict[str, Callable[[], object]], warmup: int, repeats: int,
                     device: str) -> Dict[str, List[float]]:
    """Seconds of each case's runs, timed round-robin (one run of every case per round)."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times: Dict[str, List[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return times


@contextlib.contextmanager
def _quiet_stderr():
    """Silences file descriptor 2 (the profiler's C++ start/stop lines) while it lasts."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(os.devnull, 'w') as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory(fn: Callable[[], object], device: str) -> Optional[int]:
    """Peak bytes of tensors allocated during ``fn()`` above what was allocated before it."""
    if device.startswith('cuda'):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile
    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU],
                                  profile_memory=True) as prof:
        fn()
    try:
        events = prof.profiler.kineto_results.events()
    except AttributeError:  # a torch whose profiler hides its raw events
        return None
    deltas = sorted((e.start_ns(), e.nbytes()) for e in events if e.name() == '[memory]')
    current = peak = 0
    for _, nbytes in deltas:
        current += nbytes
        peak = max(peak, current)
    return peak


_ORT_RSS = r'''
import sys, numpy as np, onnxruntime as ort
def status(key):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
opts = ort.SessionOptions()
opts.intra_op_num_threads = int(sys.argv[2]); opts.inter_op_num_threads = 1
opts.add_session_config_entry('session.intra_op.allow_spinning', '0')
s = ort.InferenceSession(sys.argv[1], opts, providers=['CPUExecutionProvider'])
x = np.random.randn(*map(int, sys.argv[3:7])).astype(np.float32)
base = status('VmRSS:')
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')  # resets the peak (VmHWM) to the current resident size
s.run(None, {'input': x})
print(status('VmHWM:') - base)
'''


def ort_peak_rss(path: str, threads: int, shape: Sequence[int]) -> Optional[int]:
    """Peak resident-memory growth of one onnxruntime run, in a fresh process."""
    try:
        out = subprocess.run([sys.executable, '-c', _ORT_RSS, path, str(threads),
                              *map(str, shape)], capture_output=True, text=True, timeout=600)
        return int(out.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError, OSError, subprocess.SubprocessError):
        return None


def summarize(seconds: List[float]) -> Dict[str, float]:
    ordered = sorted(seconds)
    q = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else [ordered[0]] * 3
    return dict(median=statistics.median(ordered), iqr=q[2] - q[0], min=ordered[0],
                max=ordered[-1])


# ============================================================================ building
def build_backbone(name: str) -> nn.Module:
    """A backbone by name: a metaformer_mm preset (``poolformer_s12``) or ``resnet50/18``."""
    import metaformer_mm  # noqa: F401
    from metaformer_mm.models import ARCH_SETTINGS, MetaFormer, SMLPNet
    if name in RESNETS:
        from mmdet.models.backbones import ResNet
        return ResNet(depth=RESNETS[name])
    if name.startswith('smlpnet_'):
        model = SMLPNet(arch=name)
    elif name in ARCH_SETTINGS:
        model = MetaFormer(arch=name)
    else:
        raise SystemExit(f'unknown backbone {name!r}; use one of {DEFAULT_BACKBONES} or a '
                         f'preset of metaformer_mm ARCH_SETTINGS: {sorted(ARCH_SETTINGS)}')
    model.init_weights()
    return model


def build_whole_model(path: str) -> Tuple[nn.Module, str]:
    """A detector/segmentor from a config file or ``mmdet::``/``mmseg::`` name, random
    weights, in eval mode; and its scope."""
    from metaformer_mm.cli.models import build_model_from_config
    if '::' not in path and not osp.exists(path):
        path = osp.join(REPO, path)
    try:
        model = build_model_from_config(path)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(str(err))
    return model, model.cfg.default_scope


def data_samples(scope: str, shape: Tuple[int, int], batch: int) -> list:
    meta = dict(img_shape=shape, ori_shape=shape, pad_shape=shape, batch_input_shape=shape,
                scale_factor=(1.0, 1.0))
    if scope == 'mmseg':
        from mmseg.structures import SegDataSample as Sample
    else:
        from mmdet.structures import DetDataSample as Sample
    return [Sample(metainfo=meta) for _ in range(batch)]


def run_with(model: nn.Module, kernels: str, *args, **kwargs):
    """``model(*args, **kwargs)`` with its MetaFormer backbone(s) on ``kernels``."""
    from metaformer_mm.accel import use_kernels
    with use_kernels(model, kernels):
        return model(*args, **kwargs)


def is_metaformer(module: nn.Module) -> bool:
    from metaformer_mm.models import MetaFormer
    return isinstance(module, MetaFormer)


# ============================================================================ suites
class Table:
    """Rows of one benchmark table, printed as Markdown."""

    def __init__(self, title: str, limit_s: Optional[float], note: str = '') -> None:
        self.title, self.limit, self.note = title, limit_s, note
        self.rows: List[Dict] = []

    def add(self, name: str, stats: Dict[str, float], batch: int, memory: Optional[int],
            memory_kind: str = '', baseline: Optional[str] = None,
            memory_baseline: Optional[str] = None) -> Dict:
        """Adds a row; speed-up against ``baseline``'s median, memory against
        ``memory_baseline``'s peak (default: ``baseline``)."""
        row = dict(name=name, batch=batch, memory=memory, memory_kind=memory_kind, **stats)
        row['x_limit'] = stats['median'] / self.limit if self.limit else None
        base = next((r for r in self.rows if r['name'] == baseline), None)
        row['speedup'] = base['median'] / stats['median'] if base else None
        mem_base = next((r for r in self.rows if r['name'] == (memory_baseline or baseline)),
                        None)
        if mem_base and mem_base['memory'] and memory is not None and not memory_kind:
            row['memory_ratio'] = memory / mem_base['memory']
            row['memory_vs'] = mem_base['name']
        self.rows.append(row)
        return row

    def render(self) -> str:
        lines = [f'### {self.title}', '']
        if self.note:
            lines += [self.note, '']
        lines += ['| case | median ms | IQR ms | min ms | images/s | peak MB | x limit | '
                  'speed-up |', '|---|---:|---:|---:|---:|---:|---:|---:|']
        for r in self.rows:
            mem = '-' if r['memory'] is None else f"{r['memory'] / 2 ** 20:.0f}"
            if r['memory_kind']:
                mem += f" ({r['memory_kind']})"
            if r.get('memory_ratio') is not None:
                mem += f" ({r['memory_ratio']:.2f}x {r['memory_vs']})"
            lines.append(
                f"| {r['name']} | {r['median'] * 1e3:.0f} | {r['iqr'] * 1e3:.0f} | "
                f"{r['min'] * 1e3:.0f} | {r['batch'] / r['median']:.2f} | {mem} | "
                + (f"{r['x_limit']:.2f}" if r['x_limit'] else '-') + ' | '
                + (f"{r['speedup']:.2f}x" if r['speedup'] else '-') + ' |')
        return '\n'.join(lines)


def backbone_inference(name: str, args, gemm: Tuple[Callable, float]) -> Table:
    """eager / default / deploy / onnxruntime rows of one backbone."""
    from metaformer_mm.accel import ops, plain_forward
    from metaformer_mm.accel.folded import stage_is_foldable
    device = args.device
    model = build_backbone(name).to(device)
    model.eval()  # (mmdet's ResNet.train() returns None, so no chaining)
    h, w = args.shape or (800, 1216)
    x = torch.randn(args.batch, 3, h, w, device=device)
    cases: Dict[str, Callable] = {}
    metaformer = is_metaformer(model)
    macs_model = model
    compile_note = ''
    if metaformer:
        cases['eager'] = lambda: plain_forward(model, x, channels_last=False)
        # The same plain code on channels-last activations: what the layout alone gives.
        cases['eager, channels-last'] = lambda: plain_forward(model, x)
        macs_run = cases['eager']
        for gemm_lib in ('aten', 'onednn'):
            if gemm_lib == 'aten' or ops.available('onednn_linear'):
                cases[gemm_lib] = functools.partial(run_with, model, gemm_lib, x)
    else:
        macs_run = lambda: model(x)  # noqa: E731
    all_macs, pw_macs = conv_macs(macs_model, macs_run)
    cases['default'] = lambda: model(x)
    deploy = metaformer and any(stage_is_foldable(s.blocks) for s in model.stages)
    if deploy:
        cases['deploy'] = lambda: run_with(model, 'deploy', x)
    if metaformer and name in (args.compile_models or []):
        seconds = {}
        for label, freezing in (('compiled', False), ('compiled, freezing', True)):
            cases[label], seconds[label] = compiled_case(model, x, freezing)
        compile_note = '; compile s cold / warm: ' + ', '.join(
            f'{label} {cold:.0f} / {warm:.0f}' for label, (cold, warm) in seconds.items())
    ort_path = ort_session = skipped = None
    if metaformer and not args.no_onnx and device == 'cpu':
        ort_session, ort_path = _ort_case(model, (h, w), args, deploy)
        if ort_session is None:
            skipped = ort_path
        else:
            feed = {'input': x.cpu().numpy()}
            cases['onnxruntime'] = lambda: ort_session.run(None, feed)
    gemm_fn, gemm_flops = gemm
    with torch.no_grad():
        times = time_interleaved(dict(gemm=gemm_fn, **cases), args.warmup, args.repeats, device)
    rate = gemm_flops / min(times.pop('gemm'))
    limit = 2.0 * all_macs / rate
    label = 'mmdet ' + {'resnet50': 'ResNet-50', 'resnet18': 'ResNet-18'}[name] \
        if name in RESNETS else name
    table = Table(
        f'{label}, {args.batch}x3x{h}x{w}, fp32, {args.threads} threads, inference',
        limit, f'conv/linear MACs {all_macs / 1e9:.2f} G (1x1 convs {pw_macs / 1e9:.2f} G); '
               f'GEMM rate {rate / 1e9:.0f} GFLOP/s (2048^3, best of this table\'s rounds); '
               f'limit {limit * 1e3:.0f} ms; default = {default_label(model)}' + compile_note
        + (f'; {skipped}' if skipped else ''))
    first = next(iter(cases))
    for case, seconds in times.items():
        memory, kind = None, ''
        if not args.no_memory:
            if case == 'onnxruntime':
                memory, kind = ort_peak_rss(ort_path, args.threads, x.shape), 'rss'
            else:
                with torch.no_grad():
                    memory = peak_memory(cases[case], device)
        table.add(case, summarize(seconds), args.batch, memory, kind,
                  baseline=first if case != first else None)
    table.rates = dict(gemm_gflops=rate / 1e9, macs=all_macs, pw_macs=pw_macs)
    return table


def default_label(model: nn.Module) -> str:
    """What ``kernels='auto'`` runs for ``model`` on this machine."""
    if not is_metaformer(model):
        return 'the module itself'
    from metaformer_mm.accel import ops
    return f"{ops.default_gemm()} kernels (CPU capability " \
           f"{torch.backends.cpu.get_cpu_capability()})"


def compiled_case(model: nn.Module, x: torch.Tensor, freezing: bool
                  ) -> Tuple[Callable[[], object], Tuple[float, float]]:
    """``torch.compile`` of a copy of ``model`` (its plain forward) and the seconds of its
    first call, cold (an empty FX graph cache) and warm (after a dynamo reset, the graph
    comes from that cache, as a rerun of a job finds it). The reset also drops earlier
    compiled cases' code: their warm-up calls recompile them (from the cache)."""
    cache = tempfile.mkdtemp(prefix='metaformer_inductor_')
    saved = os.environ.get('TORCHINDUCTOR_CACHE_DIR')
    os.environ['TORCHINDUCTOR_CACHE_DIR'] = cache
    try:
        times = []
        for _ in range(2):
            # Without the reset the second compile would reuse the first's code in memory.
            torch._dynamo.reset()
            compiled = torch.compile(copy.deepcopy(model), options={'freezing': freezing})
            start = time.perf_counter()
            with torch.no_grad():
                compiled(x)
            times.append(time.perf_counter() - start)
    finally:
        if saved is None:
            os.environ.pop('TORCHINDUCTOR_CACHE_DIR', None)
        else:
            os.environ['TORCHINDUCTOR_CACHE_DIR'] = saved
    return (lambda: compiled(x)), (times[0], times[1])


def _ort_case(model: nn.Module, shape: Tuple[int, int], args, deploy: bool):
    try:
        import onnxruntime as ort
        from metaformer_mm.cli.onnx import export_onnx
    except ImportError:
        return None, None
    tmp = tempfile.mkdtemp(prefix='metaformer_bench_')
    path = osp.join(tmp, 'backbone.onnx')
    export_model = copy.deepcopy(model)
    try:
        export_onnx(export_model, path, shape=shape, deploy=deploy)
    except Exception as err:  # e.g. an operator ONNX lacks: report and go on
        return None, f'no onnxruntime row: export failed ({str(err).splitlines()[0][:120]})'
    return ort.InferenceSession(path, ort_options(args.threads),
                                providers=['CPUExecutionProvider']), path


def ort_options(threads: int):
    """onnxruntime session options: ``threads`` intra-op threads that do not spin when idle.

    Spinning threads keep a core busy for a while after each run and would slow whichever
    case the interleaved rounds time next.
    """
    import onnxruntime as ort
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry('session.intra_op.allow_spinning', '0')
    return opts


def backbone_training(name: str, args, gemm: Tuple[Callable, float]) -> Table:
    """Training step (forward + backward) rows: eager, default, default with with_cp."""
    device = args.device
    model = build_backbone(name).to(device).train()
    if not is_metaformer(model):
        raise SystemExit(f'--train-models takes MetaFormer backbones, not {name}')
    h, w = args.shape or (800, 1216)
    x = torch.randn(args.train_batch, 3, h, w, device=device)

    def step(fn, owner=model):
        def run():
            owner.zero_grad(set_to_none=True)
            sum(o.float().mean() for o in fn(x)).backward()
        return run

    def with_cp(x_):
        model.with_cp = True
        try:
            return model(x_)
        finally:
            model.with_cp = False

    cases = dict(eager=step(lambda t: run_with(model, 'reference', t)), default=step(model),
                 with_cp=step(with_cp))
    compile_note = ''
    if name in (args.compile_models or []):
        # torch.compile of the model (it traces the plain forward), forward and backward;
        # the first step compiles. A copy: the eager case switches the model's kernels,
        # which would recompile a compiled model on every switch.
        torch._dynamo.reset()
        twin = copy.deepcopy(model)
        cases['compiled'] = step(torch.compile(twin), twin)
        start = time.perf_counter()
        cases['compiled']()
        compile_note = f'; compiled: first step {time.perf_counter() - start:.0f} s'
    all_macs, _ = conv_macs(model, lambda: run_with(model, 'reference', x[:1]))
    gemm_fn, gemm_flops = gemm
    times = time_interleaved(dict(gemm=gemm_fn, **cases), args.warmup, args.train_repeats,
                             device)
    rate = gemm_flops / min(times.pop('gemm'))
    # Forward and backward: three GEMMs per conv (output, input gradient, weight gradient).
    limit = 3 * 2.0 * all_macs * args.train_batch / rate
    table = Table(f'{name}, training step (forward + backward), {args.train_batch}x3x{h}x{w}, '
                  f'fp32, {args.threads} threads', limit,
                  f'limit: 3 x conv MACs {all_macs * args.train_batch / 1e9:.1f} G at '
                  f'{rate / 1e9:.0f} GFLOP/s = {limit * 1e3:.0f} ms' + compile_note)
    for case, seconds in times.items():
        memory = None if args.no_memory else peak_memory(cases[case], device)
        # with_cp's memory is judged against the same path without checkpointing.
        table.add(case, summarize(seconds), args.train_batch, memory,
                  baseline='eager' if case != 'eager' else None,
                  memory_baseline='default' if case == 'with_cp' else None)
    return table


def model_inference(path: str, args, gemm: Tuple[Callable, float]) -> Table:
    """Whole-model rows (predict mode): eager / default / deploy for MetaFormer backbones."""
    device = args.device
    model, scope = build_whole_model(path)
    model = model.to(device)
    h, w = args.shape or ((512, 512) if scope == 'mmseg' else (800, 1216))
    x = torch.randn(args.batch, 3, h, w, device=device)
    samples = data_samples(scope, (h, w), args.batch)
    metaformer = is_metaformer(model.backbone)

    def predict():
        return model(x, copy.deepcopy(samples), mode='predict')

    cases: Dict[str, Callable] = {}
    if metaformer:
        def eager():
            return run_with(model, 'reference', x, copy.deepcopy(samples), mode='predict')
        cases['eager'] = eager
        all_macs, _ = conv_macs(model, eager)
    else:
        all_macs, _ = conv_macs(model, predict)
    cases['default'] = predict
    if metaformer:
        cases['deploy'] = lambda: run_with(model, 'deploy', x, copy.deepcopy(samples),
                                           mode='predict')
    gemm_fn, gemm_flops = gemm
    with torch.no_grad():
        times = time_interleaved(dict(gemm=gemm_fn, **cases), args.warmup, args.repeats, device)
    rate = gemm_flops / min(times.pop('gemm'))
    limit = 2.0 * all_macs / rate
    backbone = type(model.backbone).__name__
    table = Table(f'{osp.basename(path)} ({type(model).__name__}, {backbone}), '
                  f'{args.batch}x3x{h}x{w}, fp32, {args.threads} threads, predict', limit,
                  f'conv/linear MACs {all_macs / 1e9:.1f} G (whole model); GEMM rate '
                  f'{rate / 1e9:.0f} GFLOP/s; limit {limit * 1e3:.0f} ms')
    first = next(iter(cases))
    for case, seconds in times.items():
        memory = None
        if not args.no_memory:
            with torch.no_grad():
                memory = peak_memory(cases[case], device)
        table.add(case, summarize(seconds), args.batch, memory,
                  baseline=first if case != first else None)
    return table


def machine() -> str:
    try:
        import onnxruntime
        ort_version = onnxruntime.__version__
    except ImportError:
        ort_version = 'not installed'
    return f'{cpu_line()}; onnxruntime {ort_version}'


def main(argv: Optional[List[str]] = None) -> List[Table]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f'machine: {machine()}')
    print(f'threads {args.threads}, warm-up {args.warmup}, repeats {args.repeats}\n', flush=True)
    gemm = gemm_case(args.device)
    tables: List[Table] = []
    if args.suite in ('backbones', 'all'):
        # ``--models`` with no name: no inference table (e.g. training rows only).
        for name in DEFAULT_BACKBONES if args.models is None else args.models:
            tables.append(backbone_inference(name, args, gemm))
            print(tables[-1].render() + '\n', flush=True)
        for name in args.train_models or []:
            tables.append(backbone_training(name, args, gemm))
            print(tables[-1].render() + '\n', flush=True)
    if args.suite in ('models', 'all'):
        for path in DEFAULT_CONFIGS if args.models is None else args.models:
            tables.append(model_inference(path, args, gemm))
            print(tables[-1].render() + '\n', flush=True)
    print(f'load average at the end: {" / ".join(f"{v:.1f}" for v in os.getloadavg())}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump([dict(title=t.title, note=t.note, limit_s=t.limit, rows=t.rows)
                       for t in tables], f, indent=1)
    return tables


if __name__ == '__main__':
    main(sys.argv[1:])
