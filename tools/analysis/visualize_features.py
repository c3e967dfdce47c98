#!/usr/bin/env python
"""Draw the four ``fork_feat`` maps of a config's backbone over an image, in one picture.

    python tools/analysis/visualize_features.py IMAGE CONFIG [CHECKPOINT] --out-file F.png

One panel per stage (channel mean, stride and shape): trained weights give maps that follow
the objects, random ones (no CHECKPOINT) texture. CHECKPOINT: a whole detector/segmentor
checkpoint (its ``backbone.*``) or a backbone file in any supported layout.
"""
import argparse
import os
import os.path as osp
import sys
import warnings
from typing import Dict, List, Optional

warnings.filterwarnings('ignore', message='pkg_resources is deprecated')

# How channels become one map (B, C, H, W) -> (H, W).
REDUCTIONS = {'mean': lambda f: f.mean(dim=1)[0], 'absmean': lambda f: f.abs().mean(dim=1)[0],
              'l2': lambda f: f.pow(2).sum(dim=1).sqrt()[0]}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('image', help='image file')
    parser.add_argument('config', help='detection or segmentation config with a MetaFormer '
                        'backbone: a file, a model name or a metaformer_mm:: path')
    parser.add_argument('checkpoint', nargs='?', default=None,
                        help='whole-model or backbone checkpoint (default: random weights)')
    parser.add_argument('--out-file', required=True, help='PNG to write')
    parser.add_argument('--size', type=int, default=512,
                        help='resize the longer image side to this (a multiple of 32 is used)')
    parser.add_argument('--reduce', choices=REDUCTIONS, default='mean',
                        help='how channels become one map: mean, mean of |x|, or L2 norm')
    parser.add_argument('--alpha', type=float, default=0.55, help='opacity of the heat map')
    return parser.parse_args(argv)


def build_backbone(config: str, checkpoint: Optional[str]):
    """The config's backbone with all four outputs, weights from ``checkpoint`` if given."""
    from metaformer_mm.cli.config import ToolError, load_config
    from metaformer_mm.cli.models import build_model_from_config, load_backbone_weights
    from metaformer_mm.models import MetaFormer
    cfg = load_config(config)
    if not cfg.model.backbone.get('fork_feat', True):
        raise ToolError('the backbone has fork_feat=False: it returns no feature maps')
    backbone = build_model_from_config(cfg, part='backbone',
                                       backbone_overrides=dict(out_indices=(0, 1, 2, 3)))
    if not isinstance(backbone, MetaFormer):
        raise ToolError(f'{cfg.model.backbone.type} is not a MetaFormer backbone of this project')
    report = load_backbone_weights(backbone, checkpoint) if checkpoint else None
    return backbone, cfg, report  # (in eval mode, as built)


def preprocess(image_path: str, cfg, size: int):
    """Image (RGB uint8, resized) and the normalized input tensor, as the model's preprocessor."""
    import mmcv
    import numpy as np
    import torch
    image = mmcv.imread(image_path, channel_order='rgb')
    if image is None:
        raise FileNotFoundError(f'cannot read image {image_path}')
    h, w = image.shape[:2]
    new_h, new_w = (max(32, int(round(d * size / max(h, w) / 32)) * 32) for d in (h, w))
    image = mmcv.imresize(image, (new_w, new_h))
    prep = cfg.model.get('data_preprocessor') or {}
    mean = np.array(prep.get('mean', [123.675, 116.28, 103.53]), dtype=np.float32)
    std = np.array(prep.get('std', [58.395, 57.12, 57.375]), dtype=np.float32)
    # The configs' bgr_to_rgb turns mmcv's BGR loads into RGB: `image` already is RGB.
    x = (image.astype(np.float32) - mean) / std
    return image, torch.from_numpy(x).permute(2, 0, 1)[None].contiguous()


def draw(image, feats, out_file: str, how: str, alpha: float, title: str) -> None:
    """The four maps, each min-max scaled, as a 2x2 picture over ``image``."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np
    import torch.nn.functional as F
    h, w = image.shape[:2]
    fig, axes = plt.subplots(2, 2, figsize=(10, 10 * h / w + 0.8))
    for i, (ax, feat) in enumerate(zip(axes.flat, feats)):
        heat = F.interpolate(REDUCTIONS[how](feat)[None, None], size=(h, w), mode='bilinear',
                             align_corners=False)[0, 0].numpy()
        lo, hi = float(heat.min()), float(heat.max())
        heat = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
        ax.imshow(image)
        ax.imshow(heat, cmap='jet', alpha=alpha, vmin=0, vmax=1)
        c, fh, fw = feat.shape[1:]
        ax.set_title(f'stage {i}: stride {round(h / fh)}, {c}x{fh}x{fw}', fontsize=11)
        ax.axis('off')
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(out_file)), exist_ok=True)
    fig.savefig(out_file, dpi=80)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> Dict:
    args = parse_args(argv)
    import torch
    from metaformer_mm.checkpoint import CheckpointError
    from metaformer_mm.cli.config import ToolError
    if not osp.isfile(args.image):
        sys.exit(f'error: image file not found: {args.image}')
    try:
        backbone, cfg, report = build_backbone(args.config, args.checkpoint)
        image, x = preprocess(args.image, cfg, args.size)
    except (ToolError, CheckpointError, FileNotFoundError, ValueError) as err:
        sys.exit(f'error: {err}')
    with torch.no_grad():
        feats = backbone(x)
    weights = (f'{osp.basename(args.checkpoint)} ({report["loaded"]}/{report["total"]} '
               f'tensors, {report["layout"]})' if report else 'random weights')
    title = (f'{cfg.model.backbone.type} {cfg.model.backbone.get("arch", "")}, {weights}; '
             f'channel {args.reduce} per stage')
    draw(image, feats, args.out_file, args.reduce, args.alpha, title)
    shapes = [tuple(f.shape[1:]) for f in feats]
    if not report:
        print('note: no checkpoint given, the backbone has random weights')
    print(f'feature maps (C, H, W): {shapes}')
    print(f'picture written to {args.out_file}')
    return dict(shapes=shapes, report=report)


if __name__ == '__main__':
    main()
