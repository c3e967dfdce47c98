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
The work is ``metaformer_mm.checkpoint.save_converted``'s.
"""
import argparse
import os.path as osp
import sys
import warnings
from typing import List, Optional, Tuple

warnings.filterwarnings('ignore', message='pkg_resources is deprecated')

SOURCES = ['auto', 'official', 'timm', 'mmpretrain', 'spach', 'mmdet2', 'mmseg0']


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('src', help='checkpoint to convert (file or URL)')
    parser.add_argument('dst', help='file to write')
    parser.add_argument('--from', dest='source', default='auto', choices=SOURCES,
                        help='layout of SRC (default: recognise it)')
    parser.add_argument('--force', action='store_true', help='overwrite DST if it exists')
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> Tuple[str, int]:
    args = parse_args(argv)
    from metaformer_mm.checkpoint import CheckpointError, is_url, save_converted
    from metaformer_mm.cli.config import ToolError, output_file, write_error
    try:
        # A link is written through (it then names the new file); a directory or a device
        # is refused, never replaced by a regular file.
        dst = output_file(args.dst, 'DST', overwrite=args.force)
    except ToolError as err:
        sys.exit(f'error: {err}')
    if not is_url(args.src) and osp.realpath(args.src) == dst:
        sys.exit('error: SRC and DST are the same file')
    try:
        converted_from, count = save_converted(args.src, dst, args.source)
    except (CheckpointError, FileNotFoundError, ValueError) as err:
        sys.exit(f'error: {err}')
    except OSError as err:  # a full disk: the atomic write left DST as it was
        why = write_error(err)
        if why is None:
            raise
        sys.exit(f'error: {why}; {args.dst} is unchanged')
    kind, _, layout = converted_from.partition('/')
    label = f'{kind} (backbone: {layout if layout != "None" else "not a MetaFormer"})' \
        if layout else kind
    print(f'converted {count} tensors from {label} to the metaformer_mm layout: {args.dst}')
    return converted_from, count


if __name__ == '__main__':
    main()
