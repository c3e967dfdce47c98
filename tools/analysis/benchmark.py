#!/usr/bin/env python
"""The benchmark: latency, images/s, peak memory and time / limit of backbones and models.

    python tools/analysis/benchmark.py [--suite SUITE ...] [--models NAME|CONFIG ...]
        [--shape H W] [--repeats R] [--no-memory] [--out FILE] [--json FILE]

Each suite has default models (``SUITES``) and a function below (``bf16`` and ``compile`` add
rows to the others; ``cuda`` runs them on the GPU); ``all``: all but ``cuda``. stdout: the tables.
"""
import argparse
import copy
import functools
import json
import os
import os.path as osp
import tempfile
import time
import warnings
from typing import Callable, Dict, List, Optional, Tuple
from unittest import mock

warnings.filterwarnings('ignore')

import torch  # noqa: E402

from bench_common import (DTYPES, REPO, RESNETS, Case, Limits, Table, autocast,  # noqa: E402
                          build, conv_macs, deployable, first_call, kind, machine_line,
                          measured, run_with, start, time_cases, train_step)  # (on sys.path)

SHARED = os.environ.get('METAFORMER_SHARED', osp.join(REPO, '..', 'shared'))
POOL = ['poolformer_s12', 'poolformer_s24', 'poolformer_m36']
SUITES = {  # suite: its default models, in the order the suites run
    'backbones': POOL + ['smlpnet_tiny', 'randformer_s12', 'resnet50', 'resnet18'],
    'train': ['poolformer_s12', 'poolformer_m36'],
    'models': [f'configs/{c}_poolformer_s12.py' for c in (
        'detection/retinanet', 'detection/mask_rcnn', 'segmentation/fpn')] + [
        'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py',
        'mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py',
        'mmseg::sem_fpn/fpn_r50_4xb4-160k_ade20k-512x512.py'],
    'bf16': POOL + ['retinanet_poolformer_s12', 'mask_rcnn_poolformer_s12', 'fpn_poolformer_s12'],
    'traffic': POOL[:1], 'compile': POOL[:1],
    'cuda': POOL + ['resnet50', 'timm_poolformer_s12', 'fpn_poolformer_s12',
                    'retinanet_poolformer_s12'],
}
REPEATS = dict(backbones=5, train=3, models=5, pipeline_bf16=3, traffic=5)
AMP = {'fp16 AMP': torch.float16, 'bf16 AMP': torch.bfloat16}
STEPS = ('norm1', 'token mixer', 'residual 1', 'norm2', 'MLP + residual 2')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--suite', nargs='+', default=['backbones'], choices=[*SUITES, 'all'])
    parser.add_argument('--models', nargs='*', metavar='NAME', help='backbones (ARCH_SETTINGS '
                        'presets, resnet50, resnet18, timm_NAME) and configs, per suite')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'), default=None,
                        help='input size (default 800 1216; mmseg models, cuda training 512 512)')
    parser.add_argument('--batch', type=int, default=1, help='images per inference call')
    parser.add_argument('--train-batch', type=int, default=None, help='default 2; cuda 8')
    parser.add_argument('--threads', type=int, default=2, help='CPU threads (torch and ORT)')
    parser.add_argument('--repeats', type=int, default=None, help="default: the suite's")
    parser.add_argument('--warmup', type=int, default=1, help='untimed runs per case first')
    parser.add_argument('--no-onnx', action='store_true', help='skip the onnxruntime rows')
    parser.add_argument('--no-memory', action='store_true', help='skip the peak-memory runs')
    parser.add_argument('--out', default=None, help='also write the tables to this file')
    parser.add_argument('--json', default=None, help='also write the rows to this file')
    args = parser.parse_args(argv)
    if 'all' in args.suite and args.models is not None:
        parser.error('--suite all runs the default backbones and configs; choose suites to '
                     'name --models')
    if 'all' in args.suite:
        args.suite = [s for s in SUITES if s != 'cuda' or s in args.suite]
    if (args.repeats or 1) < 1:
        parser.error(f'--repeats must be >= 1, got {args.repeats}')
    return args


def backbones(name: str, args) -> List[Table]:
    """Inference of one backbone: the original code, each kernel choice, ONNX, compiled, bf16."""
    from metaformer_mm.accel import ops, plain_forward
    model, what = build(name, args.device)
    h, w = args.shape or (800, 1216)
    x = torch.randn(args.batch, 3, h, w, device=args.device)
    ours, cpu, cases = what == 'metaformer', args.device == 'cpu', {}
    notes = [f'default = {ops.default_gemm()} kernels (CPU capability '
             f'{torch.backends.cpu.get_cpu_capability()})' if ours else '']
    if ours and cpu:
        cases['eager'] = lambda: plain_forward(model, x, channels_last=False)
        # The same plain code on channels-last activations: what the layout alone gives.
        cases['eager, channels-last'] = lambda: plain_forward(model, x)
        for lib in ('aten', 'onednn')[:1 + ops.available('onednn_linear')]:
            cases[lib] = functools.partial(run_with, model, lib, x)
    cases['default'] = lambda: model(x)
    if cpu and deployable(model):
        cases['deploy'] = functools.partial(run_with, model, 'deploy', x)
    if ours and args.compile:
        notes.append(compile_rows(cases, model, x))
    if ours and cpu and not args.no_onnx:
        notes.append(onnx_rows(cases, model, x, args.threads, 'deploy' in cases))
    macs, pw = conv_macs(model, lambda: run_with(model, 'reference' if ours else None, x))
    notes.insert(0, f'conv/linear MACs {macs / 1e9:.2f} G (1x1 convs {pw / 1e9:.2f} G)')
    for p, dtype in args.precisions.items():
        for base in ('eager, channels-last', 'default', 'compiled', 'compiled, freezing'):
            if base in cases:
                cases[f'{base} {p}'] = autocast(cases[base], args.device, dtype)
            if base in cases and base.startswith('compiled'):  # autocast is in dynamo's guards
                notes.append(f'{base} {p}: first call {first_call(cases[f"{base} {p}"]):.0f} s')
        with torch.no_grad():
            err = max(float((a - b.float()).abs().max() / (a.max() - a.min()))
                      for a, b in zip(cases['default'](), cases[f'default {p}']()))
        notes.append(f'{p} max error / map range: {err:.1e}')
    table = measured(f'{f"mmdet ResNet-{RESNETS[name]}" if name in RESNETS else name}, '
                     f'{args.batch}x3x{h}x{w}, {args.where}, inference', cases, args, notes,
                     2.0 * macs, args.batch)
    med = {r['name']: r['median'] for r in table.rows}
    for p in args.precisions:
        table.note += f'; default {p}: {med["default"] / med[f"default {p}"]:.2f}x faster than ' \
            'default' + (f', {med[f"eager, channels-last {p}"] / med[f"default {p}"]:.2f}x than '
                         f'eager, channels-last {p} (the original under autocast)'
                         if f'eager, channels-last {p}' in med else '')
    return [table]


def compile_rows(cases: Dict[str, Case], model, x) -> str:
    """Adds ``torch.compile`` of a copy of ``model``, without and with freezing; returns their
    compile seconds with an empty FX graph cache and from it (after a dynamo reset)."""
    seconds = []
    for case, freezing in (('compiled', False), ('compiled, freezing', True)):
        cache = tempfile.mkdtemp(prefix='metaformer_inductor_')
        with mock.patch.dict(os.environ, TORCHINDUCTOR_CACHE_DIR=cache):
            for _ in range(2):  # (the reset also makes earlier compiled cases recompile)
                torch._dynamo.reset()
                cases[case] = functools.partial(torch.compile(
                    copy.deepcopy(model), options={'freezing': freezing}), x)
                seconds.append(f'{first_call(cases[case], x.device.type):.0f}')
    return 'compile s cold / warm: compiled {} / {}, compiled, freezing {} / {}'.format(*seconds)


def onnx_rows(cases: Dict[str, Case], model, x, threads: int, deploy: bool) -> str:
    """Adds onnxruntime on ``model``'s ONNX export (deploy: folded); returns why not if not."""
    try:
        import onnxruntime as ort
        from metaformer_mm.cli.onnx import export_onnx
    except ImportError:
        return ''
    path = osp.join(tempfile.mkdtemp(prefix='metaformer_bench_'), 'backbone.onnx')
    try:
        export_onnx(copy.deepcopy(model), path, shape=tuple(x.shape[2:]), deploy=deploy)
    except Exception as err:  # e.g. an operator ONNX lacks: report and go on
        return f'no onnxruntime row: export failed ({str(err).splitlines()[0][:120]})'
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    # Idle threads that spin keep a core busy after each run, slowing the next case.
    opts.add_session_config_entry('session.intra_op.allow_spinning', '0')
    session = ort.InferenceSession(path, opts, providers=['CPUExecutionProvider'])
    cases['onnxruntime'] = functools.partial(session.run, None, {'input': x.numpy()})
    return ''


def train(name: str, args) -> List[Table]:
    """Training steps of one backbone: eager, default, with_cp, compiled, autocast."""
    model, what = build(name, args.device)
    model.train()
    ours, cpu = what == 'metaformer', args.device == 'cpu'
    h, w = args.shape or ((800, 1216) if cpu else (512, 512))
    batch = args.train_batch or (2 if cpu else 8)
    x = torch.randn(batch, 3, h, w, device=args.device)
    cases = {'eager': train_step(model, x, kernels='reference')} if ours and cpu else {}
    cases['default'] = train_step(model, x, args.device)
    if ours and cpu:
        cases['with_cp'] = train_step(model, x, with_cp=True)
    nets, notes = [('default', model, None)], []
    if ours and args.compile:
        # A copy: the eager case switches the kernels, which would recompile on each switch.
        torch._dynamo.reset()
        twin = copy.deepcopy(model)
        nets.append(('compiled', torch.compile(twin), twin))
    for label, net, owner in nets:
        for p, dtype in {'': None, **args.precisions}.items():
            case = f'{label} {p}'.strip()
            cases[case] = train_step(net, x, args.device, dtype, owner=owner)
            if owner is not None:  # the first step compiles forward and backward
                seconds = first_call(cases[case], args.device, grad=True)
                notes.append(f'{case}: first step {seconds:.0f} s')
    macs = conv_macs(model, lambda: run_with(model, 'reference' if ours else None, x[:1]))[0]
    # Forward and backward: three GEMMs per conv (output, input gradient, weight gradient).
    return [measured(f'{name}, training step (forward + backward), {batch}x3x{h}x{w}, '
                     f'{args.where}', cases, args,
                     [f'limit: 3 x conv MACs {macs * batch / 1e9:.1f} G', *notes],
                     6.0 * macs * batch, batch, grad=True, memory_vs={'with_cp': 'default'})]


def models(name: str, args) -> List[Table]:
    """``predict`` of one detector/segmentor: eager, default, deploy (cuda: bf16 too)."""
    from metaformer_mm.inference import enable_bf16_inference
    from metaformer_mm.models import MetaFormer
    model, scope = build(name, args.device)
    if args.device == 'cuda' and scope == 'mmdet':
        try:
            from mmcv.ops import nms
            nms(torch.rand(4, 4, device='cuda') * 10, torch.rand(4, device='cuda'), 0.5)
        except (RuntimeError, ImportError) as err:
            return [Table(f'{name}: skipped, mmcv CUDA ops not built ({err})')]
    h, w = args.shape or ((512, 512) if scope == 'mmseg' else (800, 1216))
    x = torch.randn(args.batch, 3, h, w, device=args.device)
    structures = __import__(f'{scope}.structures', fromlist=['DetDataSample'])
    sample = structures.SegDataSample if scope == 'mmseg' else structures.DetDataSample
    samples = [sample(metainfo=dict(
        img_shape=(h, w), ori_shape=(h, w), pad_shape=(h, w), batch_input_shape=(h, w),
        scale_factor=(1.0, 1.0), padding_size=[0, 0, 0, 0])) for _ in range(args.batch)]

    def predict(net, kernels=None) -> Case:
        return lambda: run_with(net, kernels, x, copy.deepcopy(samples), mode='predict')
    cases = {'eager': predict(model, 'reference')} if isinstance(model.backbone, MetaFormer) else {}
    cases['default'] = predict(model)
    if deployable(model.backbone):
        cases['deploy'] = predict(model, 'deploy')
    if args.device == 'cuda':
        cases['bf16 (enable_bf16_inference)'] = predict(enable_bf16_inference(
            copy.deepcopy(model)))
    macs = conv_macs(model, next(iter(cases.values())))[0]
    return [measured(
        f'{osp.basename(name)} ({type(model).__name__}, {type(model.backbone).__name__}), '
        f'{args.batch}x3x{h}x{w}, fp32, {args.where}, predict', cases, args,
        [f'conv/linear MACs {macs / 1e9:.1f} G (whole model)'], 2.0 * macs, args.batch)]


def pipeline_bf16(name: str, args) -> List[Table]:
    """fp32 against ``enable_bf16_inference`` through the inference API on the demo image."""
    from metaformer_mm.inference import bf16_state, enable_bf16_inference
    model, scope = build(name)
    if scope == 'mmseg':
        from mmseg.apis import inference_model as infer
    else:
        from mmdet.apis import inference_detector as infer
    image = osp.join(SHARED, 'data', 'demo', 'ade_demo.jpg' if scope == 'mmseg' else 'demo.jpg')
    if not osp.isfile(image):
        raise SystemExit(f'--suite bf16: no demo image {image} (set METAFORMER_SHARED)')
    fast = enable_bf16_inference(copy.deepcopy(model))
    label = 'bf16' if bf16_state(fast).use_bf16 else 'bf16 (no bf16 units: ran fp32)'
    return [measured(
        f'{name}, pipeline included ({infer.__name__} on {osp.basename(image)}), {args.where}',
        {'fp32': lambda: infer(model, image), label: lambda: infer(fast, image)}, args,
        ["random weights with the config's initialisation"])]


def step_hooks(model, itemsize: int, call: Dict[Tuple[int, int], List[float]]) -> list:
    """Hooks that add each block ``STEPS``' seconds, bytes and FLOPs to ``call[stage, step]``.
    Bytes: the least a step moves (input maps read and outputs written once, the MLP's weights
    once; its hidden activation stays in cache by design)."""
    handles = []
    for stage, layer in enumerate(model.stages):
        for block in layer.blocks:
            marks: List[tuple] = []  # (time, map) where each step starts, in call order

            def mark(module, args, *out, marks=marks):  # (a pre-hook has no ``out``)
                marks.append((time.perf_counter(), out[0] if out else args[0]))

            def finish(module, args, out, marks=marks, stage=stage, block=block):
                end = time.perf_counter()
                (t0, x), (t1, y), (t2, p), (t3, s), (t4, z) = marks
                marks.clear()
                nb = lambda t: t.numel() * t.element_size()  # noqa: E731
                weights = sum(w.numel() for w in block.mlp.parameters())
                moved = (nb(x) + nb(y), nb(y) + nb(p) if p is not y else 0,  # identity: nothing
                         nb(x) + nb(p) + nb(s), nb(s) + nb(z),
                         nb(z) + nb(s) + nb(out) + weights * itemsize)
                seconds = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, end - t4)
                flops = (0, 0, 0, 0, 2.0 * weights * z.numel() / z.shape[1])
                for step, figures in enumerate(zip(seconds, moved, flops)):
                    total = call.setdefault((stage, step), [0.0, 0.0, 0.0])
                    total[:] = [a + b for a, b in zip(total, figures)]
            handles += [block.register_forward_pre_hook(mark),
                        block.norm1.register_forward_hook(mark),
                        block.token_mixer.register_forward_hook(mark),
                        block.norm2.register_forward_pre_hook(mark),
                        block.norm2.register_forward_hook(mark),
                        block.register_forward_hook(finish)]
    return handles


def traffic(name: str, args) -> List[Table]:
    """Per precision, each block step's time and bytes (default path, channels-last input)."""
    model, _ = build(name)
    h, w = args.shape or (800, 1216)
    x = torch.randn(1, 3, h, w).contiguous(memory_format=torch.channels_last)
    calls: Dict[str, list] = {'fp32': [], 'bf16': []}  # per precision, per call: step figures

    def traced(p: str) -> Case:
        def run():
            calls[p].append({})
            handles = step_hooks(model, DTYPES[p].itemsize, calls[p][-1])
            try:
                return model(x)
            finally:
                for handle in handles:
                    handle.remove()
        return autocast(run, 'cpu', DTYPES[p] if p == 'bf16' else None)
    limits = Limits('cpu', tuple(calls), copy=True)
    with torch.no_grad():
        times = time_cases({p: traced(p) for p in calls}, args.repeats, args.warmup, 'cpu', limits)
    tables = []
    for p, (first, *_) in calls.items():
        table = Table(f'{name}, 1x3x{h}x{w}, {p}, per block step of the default path, '
                      f'{args.where}', f'{limits.describe(0, p)}; limit: the bytes at the copy '
                      'bandwidth, or the MLP FLOPs at the GEMM rate if larger')
        timed = calls[p][-args.repeats:]  # (the first calls are the warm-up)
        for (stage, step), (_, moved, flops) in first.items():
            row = table.add(f'{stage} {STEPS[step]}', [c[stage, step][0] for c in timed], None,
                            limits.seconds(flops, moved, p), **{'MB moved': moved / 1e6})
            row['extra']['GB/s'] = moved / max(row['median'], 1e-12) / 1e9
        table.add('blocks, all stages', [sum(v[0] for v in c.values()) for c in timed], None,
                  sum(r['limit_s'] for r in table.rows),
                  **{'MB moved': sum(v[1] for v in first.values()) / 1e6})
        table.add('whole backbone (stem, downsampling, output norms and copies included)',
                  times[p], None)
        tables.append(table)
    return tables


def plan(args) -> List[Tuple[Callable, str, argparse.Namespace]]:
    """(suite function, model, its options) of every table the chosen suites make, in order."""
    def names(suite: str, *kinds: str) -> List[str]:
        picked = SUITES[suite] if args.models is None else args.models
        return [n for n in picked if kind(n) in kinds] if suite in args.suite else []
    bf16, compiled = names('bf16', 'metaformer'), names('compile', 'metaformer')

    def job(fn: Callable, name: str, device: str = 'cpu', precisions: Optional[Dict] = None):
        where = f'{args.threads} threads' if device == 'cpu' else device  # for the titles
        return fn, name, argparse.Namespace(**{
            **vars(args), 'device': device, 'compile': name in compiled, 'where': where,
            'precisions': precisions or {},
            'repeats': args.repeats or (10 if device == 'cuda' else REPEATS[fn.__name__])})
    tabled = names('backbones', 'metaformer', 'backbone') + bf16 + (
        compiled if set(args.suite) == {'compile'} else [])
    jobs = [job(backbones, n, precisions={'bf16': torch.bfloat16} if n in bf16 else None)
            for n in dict.fromkeys(tabled)]
    jobs += [job(train, n) for n in names('train', 'metaformer', 'backbone')]
    jobs += [job(models, n) for n in names('models', 'config')]
    jobs += [job(pipeline_bf16, n) for n in names('bf16', 'config')]
    jobs += [job(traffic, n) for n in names('traffic', 'metaformer')]
    for n in names('cuda', 'metaformer', 'backbone', 'config'):
        jobs += [job(fn, n, 'cuda', AMP) for fn in ([models] if kind(n) == 'config'
                                                    else [backbones, train])]
    return jobs


def main(argv: Optional[List[str]] = None) -> List[Table]:
    args = parse_args(argv)
    if 'cuda' in args.suite and not torch.cuda.is_available():
        raise SystemExit('benchmark.py --suite cuda: no CUDA device')
    start(args.threads)
    torch.backends.cudnn.benchmark = True
    tables: List[Table] = []
    with open(args.out or os.devnull, 'w') as out:
        def emit(text: str) -> None:
            # Table by table, so that a run cut off by its time limit keeps what it measured.
            print(text + '\n', flush=True)
            out.write(text + '\n\n')
            out.flush()
        emit(f'machine: {machine_line("cuda" if "cuda" in args.suite else "cpu")}\n'
             f'suites: {" ".join(args.suite)}; threads {args.threads}, warm-up {args.warmup}')
        jobs = plan(args)
        from mmengine.logging import MMLogger
        for name in set(args.models or []) - {n for _, n, _ in jobs}:
            MMLogger.get_instance('benchmark').warning(f'no chosen suite measures {name}')
        for fn, name, run in jobs:
            try:
                made = fn(name, run)
            except ImportError as err:  # e.g. timm_NAME without timm: the other tables still run
                made = [Table(f'{name}: skipped ({err})')]
            for table in made:
                tables.append(table)
                emit(table.render())
        emit(f'load average at the end: {" / ".join(f"{v:.1f}" for v in os.getloadavg())}')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump([dict(title=t.title, note=t.note, rows=t.rows) for t in tables], f)
    return tables


if __name__ == '__main__':
    main()
