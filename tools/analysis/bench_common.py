"""What the benchmark scripts of this folder share: the machine line every figure needs, the
matrix-product rate and the multiply-adds of a model's convolutions and linears."""
import logging
import os
import os.path as osp
import platform
import sys
import time
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn as nn

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def cpu_line() -> str:
    """CPU model, logical CPUs, threads, bf16 units, Python, torch and the load average."""
    cpu, count = platform.processor() or platform.machine(), os.cpu_count()
    try:
        with open('/proc/cpuinfo') as f:
            names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
        cpu, count = names[0], len(names)
    except (OSError, IndexError):
        pass
    from metaformer_mm.inference import cpu_bf16_flags
    flags = ' '.join(cpu_bf16_flags()) or 'none (bf16 emulated)'
    load = ' / '.join(f'{v:.1f}' for v in os.getloadavg()) if hasattr(os, 'getloadavg') else '?'
    return (f'{cpu}, {count} logical CPUs, {torch.get_num_threads()} threads, bf16 units: '
            f'{flags}; Python {platform.python_version()}, torch {torch.__version__}; load '
            f'average {load}')


def gemm_rate(dtype: torch.dtype = torch.float32, repeats: int = 3, size: int = 2048) -> float:
    """FLOP/s of a ``size``^3 matrix product in ``dtype`` on the CPU (best of ``repeats``)."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.mm(a, b)
    best = float('inf')
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best


def conv_macs(model: nn.Module, run: Callable[[], object]) -> Tuple[int, int]:
    """Multiply-adds of every Conv2d/Linear call during ``run()``: (all, 1x1 convs only)."""
    totals = [0, 0]

    def hook(module, inputs, output):
        if isinstance(module, nn.Conv2d):
            k = module.kernel_size[0] * module.kernel_size[1]
            macs = output.numel() * module.in_channels // module.groups * k
            totals[1] += macs if k == 1 and module.groups == 1 else 0
        else:
            macs = output.numel() * module.in_features
        totals[0] += macs

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return totals[0], totals[1]


def start_script(name: str, threads: Optional[int]) -> None:
    """What each script does first: its thread count, this repository importable and a
    quiet mmengine logger (no weight-initialisation reports between the tables)."""
    if threads:
        torch.set_num_threads(threads)
    sys.path.insert(0, REPO)
    from mmengine.logging import MMLogger
    logger = MMLogger.get_instance(name, log_level='WARNING')
    # stdout carries the tables alone (they are piped and compared with --out files); log
    # lines such as "no bf16 units" go to stderr.
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
            handler.setStream(sys.stderr)


def finish_script(lines: List[str], out: Optional[str]) -> str:
    """Prints the tables and writes them to ``out`` too (if given); returns the text."""
    text = '\n'.join(lines)
    print(text)
    if out:
        with open(out, 'w') as f:
            f.write(text + '\n')
    return text


def metaformer_preset(name: str, option: str) -> nn.Module:
    """The four-map backbone of preset ``name`` in eval mode (seed 0); a clear exit naming
    ``option`` for an unknown preset."""
    from metaformer_mm.models import ARCH_SETTINGS, MetaFormer
    if name not in ARCH_SETTINGS:
        raise SystemExit(f'{option}: unknown preset {name!r}; one of {sorted(ARCH_SETTINGS)}')
    torch.manual_seed(0)
    return MetaFormer(arch=name, fork_feat=True, out_indices=(0, 1, 2, 3)).eval()
