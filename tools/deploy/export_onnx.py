#!/usr/bin/env python
"""Exports the MetaFormer backbone of a config to ONNX, with dynamic batch, height and width.

    python tools/deploy/export_onnx.py CONFIG [CHECKPOINT] --shape H W [--out F.onnx] [--deploy]

CONFIG is a detection or segmentation config (its ``model.backbone`` is exported) or a
config whose ``model`` (or ``backbone``) is a backbone. CHECKPOINT, optional, is a whole
detector/segmentor checkpoint (its ``backbone.`` keys are used) or backbone weights in any
layout ``metaformer_mm.checkpoint`` reads; without it the weights are random (for timing).
``--deploy`` exports the folded formulation (``kernels='deploy'``: norms and layer scales
folded into the 1x1 convs). ``--verify`` runs onnxruntime on the export at the given size and at a second size
and prints the largest difference from PyTorch, relative to the output's magnitude.
sMLPNet and RandFormer exports take the traced height and width only (their weights are
resampled per input size; the tool says so): export once per input size.
"""
import argparse
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
                        help="export the folded formulation (kernels='deploy')")
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


def build_backbone(config: str, checkpoint: Optional[str] = None,
                   cfg_options: Optional[Dict] = None) -> torch.nn.Module:
    """Builds the config's backbone (random weights, or ``checkpoint``'s), in eval mode."""
    from metaformer_mm.checkpoint import CheckpointError
    from metaformer_mm.cli.config import ToolError
    from metaformer_mm.cli.models import build_model_from_config
    from metaformer_mm.models import MetaFormer
    try:
        model = build_model_from_config(config, checkpoint, cfg_options=cfg_options,
                                        part='backbone')
    except (FileNotFoundError, ValueError, TypeError, CheckpointError, ToolError) as err:
        raise SystemExit(f'error: {err}')
    if not isinstance(model, MetaFormer):
        raise SystemExit(f'error: {config}: the backbone is a {type(model).__name__}; this tool '
                         f'exports MetaFormer backbones (PoolFormer, sMLPNet, ...)')
    return model


def export(model: torch.nn.Module, out: str, shape: Tuple[int, int], deploy: bool,
           opset: int = 17) -> List[str]:
    """Exports ``model`` (a MetaFormer) to ``out``; returns the output names."""
    from metaformer_mm.cli.onnx import export_onnx
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


# The tracing size: at least one token in the last stage (stride 32).
MIN_SIDE = 32


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)
    from metaformer_mm.cli.config import ToolError, output_file, write_error
    if min(args.shape) < MIN_SIDE:
        sys.exit(f'error: --shape {args.shape[0]} {args.shape[1]}: height and width must be at '
                 f'least {MIN_SIDE} (one token in the last stage); the export takes any size '
                 f'from there')
    out = args.out or (osp.splitext(osp.basename(args.config))[0] + '_backbone' +
                       ('_deploy' if args.deploy else '') + '.onnx')
    try:
        output_file(out, '--out')
    except ToolError as err:
        sys.exit(f'error: {err}')
    model = build_backbone(args.config, args.checkpoint, _parse_options(args.cfg_options))
    try:
        names = export(model, out, tuple(args.shape), args.deploy, args.opset)
    except OSError as err:
        why = write_error(err)
        if why is None:
            raise
        sys.exit(f'error: --out {out}: {why}')
    from metaformer_mm.cli.onnx import fixed_size_reason
    fixed = fixed_size_reason(model)
    h, w = args.shape
    axes = f'dynamic N; H, W fixed at {h}x{w}: {fixed}' if fixed else 'dynamic N, H, W'
    print(f'wrote {out}: input (N, 3, H, W) -> {", ".join(names)} '
          f'({"folded deploy path" if args.deploy else "default path"}; {axes})')
    if args.verify:
        shapes = [(h, w)] + ([] if fixed else [(h + 37, w - 19 if w > 64 else w + 19)])
        for shape, err in zip(shapes, verify(model, out, shapes)):
            print(f'onnxruntime vs torch at {shape[0]}x{shape[1]}: max relative difference '
                  f'{err:.2e}')
    return out


if __name__ == '__main__':
    main(sys.argv[1:])
