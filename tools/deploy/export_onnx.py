#!/usr/bin/env python
"""Exports the MetaFormer backbone of a config to ONNX, with dynamic batch, height and width.

    python tools/deploy/export_onnx.py CONFIG [CHECKPOINT] --shape H W [--out F.onnx] [--deploy]

CONFIG is a detection or segmentation config (its ``model.backbone`` is exported) or a
config whose ``model`` (or ``backbone``) is a backbone. CHECKPOINT, optional, is a whole
detector/segmentor checkpoint (its ``backbone.`` keys are used) or backbone weights in any
layout ``metaformer_mm.checkpoint`` reads; without it the weights are random (for timing).
``--deploy`` exports the fused inference path (norms and layer scales folded into the 1x1
convs). ``--verify`` runs onnxruntime on the export at the given size and at a second size
and prints the largest difference from PyTorch, relative to the output's magnitude.
"""
import argparse
import copy
import os
import os.path as osp
import sys
from typing import Dict, List, Optional, Tuple

import torch


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('config', help='detection/segmentation config, or a backbone config')
    parser.add_argument('checkpoint', nargs='?', default=None,
                        help='whole-model or backbone checkpoint (optional)')
    parser.add_argument('--shape', type=int, nargs=2, metavar=('H', 'W'), required=True,
                        help='input size used to trace the model (the export accepts any)')
    parser.add_argument('--out', default=None,
                        help='output file (default: <config name>_backbone[_deploy].onnx)')
    parser.add_argument('--deploy', action='store_true',
                        help='export the fused inference path (switch_to_deploy)')
    parser.add_argument('--opset', type=int, default=17)
    parser.add_argument('--verify', action='store_true',
                        help='compare onnxruntime with PyTorch at two sizes')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='override config entries, e.g. model.backbone.arch=s24')
    return parser.parse_args(argv)


def _parse_options(options: List[str]) -> Dict:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser()
    parser.add_argument('--o', nargs='+', action=DictAction, default={})
    return parser.parse_args(['--o', *options]).o if options else {}


def backbone_config(cfg) -> Dict:
    """The backbone part of a config: ``model.backbone``, or a backbone ``model``/``backbone``."""
    model = cfg.get('model')
    if isinstance(model, dict) and isinstance(model.get('backbone'), dict):
        return copy.deepcopy(model.backbone)
    for candidate in (model, cfg.get('backbone')):
        if isinstance(candidate, dict) and 'type' in candidate:
            return copy.deepcopy(candidate)
    raise SystemExit(f'{cfg.filename}: no model.backbone, model or backbone entry to export')


def build_backbone(config: str, checkpoint: Optional[str] = None,
                   cfg_options: Optional[Dict] = None) -> torch.nn.Module:
    """Builds the config's backbone (random weights, or ``checkpoint``'s), in eval mode."""
    import metaformer_mm  # noqa: F401  (registers the backbones)
    from mmengine.config import Config
    if not osp.isfile(config):
        raise SystemExit(f'config file not found: {config}')
    cfg = Config.fromfile(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    bb_cfg = backbone_config(cfg)
    bb_cfg['init_cfg'] = None  # weights come from CHECKPOINT (or stay random): no download
    model = _build_registered(bb_cfg, cfg.get('default_scope'))
    from metaformer_mm.models import MetaFormer
    if not isinstance(model, MetaFormer):
        raise SystemExit(f'{config}: the backbone is a {type(model).__name__}; this tool '
                         f'exports MetaFormer backbones (PoolFormer, sMLPNet, ...)')
    if checkpoint:
        from metaformer_mm.checkpoint import extract_state_dict, load_pretrained, read_checkpoint
        state = extract_state_dict(read_checkpoint(checkpoint), checkpoint)
        prefix = 'backbone.' if any(k.startswith('backbone.') for k in state) else None
        load_pretrained(model, checkpoint, prefix=prefix)
    return model.eval()


def _build_registered(bb_cfg: Dict, scope: Optional[str]) -> torch.nn.Module:
    # Our backbones are in mmdet's and mmseg's registries; use the config's, else either.
    if scope == 'mmseg':
        from mmseg.registry import MODELS
    else:
        try:
            from mmdet.registry import MODELS
        except ImportError:
            from mmseg.registry import MODELS
    return MODELS.build(bb_cfg)


def export(model: torch.nn.Module, out: str, shape: Tuple[int, int], deploy: bool,
           opset: int = 17) -> List[str]:
    """Exports ``model`` (a MetaFormer) to ``out``; returns the output names."""
    from metaformer_mm.models.deploy import export_onnx
    os.makedirs(osp.dirname(osp.abspath(out)), exist_ok=True)
    return export_onnx(model, out, shape=shape, opset=opset, deploy=deploy)


def verify(model: torch.nn.Module, path: str, shapes: List[Tuple[int, int]]) -> List[float]:
    """Largest |onnxruntime - torch| / max|torch| over the outputs, for each input size."""
    import numpy as np
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    errors = []
    for shape in shapes:
        x = torch.randn(1, model.stem.conv.in_channels, *shape)
        with torch.no_grad():
            ref = model(x)
        ref = ref if isinstance(ref, (tuple, list)) else (ref,)
        outs = session.run(None, {'input': x.numpy()})
        errors.append(max(float(np.abs(o - r.numpy()).max() / np.abs(r.numpy()).max())
                          for o, r in zip(outs, ref)))
    return errors


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)
    model = build_backbone(args.config, args.checkpoint, _parse_options(args.cfg_options))
    out = args.out or (osp.splitext(osp.basename(args.config))[0] + '_backbone' +
                       ('_deploy' if args.deploy else '') + '.onnx')
    names = export(model, out, tuple(args.shape), args.deploy, args.opset)
    print(f'wrote {out}: input (N, 3, H, W) -> {", ".join(names)} '
          f'({"fused deploy path" if args.deploy else "default path"}; dynamic N, H, W)')
    if args.verify:
        h, w = args.shape
        shapes = [(h, w), (h + 37, w - 19 if w > 64 else w + 19)]
        for shape, err in zip(shapes, verify(model, out, shapes)):
            print(f'onnxruntime vs torch at {shape[0]}x{shape[1]}: max relative difference '
                  f'{err:.2e}')
    return out


if __name__ == '__main__':
    main(sys.argv[1:])
