#!/usr/bin/env python
"""`make demo`: the product end to end on a fresh CPU machine, with no download.

    python tools/demo/run_demo.py [--iters 350] [--num-train 400] [--num-val 100]
                                  [--data-root data/shapes] [--work-dir work_dirs/demo]

1. writes the synthetic shapes dataset (COCO format; the same bytes for the same seed);
2. trains RetinaNet + PoolFormer-S12 on it with ``tools/train.py`` (mmengine's Runner, with
   its progress/ETA log lines), validating with ``CocoMetric``;
3. prints the bbox mAP of the final validation;
4. runs mmdet's inference API on a val image (``demo/image_demo.py``) and saves the picture:
   the ground truth beside the predictions scoring at least ``--score-thr``, highest on top;
5. plots the training curves (``tools/analysis/plot_logs.py``).
Every step is the same command a user would type; ``--iters`` shortens the run for tests.
"""
import argparse
import glob
import json
import os
import os.path as osp
import subprocess
import sys
import time
from typing import Dict, List, Optional

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEFAULT_CONFIG = osp.join(REPO, 'configs', 'detection', 'demo', 'retinanet_poolformer_s12_shapes.py')
WARMUP_FRACTION = 1 / 7  # the config's 50 of 350 iterations


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--iters', type=int, default=350, help='training iterations (batch 8)')
    parser.add_argument('--val-interval', type=int, default=None,
                        help='validate every N iterations (default: 5 times per run)')
    parser.add_argument('--num-train', type=int, default=400, help='training images to generate')
    parser.add_argument('--num-val', type=int, default=100, help='validation images to generate')
    parser.add_argument('--seed', type=int, default=0, help='seed of the dataset and the training')
    parser.add_argument('--data-root', default=osp.join(REPO, 'data', 'shapes'))
    parser.add_argument('--work-dir', default=osp.join(REPO, 'work_dirs', 'demo'))
    parser.add_argument('--config', default=DEFAULT_CONFIG)
    # 0.5: the boxes a trained demo model is sure of; its wrong-class duplicates of an object
    # score lower (they cost little mAP, which ranks by score, but would clutter the picture).
    parser.add_argument('--score-thr', type=float, default=0.5,
                        help='score threshold of the boxes drawn on the prediction picture')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='more overrides for tools/train.py, e.g. train_dataloader.batch_size=4')
    args = parser.parse_args(argv)
    if args.iters < 1:
        parser.error('--iters must be >= 1')
    return args


def _show(path: str) -> str:
    """``path`` relative to the current directory when it lies below it (shorter to read)."""
    rel = osp.relpath(path)
    return path if rel.startswith('..') else rel


def _run(cmd: List[str], phase: str) -> None:
    print(f'\n$ {" ".join(_show(c) if osp.exists(c) else c for c in cmd)}', flush=True)
    result = subprocess.run(cmd, cwd=REPO)
    if result.returncode != 0:
        sys.exit(f'demo failed while {phase} (exit code {result.returncode}); see the output above')


def _banner(text: str) -> None:
    print(f'\n=== {text} ' + '=' * max(0, 70 - len(text)), flush=True)


def train_options(args: argparse.Namespace) -> List[str]:
    """``--cfg-options`` pointing the config at the data root and scaling its schedule."""
    root = args.data_root.rstrip('/') + '/'
    iters = args.iters
    # LinearLR needs two steps to leave its start factor; short runs keep that minimum.
    warmup = max(2, min(50, round(iters * WARMUP_FRACTION)))
    val_interval = args.val_interval or max(1, -(-iters // 5))
    options = [f'{split}_dataloader.dataset.data_root={root}' for split in ('train', 'val', 'test')]
    options += [f'{split}_evaluator.ann_file={root}annotations/instances_val.json'
                for split in ('val', 'test')]
    options += [
        f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={val_interval}',
        f'param_scheduler.0.end={warmup}',
        f'param_scheduler.1.begin={warmup}', f'param_scheduler.1.end={max(iters, warmup + 1)}',
        f'default_hooks.checkpoint.interval={iters}',
        f'randomness.seed={args.seed}',
    ]
    return options + list(args.cfg_options)


def latest_run(work_dir: str) -> str:
    """The newest ``<timestamp>`` run folder of an mmengine work dir that has a scalars log."""
    runs = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))
    if not runs:
        sys.exit(f'no training log (*/vis_data/scalars.json) found in {work_dir}')
    return osp.dirname(osp.dirname(runs[-1]))


def final_metrics(run_dir: str) -> Dict[str, float]:
    """The last validation record of a run (``coco/bbox_mAP`` ...), from mmengine's JSON log."""
    last = None
    with open(osp.join(run_dir, 'vis_data', 'scalars.json')) as f:
        for line in f:
            record = json.loads(line)
            if any(k.startswith('coco/') for k in record):
                last = record
    if last is None:
        sys.exit(f'the run in {run_dir} logged no CocoMetric result')
    return last


def pick_val_image(data_root: str) -> str:
    """The val image with the most shapes (the first of those): the most telling picture."""
    with open(osp.join(data_root, 'annotations', 'instances_val.json')) as f:
        coco = json.load(f)
    counts = {im['id']: 0 for im in coco['images']}
    for ann in coco['annotations']:
        counts[ann['image_id']] += 1
    best = max(coco['images'], key=lambda im: (counts[im['id']], -im['id']))
    return osp.join(data_root, 'val', best['file_name'])


def main(argv: Optional[List[str]] = None) -> Dict:
    args = parse_args(argv)
    args.data_root, args.work_dir = osp.abspath(args.data_root), osp.abspath(args.work_dir)
    os.makedirs(args.work_dir, exist_ok=True)
    times: Dict[str, float] = {}
    start_all = time.perf_counter()

    _banner(f'1/4 dataset: {args.num_train} + {args.num_val} images of shapes -> '
            f'{_show(args.data_root)}')
    t = time.perf_counter()
    from metaformer_mm.datasets.shapes import make_shapes_dataset
    make_shapes_dataset(args.data_root, num_train=args.num_train, num_val=args.num_val,
                        seed=args.seed)
    times['dataset'] = time.perf_counter() - t

    _banner(f'2/4 training RetinaNet + PoolFormer-S12 (random init) for {args.iters} iterations')
    t = time.perf_counter()
    _run([sys.executable, osp.join(REPO, 'tools', 'train.py'), args.config,
          '--work-dir', args.work_dir, '--cfg-options', *train_options(args)], 'training')
    times['train+val'] = time.perf_counter() - t
    run_dir = latest_run(args.work_dir)
    metrics = final_metrics(run_dir)
    with open(osp.join(args.work_dir, 'last_checkpoint')) as f:
        checkpoint = f.read().strip()
    dumped_config = osp.join(args.work_dir, osp.basename(args.config))
    print(f'\nbbox mAP@[0.5:0.95] = {metrics["coco/bbox_mAP"]:.3f}   '
          f'mAP@0.5 = {metrics["coco/bbox_mAP_50"]:.3f}   '
          f'mAP@0.75 = {metrics["coco/bbox_mAP_75"]:.3f}   (CocoMetric, {args.num_val} val images)')

    _banner('3/4 inference with mmdet\'s API on a val image')
    t = time.perf_counter()
    image = pick_val_image(args.data_root)
    prediction = osp.join(args.work_dir, 'prediction.jpg')
    _run([sys.executable, osp.join(REPO, 'demo', 'image_demo.py'), image, dumped_config,
          checkpoint, '--out-file', prediction, '--score-thr', str(args.score_thr),
          '--gt-ann', osp.join(args.data_root, 'annotations', 'instances_val.json')],
         'inference')
    times['inference'] = time.perf_counter() - t

    _banner('4/4 training curves')
    t = time.perf_counter()
    curves = osp.join(args.work_dir, 'training_curves.png')
    _run([sys.executable, osp.join(REPO, 'tools', 'analysis', 'plot_logs.py'), run_dir,
          '--keys', 'loss', 'lr', 'bbox_mAP', 'bbox_mAP_50', '--out-file', curves], 'plotting')
    times['plot'] = time.perf_counter() - t
    times['total'] = time.perf_counter() - start_all

    summary = dict(metrics={k: v for k, v in metrics.items() if k.startswith('coco/')},
                   iters=args.iters, num_train=args.num_train, num_val=args.num_val,
                   seconds={k: round(v, 1) for k, v in times.items()},
                   checkpoint=checkpoint, prediction=prediction, curves=curves, run_dir=run_dir)
    with open(osp.join(args.work_dir, 'demo_summary.json'), 'w') as f:
        json.dump(summary, f, indent=2)

    _banner('done')
    print(f'bbox mAP@[0.5:0.95] {metrics["coco/bbox_mAP"]:.3f}, mAP@0.5 '
          f'{metrics["coco/bbox_mAP_50"]:.3f} after {args.iters} iterations')
    print('time: ' + ', '.join(f'{k} {v / 60:.1f} min' if v >= 60 else f'{k} {v:.0f} s'
                               for k, v in times.items()))
    print(f'checkpoint:  {_show(checkpoint)}')
    print(f'prediction:  {_show(prediction)}')
    print(f'curves:      {_show(curves)}')
    print(f'summary:     {_show(osp.join(args.work_dir, "demo_summary.json"))}')
    return summary


if __name__ == '__main__':
    main()
