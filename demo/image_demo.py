#!/usr/bin/env python
"""Run a detector (mmdet) or segmentor (mmseg) config + checkpoint on one image and save a picture.

    python demo/image_demo.py IMAGE CONFIG CHECKPOINT [--out-file OUT.jpg] [--device cpu]
                              [--score-thr 0.3]

The task follows the config's ``default_scope``: ``mmdet`` draws boxes (and masks when the
detector predicts them) with mmdet's inference API, ``mmseg`` draws the class map with mmseg's.
"""
import argparse
import os
import os.path as osp
import sys
import warnings
from typing import List, Optional

warnings.filterwarnings('ignore', message='pkg_resources is deprecated')


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('image', help='image file')
    parser.add_argument('config', help='detection or segmentation config')
    parser.add_argument('checkpoint', help='checkpoint of that model (ours or a released one)')
    parser.add_argument('--out-file', default=None,
                        help='picture to write (default: <image name>_pred.jpg here)')
    parser.add_argument('--device', default='cpu', help='e.g. cpu, cuda:0')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: draw boxes scoring at least this')
    parser.add_argument('--min-side', type=int, default=480,
                        help='detection: draw small images enlarged to at least this many pixels')
    parser.add_argument('--opacity', type=float, default=0.5,
                        help='segmentation: opacity of the class map over the image')
    return parser.parse_args(argv)


def _checkpoint_for(path: str, scope: str, tmp_dir: str) -> str:
    """``path``, or a converted copy when it is a released mmdet 2.x / mmseg 0.x file."""
    from metaformer_mm.checkpoint import (atomic_save, convert_detector_checkpoint,
                                          detector_backbone_layout, detector_dataset_meta,
                                          extract_state_dict, read_checkpoint)
    raw = read_checkpoint(path)
    state = extract_state_dict(raw, path)
    if detector_backbone_layout(state) in (None, 'metaformer_mm'):
        return path  # ours (or not a MetaFormer model): mmengine loads it as it is
    kind = {'mmdet': 'mmdet2', 'mmseg': 'mmseg0'}[scope]
    out = osp.join(tmp_dir, 'converted.pth')
    atomic_save({'state_dict': convert_detector_checkpoint(state, kind),
                 'meta': {'dataset_meta': detector_dataset_meta(raw)}}, out)
    print(f'{path}: a {kind} release, converted to this project\'s keys')
    return out


def _enlarged(image, result, min_side: int):
    """Image and predictions scaled up so that the shorter side is at least ``min_side``.

    Small images (e.g. the 160x160 demo shapes) would otherwise get labels wider than
    their objects; only the picture changes, not the predictions printed.
    """
    import math

    import mmcv
    import torch.nn.functional as F
    factor = math.ceil(min_side / min(image.shape[:2]))
    if factor <= 1:
        return image, result
    image = mmcv.imrescale(image, factor, interpolation='bicubic')
    result = result.clone()
    pred = result.pred_instances
    pred.bboxes = pred.bboxes * factor
    if 'masks' in pred and len(pred.masks):
        masks = F.interpolate(pred.masks[None].float(), size=image.shape[:2], mode='nearest')[0]
        pred.masks = masks.bool()
    return image, result


def detect(args: argparse.Namespace, checkpoint: str) -> str:
    """mmdet: boxes (and masks) above ``--score-thr``; returns a one-line summary."""
    import mmcv
    from mmdet.apis import inference_detector, init_detector
    from mmdet.registry import VISUALIZERS

    model = init_detector(args.config, checkpoint, device=args.device)
    result = inference_detector(model, args.image)
    # Only the picture is wanted: no visualizer backend writing elsewhere.
    visualizer = VISUALIZERS.build(dict(model.cfg.visualizer, vis_backends=None,
                                        name='image_demo'))
    visualizer.dataset_meta = model.dataset_meta
    image = mmcv.imread(args.image, channel_order='rgb')
    image, drawn = _enlarged(image, result.cpu(), args.min_side)
    visualizer.add_datasample('prediction', image, data_sample=drawn, draw_gt=False, show=False,
                              pred_score_thr=args.score_thr, out_file=args.out_file)
    pred = result.pred_instances
    keep = pred.scores >= args.score_thr
    classes = model.dataset_meta.get('classes') or []
    found = [f'{classes[int(label)] if int(label) < len(classes) else int(label)} {float(s):.2f}'
             for label, s in zip(pred.labels[keep], pred.scores[keep])]
    return f'{len(found)} objects with score >= {args.score_thr}: {", ".join(found) or "none"}'


def segment(args: argparse.Namespace, checkpoint: str) -> str:
    """mmseg: the per-pixel class map over the image; returns a one-line summary."""
    import torch
    from mmseg.apis import inference_model, init_model, show_result_pyplot

    model = init_model(args.config, checkpoint, device=args.device)
    result = inference_model(model, args.image)
    show_result_pyplot(model, args.image, result, opacity=args.opacity, show=False,
                       out_file=args.out_file, with_labels=False)
    labels, counts = torch.unique(result.pred_sem_seg.data, return_counts=True)
    classes = model.dataset_meta.get('classes') or []
    top = sorted(zip(counts.tolist(), labels.tolist()), reverse=True)[:5]
    total = int(counts.sum())
    names = [f'{classes[c] if c < len(classes) else c} {n / total:.0%}' for n, c in top]
    return f'{len(labels)} classes in the image; largest: {", ".join(names)}'


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)
    import tempfile

    import metaformer_mm  # noqa: F401  (registers the backbones; safe checkpoint loading)
    from metaformer_mm.checkpoint import CheckpointError
    from metaformer_mm.cli.config import ToolError, load_config

    for path, what in ((args.image, 'image'), (args.config, 'config'),
                       (args.checkpoint, 'checkpoint')):
        if not osp.isfile(path):
            sys.exit(f'error: {what} file not found: {path}')
    if args.out_file is None:
        args.out_file = osp.splitext(osp.basename(args.image))[0] + '_pred.jpg'
    out_dir = osp.dirname(osp.abspath(args.out_file))
    os.makedirs(out_dir, exist_ok=True)
    try:
        scope = load_config(args.config).default_scope
        with tempfile.TemporaryDirectory() as tmp_dir:
            checkpoint = _checkpoint_for(args.checkpoint, scope, tmp_dir)
            summary = detect(args, checkpoint) if scope == 'mmdet' else segment(args, checkpoint)
    except (ToolError, CheckpointError) as err:
        sys.exit(f'error: {err}')
    print(summary)
    print(f'prediction written to {args.out_file}')
    return summary


if __name__ == '__main__':
    main()
