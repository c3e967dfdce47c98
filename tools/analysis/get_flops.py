#!/usr/bin/env python
"""Parameters and MACs of a detector/segmentor config and of its backbone (mmengine's analysis).

    python tools/analysis/get_flops.py CONFIG [--shape H W] [--paper]

``--paper``: the papers' figures beside ours (the backbone as the ImageNet classifier at
224x224, the whole model's parameters). The report says what a MAC is.
"""
import argparse
import logging
import math
import sys
import warnings
from typing import Dict, List, Optional, Tuple

import torch.nn as nn

warnings.filterwarnings('ignore', message='pkg_resources is deprecated')

# Backbone as an ImageNet-1K classifier at 224x224: (params M, GMACs) as printed in the papers
# (PoolFormer: Yu et al. 2022 "MetaFormer is actually what you need for vision", Table 1;
# PoolFormerV2/ConvFormer/CAFormer: Yu et al. 2023 "MetaFormer baselines for vision";
# sMLPNet: Tang et al. 2022 "Sparse MLP for image recognition"). PoolFormerV2 counts as V1.
POOLFORMERS = dict(s12=(12, 1.8), s24=(21, 3.4), s36=(31, 5.0), m36=(56, 8.8), m48=(73, 11.6))
PAPER_BACKBONES: Dict[str, Tuple[float, float]] = {
    **{f'poolformer{v}_{size}': p for v in ('', 'v2') for size, p in POOLFORMERS.items()},
    'convformer_s18': (27, 3.9), 'convformer_s36': (40, 7.6), 'convformer_m36': (57, 12.8),
    'convformer_b36': (100, 22.6), 'caformer_s18': (26, 4.1), 'caformer_s36': (39, 8.0),
    'caformer_m36': (56, 13.2), 'caformer_b36': (99, 23.2),
    'smlpnet_tiny': (24.1, 5.0), 'smlpnet_small': (48.6, 10.3), 'smlpnet_base': (65.9, 14.0),
}
# A model's type (a segmentor's: its head's) -> its family in the papers, its model index prefix.
FAMILIES = {'RetinaNet': ('RetinaNet', 'retinanet'), 'MaskRCNN': ('Mask R-CNN', 'mask_rcnn'),
            'FPNHead': ('Semantic FPN', 'fpn')}


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='detection or segmentation config')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'), default=None,
                        help='input size (default: detection 800 1280, segmentation 512 512)')
    parser.add_argument('--paper', action='store_true',
                        help="also print the paper's parameter and MAC counts beside ours")
    parser.add_argument('--verbose', action='store_true',
                        help="show mmengine's notes on operators it does not count")
    return parser.parse_args(argv)


def _fmt(value: Optional[float], unit: str, digits: int = 2) -> str:
    return 'n/a' if value is None else f'{value:.{digits}f}{unit}'


def sdpa_macs(inputs: List, outputs: List) -> int:
    """MACs of ``aten::scaled_dot_product_attention`` (Q K^T and A V), which fvcore skips."""
    from mmengine.analysis.jit_handles import get_shape
    q, k, v = (get_shape(x) for x in inputs[:3])
    return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def complexity(module, shape: Tuple[int, int]) -> Tuple[float, float]:
    """(parameters, MACs) of ``module`` on a ``1x3xHxW`` input: mmengine's counts plus attention
    (as the CAFormer paper). Not under ``no_grad``: its traces of sMLPNet's MLPs miss MACs."""
    import torch
    from mmengine.analysis import FlopAnalyzer, parameter_count
    flops = FlopAnalyzer(module, (torch.randn(1, 3, *shape),))
    flops.set_op_handle('aten::scaled_dot_product_attention', sdpa_macs)
    return float(parameter_count(module)['']), float(flops.total())


class TensorForward(nn.Module):
    """A detector's ``mode='tensor'`` forward on ``x`` (proposals need the image's shape)."""

    def __init__(self, model: nn.Module, shape: Tuple[int, int]) -> None:
        super().__init__()
        from mmdet.structures import DetDataSample
        self.model, self.sample = model, DetDataSample(metainfo=dict(
            img_shape=shape, ori_shape=shape, pad_shape=shape, batch_input_shape=shape,
            scale_factor=(1.0, 1.0)))

    def forward(self, x):
        return self.model(x, [self.sample], mode='tensor')


def analyse(config: str, shape: Optional[Tuple[int, int]] = None,
            paper: bool = False) -> Dict[str, object]:
    """Builds the config's model (random weights) and counts; returns the figures as a dict."""
    from metaformer_mm.cli.models import build_model_from_config, model_registry
    from metaformer_mm.models import MetaFormer
    from metaformer_mm.models.backbones.arch import preset_name
    from metaformer_mm.zoo import model_index
    model = build_model_from_config(config)  # random weights: counting needs none
    cfg, model_cfg, scope = model.cfg, model.cfg.model, model.cfg.default_scope
    shape = tuple(shape) if shape else ((800, 1280) if scope == 'mmdet' else (512, 512))
    # mmseg's forward(inputs) already defaults to mode='tensor'.
    params, macs = complexity(TensorForward(model, shape) if scope == 'mmdet' else model, shape)
    bb_params, bb_macs = complexity(model.backbone, shape)
    out = dict(config=config, model=model_cfg.type, shape=shape, params=params, macs=macs,
               backbone=model_cfg.backbone.type, backbone_params=bb_params, backbone_macs=bb_macs)
    if paper:
        bb_cfg, arch = model_cfg.backbone, model_cfg.backbone.get('arch')
        # The full preset name ('s12' -> 'poolformer_s12'); None for a custom arch dict.
        name = out['preset'] = preset_name(type(model.backbone), arch) if isinstance(
            model.backbone, MetaFormer) and isinstance(arch, str) else None
        classifier = model_registry(scope).build(dict(
            type=bb_cfg.type, arch=arch, fork_feat=False, num_classes=1000,
            **{k: v for k, v in bb_cfg.items() if k in ('image_size', 'resize_mode')})).eval()
        out['classifier_params'], out['classifier_macs'] = complexity(classifier, (224, 224))
        out['paper_backbone'] = PAPER_BACKBONES.get(name)
        head = (model_cfg.get('decode_head') or {}).get('type')
        out['family'], prefix = FAMILIES.get(model_cfg.type, FAMILIES.get(head, (None, None)))
        # The PoolFormer paper's whole-model parameters (Tables 2 and 3) are the model index's.
        entry = model_index().get(f'{prefix}_{name}') if (name or '').startswith('poolformer_') \
            else None
        out['paper_model'] = entry and entry['Metadata'].get('Parameters (M)')
    return out


def report(r: Dict[str, object]) -> str:
    h, w = r['shape']
    lines = [f'{r["config"]}: {r["model"]} with {r["backbone"]}, input 1x3x{h}x{w}', '',
             '| part | params | GMACs |', '|---|---|---|',
             f'| whole model | {r["params"] / 1e6:.2f}M | {r["macs"] / 1e9:.2f} |',
             f'| backbone | {r["backbone_params"] / 1e6:.2f}M | {r["backbone_macs"] / 1e9:.2f} |']
    if 'classifier_params' in r:
        pb = r['paper_backbone'] or (None, None)
        lines += ['', f'Beside the paper ({r["preset"] or "custom arch"}):', '',
                  '| what | ours | paper |', '|---|---|---|',
                  f'| backbone as ImageNet classifier, params | '
                  f'{r["classifier_params"] / 1e6:.2f}M | {_fmt(pb[0], "M", 1)} |',
                  f'| backbone as ImageNet classifier, GMACs at 224x224 | '
                  f'{r["classifier_macs"] / 1e9:.2f} | {_fmt(pb[1], "", 1)} |',
                  f'| whole {r["family"] or r["model"]}, params | {r["params"] / 1e6:.2f}M | '
                  f'{_fmt(r["paper_model"], "M")} |']
    lines += ['', 'MACs: multiply-adds of convs, linears, matmuls and attention (mmengine/fvcore '
                  'rules); pooling, norms and element-wise ops are not counted.']
    return '\n'.join(lines)


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    args = parse_args(argv)
    from mmengine.logging import MMLogger
    if not args.verbose:
        # "Unsupported operator aten::gelu ..." is the documented convention, not a problem.
        MMLogger.get_current_instance().setLevel(logging.ERROR)
    try:
        result = analyse(args.config, args.shape, args.paper)
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f'error: {err}')
    print(report(result))
    return result


if __name__ == '__main__':
    main()
