#!/usr/bin/env python
"""CUDA timing of the backbones (and two whole models) in fp32, fp16 AMP and bf16 AMP.

    python tools/analysis/cuda_bench.py [--backbones poolformer_s12 ...] [--out FILE]
        [--infer-shape 800 1216] [--train-shape 512 512] [--train-batch 8] [--repeats 10]

Self-contained (no network, no other script): for each backbone (PoolFormer S12/S24/M36,
mmdet's ResNet-50 and, where timm is installed, timm's ``poolformer_s12`` features)

* inference: batch 1 at ``--infer-shape``, eval, no_grad: median latency and images/s;
* training: a forward, backward and SGD step at ``--train-batch`` x ``--train-shape``:
  images/s and peak memory (``torch.cuda.max_memory_allocated``), fp16 AMP with a GradScaler,
  bf16 AMP without;
* for MetaFormer backbones, the same inference and training rows under ``torch.compile``
  (which fuses the norm, pooling and residual passes the eager kernels leave apart on a GPU),
  with the first call's seconds (the compile time) in the row;

then whole-model ``predict`` of Semantic FPN S12 (512x512) and, where mmcv's CUDA ops are
built, RetinaNet S12 (800x1216), fp32 against ``enable_bf16_inference``. Median of
``--repeats`` timed runs after 3 warm-up runs, synchronised. fp32 runs with PyTorch's
defaults (cuDNN may use TF32 on Ampere and later; the header says which).
"""
import argparse
import copy
import os.path as osp
import statistics
import sys
import time
from typing import Callable, List, Optional

import torch

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
PRECISIONS = {'fp32': None, 'fp16 AMP': torch.float16, 'bf16 AMP': torch.bfloat16}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--backbones', nargs='*',
                        default=['poolformer_s12', 'poolformer_s24', 'poolformer_m36',
                                 'resnet50', 'timm_poolformer_s12'])
    parser.add_argument('--infer-shape', type=int, nargs=2, default=(800, 1216))
    parser.add_argument('--train-shape', type=int, nargs=2, default=(512, 512))
    parser.add_argument('--train-batch', type=int, default=8)
    parser.add_argument('--repeats', type=int, default=10)
    parser.add_argument('--no-models', action='store_true', help='backbones only')
    parser.add_argument('--out', default=None, help='also write the tables to this file')
    return parser.parse_args(argv)


def timed(fn: Callable[[], object], repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def build_backbone(name: str) -> Optional[torch.nn.Module]:
    """A backbone by name; None (row skipped) for timm when timm is not installed."""
    if name.startswith('timm_'):
        try:
            import timm
        except ImportError:
            return None
        return timm.create_model(name[5:], pretrained=False, features_only=True)
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    import metaformer_mm  # noqa: F401
    from metaformer_mm.models import MetaFormer
    init_default_scope('mmdet')
    if name == 'resnet50':
        return MODELS.build(dict(type='ResNet', depth=50, out_indices=(0, 1, 2, 3)))
    return MetaFormer(arch=name, fork_feat=True, out_indices=(0, 1, 2, 3))  # any preset


def autocast(dtype: Optional[torch.dtype]):
    return torch.autocast('cuda', dtype=dtype, enabled=dtype is not None)


def backbone_rows(name: str, args) -> List[str]:
    model = build_backbone(name)
    if model is None:
        return [f'| {name} | (timm not installed) |']
    model = model.cuda()
    rows = []
    x = torch.randn(1, 3, *args.infer_shape, device='cuda')
    model.eval()
    from metaformer_mm.models import MetaFormer
    variants = {'': lambda m: m}
    if isinstance(model, MetaFormer):
        variants['compiled '] = torch.compile
    for label, wrap in variants.items():
        for prec, dtype in PRECISIONS.items():
            net = wrap(model)

            def infer():
                with torch.no_grad(), autocast(dtype):
                    return net(x)
            first = _first_call(infer)
            sec = timed(infer, args.repeats)
            rows.append(f'| {name} | {label}inference {prec}{first} | {sec * 1e3:.1f} ms | '
                        f'{1 / sec:.1f} | - |')
    xb = torch.randn(args.train_batch, 3, *args.train_shape, device='cuda')
    for label, wrap in variants.items():
        for prec, dtype in PRECISIONS.items():
            net = copy.deepcopy(model)
            net.train()  # mmdet's ResNet.train returns None: no chaining
            opt = torch.optim.SGD(net.parameters(), lr=1e-4, momentum=0.9)
            scaler = torch.amp.GradScaler('cuda', enabled=dtype == torch.float16)
            forward = wrap(net)

            def step():
                with autocast(dtype):
                    loss = sum(o.float().mean() for o in forward(xb))
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            first = _first_call(step)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            sec = timed(step, args.repeats, warmup=2)
            peak = torch.cuda.max_memory_allocated() / 2 ** 20
            rows.append(f'| {name} | {label}train {prec}{first} | {sec * 1e3:.1f} ms/step | '
                        f'{args.train_batch / sec:.1f} | {peak:.0f} MiB |')
    return rows


def _first_call(fn: Callable[[], object]) -> str:
    """Runs ``fn`` once; for a compiled model the seconds it took (its compile time)."""
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    sec = time.perf_counter() - start
    return f' (first call {sec:.0f} s)' if sec > 1 else ''


def model_rows(args) -> List[str]:
    from mmengine.config import Config
    from mmengine.registry import init_default_scope

    from metaformer_mm.inference import enable_bf16_inference
    rows = []
    cases = [('segmentation', 'fpn_poolformer_s12', 'mmseg', (512, 512)),
             ('detection', 'retinanet_poolformer_s12', 'mmdet', (800, 1216))]
    for folder, name, scope, shape in cases:
        if scope == 'mmdet':
            try:
                from mmcv.ops import nms
                nms(torch.rand(4, 4, device='cuda') * 10, torch.rand(4, device='cuda'), 0.5)
            except (RuntimeError, ImportError) as err:
                rows.append(f'| {name} | skipped: mmcv CUDA ops not built ({err}) | | | |')
                continue
        cfg = Config.fromfile(osp.join(REPO, 'configs', folder, f'{name}.py'))
        cfg.model.backbone.init_cfg = None
        init_default_scope(scope)
        registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
        model = registry.build(cfg.model).cuda().eval()
        structures = __import__(f'{scope}.structures', fromlist=['x'])
        sample_cls = structures.DetDataSample if scope == 'mmdet' else structures.SegDataSample
        meta = dict(img_shape=shape, ori_shape=shape, pad_shape=shape, batch_input_shape=shape,
                    scale_factor=(1.0, 1.0), padding_size=[0, 0, 0, 0])
        x = torch.randn(1, 3, *shape, device='cuda')
        bf16 = enable_bf16_inference(copy.deepcopy(model))
        for label, net in (('fp32', model), ('bf16 (enable_bf16_inference)', bf16)):
            def run(net=net):
                with torch.no_grad():
                    return net(x, [sample_cls(metainfo=meta)], mode='predict')
            sec = timed(run, args.repeats)
            rows.append(f'| {name} | predict {label} | {sec * 1e3:.1f} ms | {1 / sec:.1f} | - |')
    return rows


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        raise SystemExit('cuda_bench.py: no CUDA device')
    sys.path.insert(0, REPO)
    from mmengine.logging import MMLogger
    MMLogger.get_instance('cuda_bench', log_level='WARNING')
    torch.backends.cudnn.benchmark = True
    header = [f'GPU: {torch.cuda.get_device_name()}; torch {torch.__version__}, CUDA '
              f'{torch.version.cuda}, cuDNN TF32 {torch.backends.cudnn.allow_tf32}, bf16 '
              f'{torch.cuda.is_bf16_supported()}',
              f'inference batch 1 at {args.infer_shape[0]}x{args.infer_shape[1]}; training batch '
              f'{args.train_batch} at {args.train_shape[0]}x{args.train_shape[1]}', '',
              '| model | case | time | images/s | peak memory |', '|---|---|---:|---:|---:|']
    lines: List[str] = []
    out = open(args.out, 'w') if args.out else None

    def emit(rows: List[str]) -> None:
        # Row by row, so that a run cut off by its time limit keeps what it measured.
        lines.extend(rows)
        print('\n'.join(rows), flush=True)
        if out is not None:
            out.write(''.join(row + '\n' for row in rows))
            out.flush()

    emit(header)
    for name in args.backbones:
        emit(backbone_rows(name, args))
        torch.cuda.empty_cache()
    if not args.no_models:
        emit(model_rows(args))
    if out is not None:
        out.close()
    return '\n'.join(lines)


if __name__ == '__main__':
    main()
