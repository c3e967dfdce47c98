#!/usr/bin/env python
"""Convert a checkpoint to this project's keys, file to file (what the loaders do in memory).

    python tools/convert_checkpoint.py SRC DST [--from auto|official|timm|mmpretrain|spach|mmdet2|mmseg0]

Backbone files (``official``: sail-sg/poolformer or sail-sg/metaformer releases; ``timm``;
``mmpretrain``; ``spach``: microsoft/SPACH sMLPNet) become ``{'state_dict': ...}`` in the
``metaformer_mm`` layout, loadable with ``init_cfg=dict(type='Pretrained', checkpoint=DST)``
or strictly into the classifier (``fork_feat=False``). Whole models (``mmdet2``: the sail-sg
RetinaNet / Mask R-CNN releases for mmdet 2.x; ``mmseg0``: Semantic FPN for mmseg 0.x) become
checkpoints that ``tools/test.py``, ``demo/image_demo.py`` and ``load_from`` read. ``auto``
(the default) recognises the layout. Files are read with ``weights_only=True``.
"""
import argparse
import os.path as osp
import re
import sys
import warnings
from typing import Dict, List, Optional, Tuple

warnings.filterwarnings('ignore', message='pkg_resources is deprecated')

BACKBONE_SOURCES = {
    'official': ('official_v1', 'official_v2'),
    'timm': ('timm',),
    'mmpretrain': ('mmpretrain',),
    'spach': ('spach',),
}
MODEL_SOURCES = ('mmdet2', 'mmseg0')


def _key_pattern(key: str) -> str:
    return re.sub(r'\.\d+\.', '.N.', key)


def native_ranks() -> Dict[str, int]:
    """Tensor rank of every key pattern of our backbones (``stages.N.blocks.N.mlp.fc1.weight``: 4).

    Read off small models of each family, so the table follows the code. Patterns whose
    rank differs between families are left out (never reshaped).
    """
    from metaformer_mm.models.backbones.metaformer import MetaFormer
    from metaformer_mm.models.backbones.smlpnet import SMLPNet
    small = dict(depths=[1, 1, 1, 1], dims=[8, 16, 32, 32])
    models = [MetaFormer(arch=dict(small, base=preset), fork_feat=False, num_classes=2)
              for preset in ('poolformer_s12', 'poolformerv2_s12', 'convformer_s18',
                             'caformer_s18')]
    models.append(SMLPNet(arch=dict(small, base='smlpnet_tiny'), image_size=64,
                          fork_feat=False, num_classes=2))
    ranks: Dict[str, int] = {}
    conflicts = set()
    for model in models:
        for key, value in model.state_dict().items():
            pattern = _key_pattern(key)
            if ranks.setdefault(pattern, value.dim()) != value.dim():
                conflicts.add(pattern)
    return {k: v for k, v in ranks.items() if k not in conflicts}


def to_native_shapes(state: Dict) -> Dict:
    """Reshapes Linear ``[out, in]`` <-> 1x1 conv ``[out, in, 1, 1]`` tensors to our modules'
    shapes, so that a converted file loads with ``load_state_dict(strict=True)``."""
    ranks = native_ranks()
    out = type(state)()
    for key, value in state.items():
        rank = ranks.get(_key_pattern(key), value.dim())
        if value.dim() < rank:
            value = value.reshape(*value.shape, *[1] * (rank - value.dim()))
        elif value.dim() > rank and all(d == 1 for d in value.shape[rank:]):
            value = value.reshape(value.shape[:rank])
        out[key] = value
    return out


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='checkpoint to convert (file or URL)')
    parser.add_argument('dst', help='file to write')
    parser.add_argument('--from', dest='source', default='auto',
                        choices=['auto', *BACKBONE_SOURCES, *MODEL_SOURCES],
                        help='layout of SRC (default: recognise it)')
    parser.add_argument('--force', action='store_true', help='overwrite DST if it exists')
    return parser.parse_args(argv)


def convert(src: str, dst: str, source: str = 'auto') -> Tuple[str, int]:
    """Writes ``src`` converted to ``dst``; returns (the layout found, the number of tensors)."""
    from metaformer_mm import checkpoint as ckpt

    state = ckpt.extract_state_dict(ckpt.read_checkpoint(src), src)
    if source == 'auto':
        try:
            layout = ckpt.detect_layout(state)
        except ckpt.CheckpointError:
            if not any(k.startswith('backbone.') for k in state):
                raise
            # A whole model: the segmentor files have a decode head, the detector files not.
            source = 'mmseg0' if any(k.startswith('decode_head.') for k in state) else 'mmdet2'
        else:
            return _save_backbone(ckpt, state, dst, layout)
    if source in MODEL_SOURCES:
        layout, count = ckpt.convert_detector_file(src, dst, source)
        from metaformer_mm.checkpoint.convert import model_file_kind
        return (f'{model_file_kind(source, layout)} '
                f'(backbone: {layout or "not a MetaFormer"})'), count
    layout = ckpt.detect_layout(state)
    if layout not in BACKBONE_SOURCES[source]:
        raise ckpt.CheckpointError(f'{src} is in the {layout} layout, not --from {source}')
    return _save_backbone(ckpt, state, dst, layout)


def _save_backbone(ckpt, state: Dict, dst: str, layout: str) -> Tuple[str, int]:
    """``metaformer_mm.checkpoint.save_converted``, plus our modules' tensor shapes."""
    _, converted = ckpt.convert_state_dict(state, layout)
    converted = to_native_shapes(converted)
    ckpt.atomic_save({'state_dict': converted, 'meta': {'converted_from': layout}}, dst)
    return layout, len(converted)


def main(argv: Optional[List[str]] = None) -> Tuple[str, int]:
    args = parse_args(argv)
    from metaformer_mm.checkpoint import CheckpointError
    from metaformer_mm.cli.config import ToolError, output_file, write_error
    try:
        # A link is written through (it then names the new file); a directory or a device
        # is refused, never replaced by a regular file.
        dst = output_file(args.dst, 'DST', overwrite=args.force)
    except ToolError as err:
        sys.exit(f'error: {err}')
    if '://' not in args.src and osp.realpath(args.src) == dst:
        sys.exit('error: SRC and DST are the same file')
    try:
        layout, count = convert(args.src, dst, args.source)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        sys.exit(f'error: {err}')
    except OSError as err:  # a full disk: the atomic write left DST as it was
        why = write_error(err)
        if why is None:
            raise
        sys.exit(f'error: {why}; {args.dst} is unchanged')
    print(f'converted {count} tensors from {layout} to the metaformer_mm layout: {args.dst}')
    return layout, count


if __name__ == '__main__':
    main()
