"""What the suites of ``benchmark.py`` share: the machine line, the timing helper, the limit
helper (GEMM rate and copy bandwidth), the model builder, peak memory, the Markdown table and
the cases' building blocks."""
import contextlib
import logging
import math
import os
import os.path as osp
import platform
import re
import statistics
import sys
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DTYPES = {'fp32': torch.float32, 'fp16': torch.float16, 'bf16': torch.bfloat16}
RESNETS = {'resnet50': 50, 'resnet18': 18}
Case = Callable[[], object]


def start(threads: int) -> None:
    """Thread count, this repository importable, mmengine's logs on stderr (stdout: tables)."""
    torch.set_num_threads(threads)
    sys.path.insert(0, REPO)
    from mmengine.logging import MMLogger
    for handler in MMLogger.get_instance('benchmark', log_level='WARNING').handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)


def machine_line(device: str = 'cpu') -> str:
    """CPU, flags, threads, versions, load (and GPU): what a run's figures are read against."""
    from metaformer_mm.inference import cpu_bf16_flags
    try:
        with open('/proc/cpuinfo') as f:
            info = f.read()
    except OSError:  # not Linux
        info = ''
    cpu = (re.findall(r'^model name\s*:\s*(.*)$', info, re.M) or [platform.processor()])[0]
    shown = [f for f in ('avx512f', 'avx512_bf16', 'amx_tile', 'amx_bf16') if f in info.split()]
    try:
        import onnxruntime
        ort = onnxruntime.__version__
    except ImportError:
        ort = 'not installed'
    line = (f'{cpu}, {os.cpu_count()} logical CPUs, flags {" ".join(shown) or "-"} (capability '
            f'{torch.backends.cpu.get_cpu_capability()}), {torch.get_num_threads()} threads, bf16 '
            f'units: {" ".join(cpu_bf16_flags()) or "none (bf16 emulated)"}; Python '
            f'{platform.python_version()}, torch {torch.__version__}, onnxruntime {ort}; load '
            f'average {" / ".join(f"{v:.1f}" for v in os.getloadavg())}')
    if device == 'cuda':
        line += (f'; GPU {torch.cuda.get_device_name()}, CUDA {torch.version.cuda}, cuDNN TF32 '
                 f'{torch.backends.cudnn.allow_tf32}, bf16 {torch.cuda.is_bf16_supported()}')
    return line


class Limits:
    """A table's limits, timed in its rounds: a 2048^3 GEMM per precision and a 256 MiB copy.
    A rate is its best round, a case's time its median: contention only worsens time / limit."""

    def __init__(self, device: str, precisions: Sequence[str], copy: bool = False) -> None:
        self.cases: Dict[str, Tuple[Case, float]] = {}  # name: (run, FLOPs or bytes)
        self.rate: Dict[str, float] = {}  # 'fp32', ..., 'copy': per second, set by time_cases
        for p in precisions:
            a, b = (torch.randn(2048, 2048, device=device, dtype=DTYPES[p]) for _ in 'ab')
            self.cases[f'limit {p}'] = (lambda a=a, b=b: torch.mm(a, b)), 2.0 * 2048 ** 3
        if copy:
            src = torch.randn(64 * 2 ** 20, device=device)
            dst = torch.empty_like(src)
            self.cases['limit copy'] = (lambda: dst.copy_(src)), 2.0 * src.nbytes

    def seconds(self, flops: float = 0.0, nbytes: float = 0.0, precision: str = 'fp32') -> float:
        """The least time ``flops`` at the GEMM rate and ``nbytes`` at the copy rate take."""
        return max(flops / self.rate[precision], nbytes / self.rate['copy'] if nbytes else 0.0)

    def describe(self, flops: float, only: Optional[str] = None) -> str:
        """The measured rates and ``flops``' limit at each, for a table's note."""
        gemm = [p for p in self.rate if p != 'copy' and only in (None, p)]
        text = 'GEMM rate (2048^3, best round) ' + ', '.join(
            f'{p} {self.rate[p] / 1e9:.0f}' for p in gemm) + ' GFLOP/s'
        if flops:
            text += '; limit ' + ', '.join(
                f'{p} {_num(self.seconds(flops, precision=p) * 1e3)}' for p in gemm) + ' ms'
        if 'copy' in self.rate:
            text += f'; copy bandwidth {self.rate["copy"] / 1e9:.1f} GB/s (read + write)'
        return text


def time_cases(cases: Dict[str, Case], repeats: int, warmup: int = 1, device: str = 'cpu',
               limits: Optional[Limits] = None) -> Dict[str, List[float]]:
    """Seconds of each case's ``repeats`` runs after ``warmup`` ones, in interleaved rounds
    (every case, ``limits``' too, once per round): a busy machine slows all cases alike."""
    sync = torch.cuda.synchronize if device == 'cuda' else lambda: None
    runs = dict({k: fn for k, (fn, _) in limits.cases.items()} if limits else {}, **cases)
    for fn in runs.values():
        for _ in range(warmup):
            fn()
    times: Dict[str, List[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            sync()
            begin = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - begin)
    for name, (_, work) in (limits.cases.items() if limits else ()):
        limits.rate[name.split()[1]] = work / min(times.pop(name))
    return times


def first_call(fn: Case, device: str = 'cpu', grad: bool = False) -> float:
    """Seconds of one call of ``fn`` (of a compiled model: its compile time)."""
    with torch.set_grad_enabled(grad):
        return time_cases({'first': fn}, 1, 0, device)['first'][0]


def kind(name: str) -> str:
    """'metaformer' (a preset of ARCH_SETTINGS), 'backbone' (another one) or 'config'."""
    from metaformer_mm.models import ARCH_SETTINGS
    if name in ARCH_SETTINGS:
        return 'metaformer'
    return 'backbone' if name in RESNETS or name.startswith('timm_') else 'config'


def build(name: str, device: str = 'cpu') -> Tuple[nn.Module, str]:
    """Model ``name`` (a config: a file, a model name, ``mmdet::``...) in eval mode, randomly
    initialised (seed 0), and its ``kind`` (a config's: its scope)."""
    import metaformer_mm  # noqa: F401  (registers the backbones)
    from metaformer_mm.models import MetaFormer
    torch.manual_seed(0)
    what = kind(name)
    if name in RESNETS:
        from mmdet.models.backbones import ResNet
        model = ResNet(depth=RESNETS[name])
    elif what == 'backbone':
        import timm  # an ImportError names the missing package
        model = timm.create_model(name[5:], pretrained=False, features_only=True)
    elif what == 'metaformer':
        model = MetaFormer(arch=name, fork_feat=True, out_indices=(0, 1, 2, 3))
    else:
        from metaformer_mm.cli.config import ToolError
        from metaformer_mm.cli.models import build_model_from_config
        try:
            model = build_model_from_config(osp.join(REPO, name) if osp.exists(
                osp.join(REPO, name)) else name)
        except (ToolError, FileNotFoundError, ValueError) as err:
            raise SystemExit(f'--models: {name!r} is no backbone (a preset of ARCH_SETTINGS, '
                             f'{", ".join(RESNETS)}, timm_NAME) and no config: {err}')
        what = model.cfg.default_scope
    if hasattr(model, 'init_weights'):
        model.init_weights()
    model.to(device).eval()  # (mmdet's ResNet.train() returns None: no chaining)
    return model, what


def conv_macs(model: nn.Module, run: Case) -> Tuple[int, int]:
    """Multiply-adds of every Conv2d/Linear call during ``run()``: (all, 1x1 convs only)."""
    totals = [0, 0]

    def hook(m, inputs, out):
        conv = isinstance(m, nn.Conv2d)
        k = m.kernel_size[0] * m.kernel_size[1] if conv else 1
        macs = out.numel() * (m.in_channels // m.groups * k if conv else m.in_features)
        totals[0] += macs
        totals[1] += macs if conv and k == 1 and m.groups == 1 else 0
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return totals[0], totals[1]


def peak_memory(fn: Case, device: str = 'cpu') -> int:
    """Peak bytes of the tensors allocated during ``fn()`` above those allocated before."""
    if device == 'cuda':
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile
    saved = os.dup(2)  # silences descriptor 2 (the profiler's C++ start/stop lines) meanwhile
    try:
        with open(os.devnull, 'w') as null:
            os.dup2(null.fileno(), 2)
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                fn()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
    current = peak = 0
    for _, nbytes in sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results
                            .events() if e.name() == '[memory]'):
        current += nbytes
        peak = max(peak, current)
    return peak


def _num(value: float) -> str:
    """Three significant digits without an exponent (2917, 493, 12.3, 0.0312)."""
    return f'{value:.{max(0, 2 - math.floor(math.log10(abs(value))))}f}' if value else '0'


class Table:
    """One benchmark table: a title, a note and rows of timed cases, rendered as Markdown."""

    def __init__(self, title: str, note: str = '') -> None:
        self.title, self.note, self.rows = title, note, []

    def add(self, name: str, seconds: List[float], batch: Optional[int] = 1,
            limit: Optional[float] = None, baseline: Optional[str] = None,
            memory: Optional[int] = None, memory_baseline: Optional[str] = None,
            **extra: float) -> Dict:
        """A row of ``seconds``' median, IQR and best, against ``limit`` and other rows."""
        ordered = sorted(seconds)
        q = statistics.quantiles(ordered, n=4) if len(ordered) > 1 else [ordered[0]] * 3
        row = dict(name=name, batch=batch, median=statistics.median(ordered), iqr=q[2] - q[0],
                   min=ordered[0], max=ordered[-1], memory=memory, limit_s=limit, extra=extra)
        row['x_limit'] = row['median'] / limit if limit else None
        rows = {r['name']: r for r in self.rows}
        base, mem = rows.get(baseline), rows.get(memory_baseline or baseline)
        row['speedup'] = base['median'] / row['median'] if base else None
        if mem and mem['memory'] and memory is not None:
            row.update(memory_ratio=memory / mem['memory'], memory_vs=mem['name'])
        self.rows.append(row)
        return row

    def render(self) -> str:
        extra = list(dict.fromkeys(k for r in self.rows for k in r['extra']))
        head = ['case', 'median ms', 'IQR ms', 'min ms', 'images/s', 'peak MB', 'x limit',
                'speed-up', *extra]
        lines = [f'### {self.title}', '', *([self.note, ''] if self.note else []),
                 *(['| ' + ' | '.join(head) + ' |', '|---|' + '---:|' * (len(head) - 1)]
                   if self.rows else [])]
        for r in self.rows:
            mem = '-' if r['memory'] is None else f"{r['memory'] / 2 ** 20:.0f}"
            if 'memory_ratio' in r:
                mem += f" ({r['memory_ratio']:.2f}x {r['memory_vs']})"
            cells = [r['name'], *(_num(r[k] * 1e3) for k in ('median', 'iqr', 'min')),
                     f"{r['batch'] / r['median']:.2f}" if r['batch'] else '-', mem,
                     f"{r['x_limit']:.2f}" if r['x_limit'] else '-',
                     f"{r['speedup']:.2f}x" if r['speedup'] else '-',
                     *(_num(r['extra'][k]) if k in r['extra'] else '' for k in extra)]
            lines.append('| ' + ' | '.join(cells) + ' |')
        return '\n'.join(lines)


def deployable(model: nn.Module) -> bool:
    """Whether ``model`` is a MetaFormer with stages the deploy kernels fold."""
    from metaformer_mm.accel.folded import stage_is_foldable
    from metaformer_mm.models import MetaFormer
    return isinstance(model, MetaFormer) and any(stage_is_foldable(s.blocks) for s in model.stages)


def run_with(model: nn.Module, kernels: Optional[str], *args, **kwargs):
    """``model(*args, **kwargs)`` with its MetaFormer backbone(s) on ``kernels`` (if given)."""
    from metaformer_mm.accel import use_kernels
    with use_kernels(model, kernels) if kernels else contextlib.nullcontext():
        return model(*args, **kwargs)


def autocast(fn: Case, device: str = 'cpu', dtype: Optional[torch.dtype] = None) -> Case:
    """``fn`` under autocast to ``dtype`` (None: ``fn`` itself)."""
    def run():
        with torch.autocast(device, dtype=dtype):
            return fn()
    return fn if dtype is None else run


def measured(title: str, cases: Dict[str, Case], args, notes: List[str] = (), flops: float = 0.0,
             batch: int = 1, grad: bool = False, memory_vs: Optional[Dict] = None) -> Table:
    """``cases`` timed into a table: against the first case and ``flops``' limit."""
    precision = {c: next((p for p in ('fp16', 'bf16') if p in c), 'fp32') for c in cases}
    first, limits = next(iter(cases)), None
    if flops:
        limits = Limits(args.device, ['fp32', *sorted({*precision.values()} - {'fp32'})])
    with torch.set_grad_enabled(grad):
        times = time_cases(cases, args.repeats, args.warmup, args.device, limits)
        table = Table(title, '; '.join([*([limits.describe(flops)] if limits else []),
                                        *filter(None, notes)]))
        for case, seconds in times.items():
            # onnxruntime's memory is not PyTorch's: the profiler does not see it.
            mem = None if args.no_memory or case == 'onnxruntime' else peak_memory(
                cases[case], args.device)
            table.add(case, seconds, batch, limits and limits.seconds(
                flops, precision=precision[case]), first if case != first else None, mem,
                memory_baseline=(memory_vs or {}).get(case))
    return table


def train_step(model, x, device: str = 'cpu', dtype=None, kernels: Optional[str] = None,
               with_cp: bool = False, owner=None) -> Case:
    """Forward and backward of ``model`` on ``x``; ``owner``'s gradients are reset first."""
    owner = owner or model

    def run():
        owner.zero_grad(set_to_none=True)
        if hasattr(owner, 'with_cp'):  # a MetaFormer reads it per call (mmdet's ResNet: False)
            owner.with_cp = with_cp
        outs = autocast(lambda: run_with(model, kernels, x), device, dtype)()
        sum(o.float().mean() for o in outs).backward()
    return run
