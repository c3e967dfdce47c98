#!/usr/bin/env python
"""bf16 against fp32 on this CPU: GEMM rate, a backbone, and whole-model inference.

    python tools/analysis/bf16_bench.py [--backbone poolformer_s12] [--shape 800 1216]
        [--models retinanet_poolformer_s12 ...] [--repeats 3] [--threads 2] [--out FILE]

Rows, each the median of ``--repeats`` runs timed in interleaved rounds (a busy machine slows
every case alike, so the ratios within one table are what to read):

* GEMM 2048^3 in fp32 and bf16 (TFLOP/s);
* the backbone at ``--shape``: fp32 ``default`` (eval, no_grad), fp32 ``deploy``
  (``switch_to_deploy``, if the backbone has it), the original formulation under bf16
  autocast on a channels-last input (``eager bf16 CL``), and ours under bf16 autocast on a
  channels-last input (``bf16 CL``), with the largest error of bf16 relative to each output
  map's range;
* whole models from ``configs/detection``/``configs/segmentation`` (random weights with the
  configs' own initialisation: a detector's classifier prior of 0.01 leaves few boxes above
  the score threshold, as a trained model does on most images): mmdet's
  ``inference_detector`` / mmseg's ``inference_model`` on the shared demo image (pipeline
  included), fp32 against ``enable_bf16_inference(model)``.

The CPU's bf16 flags head the output; without ``avx512_bf16``/``amx_bf16`` bf16 is emulated
and the bf16 rows say so.
"""
import argparse
import os
import os.path as osp
import platform
import statistics
import sys
import time
import warnings
from typing import Callable, Dict, List, Optional

warnings.filterwarnings('ignore')

import torch  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SHARED = os.environ.get('METAFORMER_SHARED', osp.join(REPO, '..', 'shared'))
BF16 = dict(device_type='cpu', dtype=torch.bfloat16)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--backbone', default='poolformer_s12')
    parser.add_argument('--shape', type=int, nargs=2, default=(800, 1216), metavar=('H', 'W'))
    parser.add_argument('--models', nargs='*', default=['retinanet_poolformer_s12'],
                        help='config names under configs/detection or configs/segmentation')
    parser.add_argument('--repeats', type=int, default=3)
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


def gemm_rows(repeats: int) -> List[str]:
    n = 2048
    a, b = torch.randn(n, n), torch.randn(n, n)
    a16, b16 = a.bfloat16(), b.bfloat16()
    med = interleaved({'fp32': lambda: torch.mm(a, b), 'bf16': lambda: torch.mm(a16, b16)},
                      repeats)
    rate = {k: 2 * n ** 3 / v / 1e12 for k, v in med.items()}
    return ['| GEMM 2048^3 | TFLOP/s | ratio |', '|---|---:|---:|',
            f'| fp32 | {rate["fp32"]:.3f} | 1.00 |',
            f'| bf16 | {rate["bf16"]:.3f} | {rate["bf16"] / rate["fp32"]:.2f} |']


def backbone_rows(name: str, shape, repeats: int) -> List[str]:
    import copy

    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    import metaformer_mm  # noqa: F401
    init_default_scope('mmdet')
    kind, arch = name.split('_', 1)
    cls = {'poolformer': 'PoolFormer', 'poolformerv2': 'PoolFormerV2', 'convformer': 'ConvFormer',
           'caformer': 'CAFormer', 'identityformer': 'IdentityFormer'}[kind]
    torch.manual_seed(0)
    model = MODELS.build(dict(type=cls, arch=arch, fork_feat=True,
                              out_indices=(0, 1, 2, 3))).eval()
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
    try:
        from metaformer_mm.models.deploy import reference_forward
        cases['eager bf16 CL'] = bf16(lambda: reference_forward(model, x, channels_last=True))
    except ImportError:  # the original formulation moved or is gone: row skipped
        pass
    cases['bf16 CL'] = bf16(lambda: model(x_cl))
    med = interleaved(cases, repeats)
    with torch.no_grad():
        ref, out = model(x), bf16(lambda: model(x_cl))()
    err = max(float((a - b.float()).abs().max() / (a.max() - a.min())) for a, b in zip(ref, out))
    base = med['fp32 default']
    rows = [f'| {name} {shape[0]}x{shape[1]} | s | speed-up vs fp32 default |', '|---|---:|---:|']
    rows += [f'| {case} | {sec:.3f} | {base / sec:.2f} |' for case, sec in med.items()]
    rows.append(f'\nbf16 max error / map range: {err:.1e}')
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
    if args.threads:
        torch.set_num_threads(args.threads)
    sys.path.insert(0, REPO)
    from mmengine.logging import MMLogger
    MMLogger.get_instance('bf16_bench', log_level='WARNING')  # no weight-init reports

    from metaformer_mm.inference import cpu_bf16_flags
    flags = cpu_bf16_flags()
    lines = [f'CPU: {platform.processor() or platform.machine()}, {torch.get_num_threads()} '
             f'threads, bf16 flags: {" ".join(flags) or "none (bf16 emulated)"}; '
             f'torch {torch.__version__}', '']
    lines += gemm_rows(args.repeats) + ['']
    if args.backbone:
        lines += backbone_rows(args.backbone, tuple(args.shape), args.repeats) + ['']
    if args.models:
        lines += model_rows(args.models, args.repeats)
    text = '\n'.join(lines)
    print(text)
    if args.out:
        with open(args.out, 'w') as f:
            f.write(text + '\n')
    return text


if __name__ == '__main__':
    main()
