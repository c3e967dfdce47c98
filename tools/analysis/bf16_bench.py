#!/usr/bin/env python
"""bf16 against fp32 on this CPU: GEMM rate, a backbone, and whole-model inference.

    python tools/analysis/bf16_bench.py [--backbones poolformer_s12 ...] [--shape 800 1216]
        [--models retinanet_poolformer_s12 ...] [--repeats 3] [--threads 2] [--out FILE]

Rows, each the median of ``--repeats`` runs timed in interleaved rounds (a busy machine slows
every case alike, so the ratios within one table are what to read):

* GEMM 2048^3 in fp32 and bf16 (TFLOP/s);
* each backbone at ``--shape``: fp32 ``default`` (eval, no_grad), fp32 ``deploy``
  (``switch_to_deploy``, if the backbone has it), the original formulation under bf16
  autocast on a channels-last input (``eager bf16 CL``), and ours under bf16 autocast on a
  channels-last input (``bf16 CL``), with ``--compile`` also ``torch.compile`` of the model
  (its plain forward) under the same autocast, without and with Inductor's freezing
  (``compiled bf16 CL``, ``compiled bf16 CL, freezing``), each against the GEMM-bound limit
  of its precision
  (the conv/linear multiply-adds at the GEMM rate above), with the largest error of bf16
  relative to each output map's range;
* whole models from ``configs/detection``/``configs/segmentation`` (random weights with the
  configs' own initialisation: a detector's classifier prior of 0.01 leaves few boxes above
  the score threshold, as a trained model does on most images): mmdet's
  ``inference_detector`` / mmseg's ``inference_model`` on the shared demo image (pipeline
  included), fp32 against ``enable_bf16_inference(model)``.

The CPU model and its bf16 flags head the output; without ``avx512_bf16``/``amx_bf16`` bf16
is emulated. ``block_traffic.py`` beside this gives the memory-bandwidth side.
"""
import argparse
import functools
import os
import os.path as osp
import statistics
import time
import warnings
from typing import Callable, Dict, List, Optional, Tuple

warnings.filterwarnings('ignore')

import torch  # noqa: E402

from bench_common import (conv_macs, cpu_line, finish_script, metaformer_preset,  # noqa: E402
                          start_script)  # (this folder is on sys.path)

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SHARED = os.environ.get('METAFORMER_SHARED', osp.join(REPO, '..', 'shared'))
BF16 = dict(device_type='cpu', dtype=torch.bfloat16)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--backbones', nargs='*', default=['poolformer_s12'],
                        help='presets of metaformer_mm ARCH_SETTINGS (none: no backbone table)')
    parser.add_argument('--shape', type=int, nargs=2, default=(800, 1216), metavar=('H', 'W'))
    parser.add_argument('--models', nargs='*', default=['retinanet_poolformer_s12'],
                        help='config names under configs/detection or configs/segmentation')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--compile', action='store_true',
                        help='also time torch.compile of each backbone under bf16 autocast')
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--out', default=None, help='also write the tables to this file')
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f'--repeats must be >= 1, got {args.repeats}')
    return args


def interleaved(cases: Dict[str, Callable[[], object]], repeats: int) -> Dict[str, float]:
    """Median seconds per case; one untimed warm-up round, then ``repeats`` timed rounds."""
    times: Dict[str, List[float]] = {name: [] for name in cases}
    with torch.no_grad():
        for round_ in range(repeats + 1):
            for name, fn in cases.items():
                start = time.perf_counter()
                fn()
                if round_:
                    times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def gemm_rows(repeats: int) -> Tuple[List[str], Dict[str, float]]:
    """The 2048^3 GEMM table and the rates (FLOP/s) by precision."""
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    a16, b16 = a.bfloat16(), b.bfloat16()
    med = interleaved({'fp32': lambda: torch.mm(a, b), 'bf16': lambda: torch.mm(a16, b16)},
                      repeats)
    rate = {k: 2 * n ** 3 / v for k, v in med.items()}
    return (['| GEMM 2048^3 | TFLOP/s | ratio |', '|---|---:|---:|',
             f'| fp32 | {rate["fp32"] / 1e12:.3f} | 1.00 |',
             f'| bf16 | {rate["bf16"] / 1e12:.3f} | {rate["bf16"] / rate["fp32"]:.2f} |'], rate)


def backbone_rows(name: str, shape, repeats: int, rate: Dict[str, float],
                  compiled: bool = False) -> List[str]:
    """fp32 default/deploy and bf16 rows of one backbone, with the GEMM-bound limits."""
    import copy

    from metaformer_mm.accel import plain_forward
    model = metaformer_preset(name, '--backbones')
    x = torch.randn(1, 3, *shape)
    x_cl = x.contiguous(memory_format=torch.channels_last)

    def bf16(fn):
        def run():
            with torch.autocast(**BF16):
                return fn()
        return run

    cases = {'fp32 default': lambda: model(x)}
    if hasattr(model, 'switch_to_deploy'):
        deployed = copy.deepcopy(model).switch_to_deploy()
        cases['fp32 deploy'] = lambda: deployed(x)
    # The original formulation under autocast on a channels-last input: what autocast alone
    # gives the original code.
    cases['eager bf16 CL'] = bf16(lambda: plain_forward(model, x, channels_last=True))
    cases['bf16 CL'] = bf16(lambda: model(x_cl))
    if compiled:
        for label, freezing in (('compiled bf16 CL', False), ('compiled bf16 CL, freezing', True)):
            torch._dynamo.reset()
            cases[label] = bf16(functools.partial(
                torch.compile(copy.deepcopy(model), options={'freezing': freezing}), x_cl))
    med = interleaved(cases, repeats)
    macs, _ = conv_macs(model, lambda: plain_forward(model, x, channels_last=False))
    limit = {p: 2.0 * macs / r for p, r in rate.items()}
    with torch.no_grad():
        ref, out = model(x), bf16(lambda: model(x_cl))()
    err = max(float((a - b.float()).abs().max() / (a.max() - a.min())) for a, b in zip(ref, out))
    base = med['fp32 default']
    rows = [f'| {name} {shape[0]}x{shape[1]} | s | speed-up vs fp32 default | time / limit |',
            '|---|---:|---:|---:|']
    rows += [f'| {case} | {sec:.3f} | {base / sec:.2f} | '
             f'{sec / limit["bf16" if "bf16" in case else "fp32"]:.2f} |'
             for case, sec in med.items()]
    vs_eager = med['eager bf16 CL'] / med['bf16 CL']
    rows.append(f'\nconv/linear MACs {macs / 1e9:.2f} G: GEMM-bound limit fp32 '
                f'{limit["fp32"] * 1e3:.0f} ms, bf16 {limit["bf16"] * 1e3:.0f} ms; bf16 CL vs the '
                f'original under autocast (eager bf16 CL): {vs_eager:.2f}x faster; bf16 max '
                f'error / map range: {err:.1e}')
    return rows


def model_rows(names: List[str], repeats: int) -> List[str]:
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from metaformer_mm.inference import bf16_state, enable_bf16_inference
    rows = ['| model (pipeline included) | fp32 s | bf16 s | speed-up |', '|---|---:|---:|---:|']
    for name in names:
        seg = name.startswith('fpn_')
        path = osp.join(REPO, 'configs', 'segmentation' if seg else 'detection', f'{name}.py')
        if not osp.isfile(path):
            raise FileNotFoundError(f'--models: no config {path}')
        cfg = Config.fromfile(path)
        cfg.model.backbone.init_cfg = None
        scope = 'mmseg' if seg else 'mmdet'
        init_default_scope(scope)
        registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
        torch.manual_seed(0)
        model = registry.build(cfg.model)
        model.init_weights()
        model.cfg = cfg
        model.eval()
        if seg:
            from mmseg.apis import inference_model as infer
            image = osp.join(SHARED, 'data', 'demo', 'ade_demo.jpg')
        else:
            from mmdet.apis import inference_detector as infer
            image = osp.join(SHARED, 'data', 'demo', 'demo.jpg')
        import copy
        bf16_model = enable_bf16_inference(copy.deepcopy(model))
        state = bf16_state(bf16_model)
        med = interleaved({'fp32': lambda: infer(model, image),
                           'bf16': lambda: infer(bf16_model, image)}, repeats)
        note = '' if state.use_bf16 else ' (no bf16 units: ran fp32)'
        rows.append(f'| {name} | {med["fp32"]:.3f} | {med["bf16"]:.3f}{note} | '
                    f'{med["fp32"] / med["bf16"]:.2f} |')
    return rows


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)
    start_script('bf16_bench', args.threads)
    lines = [cpu_line(), '']
    gemm, rate = gemm_rows(args.repeats)
    lines += gemm + ['']
    for name in args.backbones:
        lines += backbone_rows(name, tuple(args.shape), args.repeats, rate, args.compile) + ['']
    if args.models:
        lines += model_rows(args.models, args.repeats)
    return finish_script(lines, args.out)


if __name__ == '__main__':
    main()
