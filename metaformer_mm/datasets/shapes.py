"""A synthetic COCO-format instance dataset of coloured shapes, for ``make demo`` (no download).

Each image holds one to four whole, non-overlapping squares (tilted at most 20 degrees),
circles and triangles on a noisy gradient; each is drawn from the polygon written as its
mask. The same arguments give byte-identical files. Written under ``out_dir``::

    annotations/instances_{train,val}.json   train/000000.jpg ...   val/000000.jpg ..."""
import json
import math
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from mmengine.logging import MMLogger
from mmengine.utils import ProgressBar

from ..checkpoint import atomic_write

CLASSES: Tuple[str, ...] = ('square', 'circle', 'triangle')
# Bump when the drawing changes, so a stale dataset on disk is never taken for the current one.
GENERATOR_VERSION = 2
_CIRCLE_VERTICES = 32
_SUBPIXEL_SHIFT = 4  # cv2 draws polygon vertices with 1/16 px precision
_PROGRESS_STEP = 25
# Squares tilt by at most this (radians): a square turned 45 degrees reads as a diamond.
_SQUARE_MAX_TILT = np.pi / 9


def _polygon(kind: str, cx: float, cy: float, size: float, angle: float) -> np.ndarray:
    """Vertices (N, 2) of a shape about ``size`` wide, centred on (cx, cy)."""
    if kind == 'square':
        radius = size / 2 * math.sqrt(2)
        angles = angle + np.pi / 4 + np.arange(4) * np.pi / 2
    elif kind == 'circle':
        radius = size / 2
        angles = np.arange(_CIRCLE_VERTICES) * 2 * np.pi / _CIRCLE_VERTICES
    elif kind == 'triangle':
        radius = size / math.sqrt(3)  # an equilateral triangle with side `size`
        angles = angle - np.pi / 2 + np.arange(3) * 2 * np.pi / 3
    else:
        raise ValueError(f'unknown shape kind {kind!r}; allowed: {CLASSES}')
    return np.stack([cx + radius * np.cos(angles), cy + radius * np.sin(angles)], axis=1)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A dim two-colour gradient with pixel noise (uint8 BGR)."""
    c0, c1 = rng.uniform(10, 90, size=(2, 3))
    t = np.linspace(0, 1, size)
    direction = rng.uniform(0, 2 * np.pi)
    ramp = (np.cos(direction) * t[None, :] + np.sin(direction) * t[:, None])
    ramp = (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6)
    img = c0 + (c1 - c0) * ramp[..., None]
    img += rng.normal(0, 6, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def _bright_colour(rng: np.random.Generator) -> Tuple[int, int, int]:
    """A saturated, light colour (BGR)."""
    hsv = np.array([[[rng.integers(0, 180), rng.integers(150, 256), rng.integers(170, 256)]]],
                   dtype=np.uint8)
    return tuple(int(v) for v in cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0])


def _boxes_overlap(a: Sequence[float], b: Sequence[float], gap: float) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or
                a[3] + gap <= b[1] or b[3] + gap <= a[1])


def _draw_image(rng: np.random.Generator, image_size: int, max_shapes: int,
                size_range: Tuple[float, float]) -> Tuple[np.ndarray, List[Dict]]:
    """One image and its instances (``category_id``, ``polygon``, ``bbox`` as x1y1x2y2)."""
    img = _background(rng, image_size)
    instances: List[Dict] = []
    wanted = int(rng.integers(1, max_shapes + 1))
    for _ in range(wanted * 20):  # rejection sampling; a crowded image just gets fewer shapes
        if len(instances) == wanted:
            break
        label = int(rng.integers(len(CLASSES)))
        size = float(rng.uniform(*size_range))
        angle = float(rng.uniform(-_SQUARE_MAX_TILT, _SQUARE_MAX_TILT) if label == 0
                      else rng.uniform(0, 2 * np.pi))
        poly = _polygon(CLASSES[label], 0.0, 0.0, size, angle)
        # Whole shapes only: the centre is drawn so that every vertex is 2 px inside.
        low, high = 2 - poly.min(axis=0), image_size - 3 - poly.max(axis=0)
        if (low > high).any():
            continue
        poly = poly + rng.uniform(low, high)
        box = [*poly.min(axis=0), *poly.max(axis=0)]
        if any(_boxes_overlap(box, other['bbox'], gap=3) for other in instances):
            continue
        instances.append(dict(category_id=label + 1, polygon=poly, bbox=box,
                              colour=_bright_colour(rng)))
    for inst in instances:
        pts = np.round(inst['polygon'] * (1 << _SUBPIXEL_SHIFT)).astype(np.int32)
        cv2.fillPoly(img, [pts], inst['colour'], lineType=cv2.LINE_AA, shift=_SUBPIXEL_SHIFT)
    return img, instances


def _polygon_area(poly: np.ndarray) -> float:
    x, y = poly[:, 0], poly[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def _write_split(out_dir: str, split: str, num_images: int, rng: np.random.Generator,
                 image_size: int, max_shapes: int, size_range: Tuple[float, float],
                 info: Dict, progress: Optional[ProgressBar]) -> str:
    os.makedirs(osp.join(out_dir, split), exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        img, instances = _draw_image(rng, image_size, max_shapes, size_range)
        file_name = f'{image_id - 1:06d}.jpg'
        cv2.imwrite(osp.join(out_dir, split, file_name), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append(dict(id=image_id, file_name=file_name, width=image_size, height=image_size))
        for inst in instances:
            x1, y1, x2, y2 = (round(float(v), 2) for v in inst['bbox'])
            polygon = [round(float(v), 2) for v in inst['polygon'].reshape(-1)]
            annotations.append(dict(
                id=len(annotations) + 1, image_id=image_id, category_id=inst['category_id'],
                bbox=[x1, y1, round(x2 - x1, 2), round(y2 - y1, 2)],
                area=round(_polygon_area(inst['polygon']), 2),
                segmentation=[polygon], iscrowd=0))
        if progress is not None and (image_id % _PROGRESS_STEP == 0 or image_id == num_images):
            # one redraw per few images keeps the output short when it goes to a log file
            progress.update(image_id % _PROGRESS_STEP or _PROGRESS_STEP)
    coco = dict(info=dict(info, split=split), images=images, annotations=annotations,
                categories=[dict(id=i + 1, name=name, supercategory='shape')
                            for i, name in enumerate(CLASSES)])
    ann_file = osp.join(out_dir, 'annotations', f'instances_{split}.json')
    atomic_write(json.dumps(coco), ann_file)  # a half-written file never passes for a dataset
    return ann_file


def dataset_info(num_train: int, num_val: int, image_size: int, seed: int, max_shapes: int,
                 size_range: Tuple[float, float]) -> Dict:
    """The ``info`` block of both annotation files, which identifies a generated dataset."""
    return dict(description='metaformer_mm synthetic shapes', version=GENERATOR_VERSION,
                num_train=num_train, num_val=num_val, image_size=image_size, seed=seed,
                max_shapes=max_shapes, size_range=[float(s) for s in size_range])


def _is_complete(out_dir: str, info: Dict) -> bool:
    """Whether ``out_dir`` already holds exactly the dataset ``info`` describes."""
    for split, count in (('train', info['num_train']), ('val', info['num_val'])):
        ann_file = osp.join(out_dir, 'annotations', f'instances_{split}.json')
        try:
            with open(ann_file) as f:
                coco = json.load(f)
        except (OSError, ValueError):
            return False
        if coco.get('info') != dict(info, split=split) or len(coco.get('images', [])) != count:
            return False
        if not all(osp.isfile(osp.join(out_dir, split, im['file_name'])) for im in coco['images']):
            return False
    return True


def make_shapes_dataset(out_dir: str, num_train: int = 400, num_val: int = 100,
                        image_size: int = 160, seed: int = 0, max_shapes: int = 4,
                        size_range: Tuple[float, float] = (24, 64), progress: bool = True,
                        overwrite: bool = False) -> Dict[str, str]:
    """Writes the train and val splits of the shapes dataset (COCO format) under ``out_dir``
    unless it holds them already; returns ``{'train': ann_file, 'val': ann_file}``. ``seed`` is
    the only randomness; ``size_range``: side of squares and triangles, diameter of circles
    (pixels)."""
    if num_train < 1 or num_val < 1:
        raise ValueError(f'num_train and num_val must be >= 1, got {num_train}, {num_val}')
    if not 0 < size_range[0] <= size_range[1] <= image_size - 4:
        raise ValueError(f'size_range {size_range} must be increasing and fit in {image_size} px')
    if max_shapes < 1:
        raise ValueError(f'max_shapes must be >= 1, got {max_shapes}')
    logger = MMLogger.get_current_instance()
    info = dataset_info(num_train, num_val, image_size, seed, max_shapes, size_range)
    ann_files = {split: osp.join(out_dir, 'annotations', f'instances_{split}.json')
                 for split in ('train', 'val')}
    if not overwrite and _is_complete(out_dir, info):
        logger.info(f'shapes dataset already in {out_dir} (seed {seed}); not regenerating')
        return ann_files
    bar = ProgressBar(num_train + num_val) if progress else None
    train_rng, val_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    for split, count, rng in (('train', num_train, train_rng), ('val', num_val, val_rng)):
        _write_split(out_dir, split, count, rng, image_size, max_shapes, tuple(size_range),
                     info, bar)
    if bar is not None:
        bar.file.write('\n')
        bar.file.flush()
    logger.info(f'wrote {num_train} train and {num_val} val images of {CLASSES} to {out_dir}')
    return ann_files
