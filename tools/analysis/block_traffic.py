#!/usr/bin/env python
"""Bytes moved per MetaFormer block step against this CPU's memory bandwidth, fp32 and bf16.

    python tools/analysis/block_traffic.py [--backbone poolformer_s12] [--shape 800 1216]
        [--precisions fp32 bf16] [--repeats 5] [--threads 2] [--out FILE]

Once the matrix products run at bf16 rates, the passes over whole maps (norms, pooling,
residual updates, layout copies) decide the time. For every stage of the backbone's default
path (eval, no_grad; ``bf16``: under CPU bf16 autocast on a channels-last input) this times
each step of the blocks with forward hooks, from the same forward that serves users:

    norm1 | token mixer | residual 1 | norm2 | MLP + residual 2

and counts the bytes each step must move at least (every input map read once, every output
written once, the MLP's weights once; its 4x-wide hidden activation stays in cache by design,
so it is not counted), and the MLP's FLOPs. The limit of a step is the larger of its bytes
at the measured copy bandwidth and its FLOPs at the measured GEMM rate of its dtype; the
table gives each step's time, traffic, achieved GB/s and time / limit. Bandwidth: the best
``copy_`` of a 256 MiB buffer (bytes read + written per second), GEMM: 2048^3 ``mm``.

The CPU model, its bf16 flags and the load average head the output: read the ratios within
one run.
"""
import argparse
import statistics
import time
import warnings
from collections import defaultdict
from typing import Dict, List, Optional, Tuple

warnings.filterwarnings('ignore')

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

from bench_common import (cpu_line, finish_script, gemm_rate, metaformer_preset,  # noqa: E402
                          start_script)  # (this folder is on sys.path)

STEPS = ('norm1', 'token mixer', 'residual 1', 'norm2', 'MLP + residual 2')
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--backbone', default='poolformer_s12',
                        help='a preset name of metaformer_mm ARCH_SETTINGS')
    parser.add_argument('--shape', type=int, nargs=2, default=(800, 1216), metavar=('H', 'W'))
    parser.add_argument('--precisions', nargs='+', default=['fp32', 'bf16'], choices=DTYPES)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--out', default=None, help='also write the tables to this file')
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f'--repeats must be >= 1, got {args.repeats}')
    return args


def best_of(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def copy_bandwidth(repeats: int) -> float:
    """Bytes per second of a large copy (read + write), the practical memory bandwidth."""
    src = torch.randn(64 * 2 ** 20)  # 256 MiB, far beyond any cache
    dst = torch.empty_like(src)
    return 2 * src.nbytes / best_of(lambda: dst.copy_(src), repeats)


class StepTimer:
    """Forward hooks that cut each block's forward into ``STEPS`` and note the maps each
    step reads and writes (shapes and dtypes: the bytes it must move)."""

    def __init__(self, model: nn.Module, weight_bytes: int) -> None:
        self.weight_bytes = weight_bytes  # per weight, in the GEMMs' dtype
        self.handles = []
        self.records: List[Tuple[int, Dict[str, float], Dict[str, int], float]] = []
        for stage_index, stage in enumerate(model.stages):
            for block in stage.blocks:
                self._attach(stage_index, block)

    def _attach(self, stage: int, block: nn.Module) -> None:
        marks: Dict[str, object] = {}

        def now(name):
            def hook(module, args, out=None):
                marks[name] = time.perf_counter()
                if name == 'start':
                    marks['x'] = args[0]
                elif out is not None:
                    marks[name + ' out'] = out
            return hook

        def finish(module, args, out):
            t = {k: v for k, v in marks.items() if isinstance(v, float)}
            t['end'] = time.perf_counter()
            times = dict(zip(STEPS, (t['norm1'] - t['start'], t['mixer'] - t['norm1'],
                                     t['norm2 start'] - t['mixer'], t['norm2'] - t['norm2 start'],
                                     t['end'] - t['norm2'])))
            x, y, p = marks['x'], marks['norm1 out'], marks['mixer out']
            z, stream = marks['norm2 out'], marks['norm2 start x']
            nb = lambda t: t.numel() * t.element_size()  # noqa: E731
            weights = sum(p.numel() for p in block.mlp.parameters())
            w_bytes = weights * self.weight_bytes
            mixes = p is not y  # an identity mixer moves nothing
            moved = dict(zip(STEPS, (
                nb(x) + nb(y), (nb(y) + nb(p)) if mixes else 0,
                nb(x) + nb(p) + nb(stream), nb(stream) + nb(z),
                nb(z) + nb(stream) + nb(out) + w_bytes)))
            flops = 2.0 * weights * z.numel() // z.shape[1]  # 2 per weight and token
            self.records.append((stage, times, moved, flops))

        self.handles += [
            block.register_forward_pre_hook(now('start')),
            block.norm1.register_forward_hook(now('norm1')),
            block.token_mixer.register_forward_hook(now('mixer')),
            block.norm2.register_forward_pre_hook(
                lambda m, args: marks.update({'norm2 start': time.perf_counter(),
                                              'norm2 start x': args[0]})),
            block.norm2.register_forward_hook(now('norm2')),
            block.register_forward_hook(finish)]

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def stage_table(model: nn.Module, x: torch.Tensor, precision: str, repeats: int,
                bandwidth: float, rate: float) -> List[str]:
    autocast = torch.autocast('cpu', dtype=torch.bfloat16, enabled=precision == 'bf16')
    with torch.no_grad(), autocast:
        model(x)  # warm-up (operator probes, oneDNN primitives)
        timer = StepTimer(model, DTYPES[precision].itemsize)
        try:
            totals = []
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                totals.append(time.perf_counter() - start)
        finally:
            timer.remove()
    # (stage, step) -> per-run sums; the median run of each.
    per_run: Dict[Tuple[int, str], List[float]] = defaultdict(list)
    moved: Dict[Tuple[int, str], int] = defaultdict(int)
    flops: Dict[int, float] = defaultdict(float)
    blocks = sum(len(s.blocks) for s in model.stages)
    for i, (stage, times, nbytes, fl) in enumerate(timer.records):
        run = i // blocks
        for step in STEPS:
            key = (stage, step)
            if len(per_run[key]) <= run:
                per_run[key].append(0.0)
            per_run[key][run] += times[step]
            if run == 0:
                moved[key] += nbytes[step]
        if run == 0:
            flops[stage] += fl
    rows = [f'| {precision}: stage, step | ms | MB moved | GB/s | limit ms | time / limit |',
            '|---|---:|---:|---:|---:|---:|']
    sum_time = sum_limit = 0.0
    for stage in range(len(model.stages)):
        for step in STEPS:
            key = (stage, step)
            sec = statistics.median(per_run[key])
            limit = moved[key] / bandwidth
            if step.startswith('MLP'):
                limit = max(limit, flops[stage] / rate)
            sum_time, sum_limit = sum_time + sec, sum_limit + limit
            gbs = moved[key] / sec / 1e9 if sec > 0 else 0.0
            ratio = f'{sec / limit:.2f}' if limit > 0 else '-'
            rows.append(f'| {stage} {step} | {sec * 1e3:.3f} | {moved[key] / 1e6:.2f} | '
                        f'{gbs:.1f} | {limit * 1e3:.3f} | {ratio} |')
    whole = statistics.median(totals)
    rows.append(f'| blocks, all stages | {sum_time * 1e3:.1f} | '
                f'{sum(moved.values()) / 1e6:.0f} | - | {sum_limit * 1e3:.1f} | '
                f'{sum_time / sum_limit:.2f} |')
    rows.append(f'| whole backbone (stem, downsampling, output norms and copies included) | '
                f'{whole * 1e3:.1f} | | | | |')
    return rows


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)
    start_script('block_traffic', args.threads)
    model = metaformer_preset(args.backbone, '--backbone')
    x = torch.randn(1, 3, *args.shape).contiguous(memory_format=torch.channels_last)
    bandwidth = copy_bandwidth(args.repeats)
    rates = {p: gemm_rate(DTYPES[p], args.repeats) for p in args.precisions}
    lines = [cpu_line(), '',
             f'{args.backbone} at {args.shape[0]}x{args.shape[1]}, batch 1, default path; copy '
             f'bandwidth {bandwidth / 1e9:.1f} GB/s (read + write); GEMM '
             + ', '.join(f'{p} {r / 1e12:.3f} TFLOP/s' for p, r in rates.items()), '']
    for precision in args.precisions:
        lines += stage_table(model, x, precision, args.repeats, bandwidth, rates[precision])
        lines.append('')
    return finish_script(lines, args.out)


if __name__ == '__main__':
    main()
