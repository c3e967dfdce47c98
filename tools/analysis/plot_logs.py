#!/usr/bin/env python
"""Plot training curves from mmengine's JSON scalars log as a PNG.

    python tools/analysis/plot_logs.py WORK_DIR --keys loss bbox_mAP --out-file curves.png

WORK_DIR: a work dir (its newest run), a run's ``<timestamp>`` folder or a ``scalars.json``.
A key matches a logged name or its last part (``bbox_mAP`` finds ``coco/bbox_mAP``).
"""
import argparse
import glob
import json
import os
import os.path as osp
import sys
from typing import Dict, List, Optional, Tuple

Curve = Tuple[List[float], List[float], str]  # x values, y values, the x axis label


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('path', metavar='WORK_DIR', help='work dir, run folder or scalars.json')
    parser.add_argument('--keys', nargs='+', default=['loss'], help='names of the curves')
    parser.add_argument('--out-file', required=True, help='PNG to write')
    parser.add_argument('--title', default=None, help='figure title (default: the run folder)')
    return parser.parse_args(argv)


def find_scalars(path: str) -> str:
    """The ``scalars.json`` meant by ``path`` (the newest run of a work dir)."""
    if osp.isfile(path):
        return path
    for pattern in ('vis_data/scalars.json', '*/vis_data/scalars.json'):
        found = sorted(glob.glob(osp.join(path, pattern)))
        if found:
            return found[-1]  # run folders are timestamps: the last sorts newest
    raise FileNotFoundError(f'no mmengine scalars log (vis_data/scalars.json or '
                            f'*/vis_data/scalars.json) under {path}')


def curves(records: List[Dict], keys: List[str]) -> Dict[str, Curve]:
    """For each key, its curve (x axis: iteration, or epoch for validation by epoch)."""
    names = sorted({n for r in records for n in r if n != 'step'})
    # Epoch-based training logs train scalars by iteration and validation scalars by epoch.
    epoch_based = any('epoch' in r for r in records if 'loss' in r)
    out = {}
    for key in keys:
        suffixed = [n for n in names if n.endswith('/' + key)]  # else the one such name
        name = key if key in names else (suffixed[0] if len(suffixed) == 1 else None)
        if name is None:
            shown = [n for n in names if n not in ('iter', 'epoch', 'time', 'data_time', 'memory')]
            raise KeyError(f'no logged scalar matches {key!r}; logged: {shown}')
        points = [(r['step'], r[name]) for r in records if name in r]
        is_val = all('loss' not in r and 'lr' not in r for r in records if name in r)
        out[name] = ([p[0] for p in points], [p[1] for p in points],
                     'epoch' if is_val and epoch_based else 'iteration')
    return out


def plot(data: Dict[str, Curve], out_file: str, title: str) -> None:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(data), figsize=(4.2 * len(data), 3.4), squeeze=False)
    for ax, (name, (xs, ys, xlabel)) in zip(axes[0], data.items()):
        ax.plot(xs, ys, marker='o' if len(xs) <= 30 else None, markersize=4, linewidth=1.5)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
        if name.endswith('lr'):
            ax.ticklabel_format(axis='y', style='sci', scilimits=(0, 0))
        if len(xs) == 1:
            ax.annotate(f'{ys[0]:.3f}', (xs[0], ys[0]), textcoords='offset points', xytext=(5, 5))
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    os.makedirs(osp.dirname(osp.abspath(out_file)), exist_ok=True)
    fig.savefig(out_file, dpi=100)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)
    try:
        scalars_file = find_scalars(args.path)
        with open(scalars_file) as f:
            data = curves([json.loads(line) for line in f if line.strip()], args.keys)
    except (FileNotFoundError, KeyError) as err:
        sys.exit(f'error: {err.args[0]}')
    run = osp.basename(osp.dirname(osp.dirname(osp.abspath(scalars_file))))
    plot(data, args.out_file, args.title or run)
    for name, (xs, ys, xlabel) in data.items():
        print(f'{name}: {len(xs)} points, last {ys[-1]:.4g} at {xlabel} {xs[-1]}')
    print(f'curves written to {args.out_file}')
    return args.out_file


if __name__ == '__main__':
    main()
