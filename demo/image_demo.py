#!/usr/bin/env python
"""Run a detector (mmdet) or segmentor (mmseg) config + checkpoint on one image and save a picture.

    python demo/image_demo.py IMAGE CONFIG|MODEL_NAME [CHECKPOINT] [--out-file OUT.jpg]
                              [--device cpu] [--score-thr 0.3] [--gt-ann COCO.json]

CONFIG may be a model name of the index (``retinanet_poolformer_s12``, see
``python tools/model_zoo.py list``); without CHECKPOINT the index's released weights are used
when there is a direct download. The task follows the config's ``default_scope``: ``mmdet``
draws boxes (and masks when the detector predicts them) with mmdet's inference API, highest
scores drawn last (on top), with the ground truth of ``--gt-ann`` beside them; ``mmseg`` draws
the class map with mmseg's. Pictures are drawn at a bounded size: the long side at most
``--max-side`` pixels (large images are shrunk for drawing only; the predictions, and the
summary printed, come from the full image) and small images enlarged to ``--min-side``.
"""
import argparse
import os.path as osp
import sys
import warnings
from typing import List, Optional

warnings.filterwarnings('ignore', message='pkg_resources is deprecated')

# Longest side of a drawn picture: a 12000x9000 photo drawn at full size by mmengine's
# matplotlib-based visualizer peaks at ~14 GB, while inference on it needs ~1.2 GB.
MAX_SIDE = 2048


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('image', help='image file')
    parser.add_argument('config', help='detection or segmentation config, or a model name')
    parser.add_argument('checkpoint', nargs='?', default=None,
                        help='checkpoint of that model (ours or a released one); default: the '
                             "model index's released weights of a model name")
    parser.add_argument('--out-file', default=None,
                        help='picture to write (default: <image name>_pred.jpg here)')
    parser.add_argument('--device', default='cpu', help='e.g. cpu, cuda:0')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='detection: draw boxes scoring at least this')
    parser.add_argument('--min-side', type=int, default=480,
                        help='detection: draw small images enlarged to at least this many pixels')
    parser.add_argument('--max-side', type=int, default=MAX_SIDE,
                        help='draw at most this many pixels along the long side (large images '
                             'are shrunk for drawing; drawing at full size takes many GB)')
    parser.add_argument('--gt-ann', default=None,
                        help='detection: COCO annotation file holding the image; its boxes are '
                             'drawn beside the predictions')
    parser.add_argument('--bf16', action='store_true',
                        help='network in bf16 (CPUs with bf16 units, CUDA), post-processing in '
                             'fp32 (metaformer_mm.enable_bf16_inference)')
    parser.add_argument('--opacity', type=float, default=0.5,
                        help='segmentation: opacity of the class map over the image')
    return parser.parse_args(argv)


def _drawing_scale(height: int, width: int, min_side: int, max_side: int) -> float:
    """Scale factor of the picture: small images enlarged (whole factors, so labels fit their
    objects), large ones shrunk so that the long side is at most ``max_side``."""
    import math
    factor = 1.0
    if min(height, width) < min_side:
        factor = float(math.ceil(min_side / min(height, width)))
    return min(factor, max_side / max(height, width))


def _nearest(data, size):
    """``data[..., H, W]`` resampled to ``size`` by nearest neighbour (any dtype; memory of the
    output only, never a float copy of a full-size map)."""
    import torch
    height, width = data.shape[-2:]
    rows = (torch.arange(size[0]) * height // size[0]).to(data.device)
    cols = (torch.arange(size[1]) * width // size[1]).to(data.device)
    return data.index_select(-2, rows).index_select(-1, cols)


def _scaled_instances(instances, factor: float, size):
    """Boxes (and masks) of ``instances`` in a picture scaled by ``factor`` to ``size``."""
    import torch
    instances = instances.clone()
    instances.bboxes = instances.bboxes * factor
    if 'masks' in instances:
        masks = instances.masks
        if not isinstance(masks, torch.Tensor):  # BitmapMasks of ground truth
            masks = torch.from_numpy(masks.to_ndarray())
        instances.masks = (torch.stack([_nearest(m, size) for m in masks]) if len(masks)
                           else masks.new_zeros((0, *size)))
    return instances


def _ground_truth(ann_file: str, image_path: str, classes, device):
    """The boxes of ``image_path`` in a COCO annotation file, labelled by ``classes``."""
    import json

    import torch
    from mmengine.structures import InstanceData
    with open(ann_file) as f:
        coco = json.load(f)
    name = osp.basename(image_path)
    image = next((im for im in coco.get('images', []) if osp.basename(im['file_name']) == name),
                 None)
    if image is None:
        raise ValueError(f'--gt-ann {ann_file}: no image named {name}')
    names = {c['id']: c['name'] for c in coco.get('categories', [])}
    boxes, labels = [], []
    for ann in coco.get('annotations', []):
        if ann['image_id'] == image['id'] and names.get(ann['category_id']) in classes:
            x, y, w, h = ann['bbox']
            boxes.append([x, y, x + w, y + h])
            labels.append(list(classes).index(names[ann['category_id']]))
    return InstanceData(bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        labels=torch.tensor(labels, dtype=torch.long)).to(device)


def _with_titles(picture, titles):
    """``picture`` (panels side by side, equal widths) with a title strip above each panel."""
    import cv2
    import numpy as np
    height = 24
    strip = np.full((height, picture.shape[1], 3), 255, dtype=np.uint8)
    width = picture.shape[1] // len(titles)
    for i, title in enumerate(titles):
        cv2.putText(strip, title, (i * width + 6, 17), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0),
                    1, cv2.LINE_AA)
    return np.concatenate([strip, picture], axis=0)


def detect(args: argparse.Namespace, config: str, checkpoint: str) -> str:
    """mmdet: boxes (and masks) scoring at least ``--score-thr``, highest drawn last; the
    ground truth of ``--gt-ann`` beside them. Returns a one-line summary."""
    import mmcv
    from mmdet.apis import inference_detector, init_detector
    from mmdet.registry import VISUALIZERS

    model = init_detector(config, checkpoint, device=args.device)
    if args.bf16:
        from metaformer_mm.inference import enable_bf16_inference
        enable_bf16_inference(model)
    result = inference_detector(model, args.image).cpu()
    classes = model.dataset_meta.get('classes') or []
    pred = result.pred_instances
    # Kept boxes in ascending score order: mmdet draws in order, so the most confident box
    # and its label end up on top of any weaker, overlapping one.
    pred = pred[pred.scores >= args.score_thr]
    pred = pred[pred.scores.argsort()]

    image = mmcv.imread(args.image, channel_order='rgb')
    height, width = image.shape[:2]
    factor = _drawing_scale(height, width, args.min_side, args.max_side)
    size = (max(1, round(height * factor)), max(1, round(width * factor)))
    if factor != 1:
        image = mmcv.imresize(image, size[::-1],
                              interpolation='bicubic' if factor > 1 else 'area')
    drawn = result.clone()
    drawn.pred_instances = _scaled_instances(pred, factor, size)
    if args.gt_ann:
        gt = _ground_truth(args.gt_ann, args.image, classes, 'cpu')
        drawn.gt_instances = _scaled_instances(gt, factor, size)
    # Only the picture is wanted: no visualizer backend writing elsewhere.
    visualizer = VISUALIZERS.build(dict(model.cfg.visualizer, vis_backends=None,
                                        name='image_demo'))
    visualizer.dataset_meta = model.dataset_meta
    visualizer.add_datasample('prediction', image, data_sample=drawn, draw_gt=bool(args.gt_ann),
                              show=False, pred_score_thr=float('-inf'))
    picture = visualizer.get_image()
    if args.gt_ann:
        picture = _with_titles(picture, [f'ground truth: {len(gt)} objects',
                                         f'prediction: score >= {args.score_thr}'])
    mmcv.imwrite(mmcv.rgb2bgr(picture), args.out_file)
    found = [f'{classes[int(label)] if int(label) < len(classes) else int(label)} {float(s):.2f}'
             for label, s in zip(pred.labels.flip(0), pred.scores.flip(0))]
    return f'{len(found)} objects with score >= {args.score_thr}: {", ".join(found) or "none"}'


def segment(args: argparse.Namespace, config: str, checkpoint: str) -> str:
    """mmseg: the per-pixel class map over the image; returns a one-line summary."""
    import mmcv
    import torch
    from mmengine.structures import PixelData
    from mmseg.apis import inference_model, init_model, show_result_pyplot

    model = init_model(config, checkpoint, device=args.device)
    if args.bf16:
        from metaformer_mm.inference import enable_bf16_inference
        enable_bf16_inference(model)
    result = inference_model(model, args.image)
    labels, counts = torch.unique(result.pred_sem_seg.data, return_counts=True)
    image = mmcv.imread(args.image, channel_order='rgb')
    height, width = image.shape[:2]
    factor = min(1.0, args.max_side / max(height, width))
    drawn = result.cpu()
    if factor < 1:  # shrink image and class map together, for drawing only
        size = (max(1, round(height * factor)), max(1, round(width * factor)))
        image = mmcv.imresize(image, size[::-1], interpolation='area')
        drawn = drawn.clone()
        drawn.pred_sem_seg = PixelData(data=_nearest(drawn.pred_sem_seg.data, size))
        if 'seg_logits' in drawn:
            del drawn.seg_logits
    show_result_pyplot(model, image, drawn, opacity=args.opacity, show=False,
                       out_file=args.out_file, with_labels=False)
    classes = model.dataset_meta.get('classes') or []
    top = sorted(zip(counts.tolist(), labels.tolist()), reverse=True)[:5]
    total = int(counts.sum())
    names = [f'{classes[c] if c < len(classes) else c} {n / total:.0%}' for n, c in top]
    return f'{len(labels)} classes in the image; largest: {", ".join(names)}'


def _resolve(args: argparse.Namespace) -> tuple:
    """(config path, checkpoint path or URL) from the arguments; names through the index."""
    from metaformer_mm.zoo import model_info, model_weights, resolve_config
    config = resolve_config(args.config)
    checkpoint = args.checkpoint
    if checkpoint is None:
        if osp.isfile(args.config):
            raise ValueError('a CHECKPOINT is needed with a config file (only model names '
                             'have released weights in the index)')
        entry = model_info(args.config)
        checkpoint = model_weights(args.config)
        if checkpoint is None:
            page = entry.get('Download Page')
            raise ValueError(f'{entry["Name"]} has no directly downloadable checkpoint'
                             + (f'; download it by hand from {page} and pass its path'
                                if page else '; pass the path of a trained one'))
    elif '://' not in checkpoint and not osp.isfile(checkpoint):
        raise FileNotFoundError(f'checkpoint file not found: {checkpoint}')
    return config, checkpoint


def _device_problem(device: str) -> Optional[str]:
    """Why ``--device`` cannot run the model here; None when it can."""
    import torch
    try:
        parsed = torch.device(device)
    except RuntimeError:
        return 'not a device name (e.g. cpu, cuda, cuda:0)'
    if parsed.type != 'cuda':
        return None
    if not torch.cuda.is_available():
        return ('CUDA is not available on this machine (no GPU, or a CPU-only torch); use '
                '--device cpu')
    if parsed.index is not None and parsed.index >= torch.cuda.device_count():
        return f'there are {torch.cuda.device_count()} CUDA devices (cuda:0 ...)'
    return None


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)
    import metaformer_mm  # noqa: F401  (registers the backbones; safe checkpoint loading)
    from metaformer_mm.checkpoint import CheckpointError
    from metaformer_mm.cli.config import ToolError, load_config, output_file

    if not osp.isfile(args.image):
        sys.exit(f'error: image file not found: {args.image}')
    import cv2
    # header check only (no decoding): an empty or non-image file would otherwise end in a
    # cv2 error deep in the pipeline that does not name the file
    if osp.getsize(args.image) == 0 or not cv2.haveImageReader(args.image):
        sys.exit(f'error: cannot read image {args.image}: empty or not an image file')
    if args.gt_ann and not osp.isfile(args.gt_ann):
        sys.exit(f'error: --gt-ann file not found: {args.gt_ann}')
    if args.max_side < 16:
        sys.exit(f'error: --max-side must be at least 16, got {args.max_side}')
    # (written as "not in range" so that nan is refused too)
    for option, value in (('--score-thr', args.score_thr), ('--opacity', args.opacity)):
        if not 0 <= value <= 1:
            sys.exit(f'error: {option} must be in [0, 1], got {value}')
    if args.min_side < 1:
        sys.exit(f'error: --min-side must be at least 1, got {args.min_side}')
    why = _device_problem(args.device)
    if why:
        sys.exit(f'error: --device {args.device}: {why}')
    try:
        config, checkpoint = _resolve(args)
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f'error: {err}')
    if args.out_file is None:
        args.out_file = osp.splitext(osp.basename(args.image))[0] + '_pred.jpg'
    try:  # before inference: a picture that cannot be written is known now
        output_file(args.out_file, '--out-file')
    except ToolError as err:
        sys.exit(f'error: {err}')
    if not cv2.haveImageWriter(args.out_file):
        sys.exit(f'error: --out-file {args.out_file}: no image format for the extension '
                 f'{osp.splitext(args.out_file)[1]!r}; use .jpg or .png')
    try:
        # Released mmdet 2.x / mmseg 0.x files load as they are: the backbone converts them.
        scope = load_config(config).default_scope
        summary = (detect(args, config, checkpoint) if scope == 'mmdet'
                   else segment(args, config, checkpoint))
    except (ToolError, CheckpointError, ValueError) as err:
        sys.exit(f'error: {err}')
    print(summary)
    print(f'prediction written to {args.out_file}')
    return summary


if __name__ == '__main__':
    main()
