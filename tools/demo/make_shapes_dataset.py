"""Writes the synthetic shapes dataset (COCO format, train + val) used by ``make demo``.

    python tools/demo/make_shapes_dataset.py data/shapes [--num-train 400] [--num-val 100]
"""
import argparse
import time

from metaformer_mm.datasets.shapes import make_shapes_dataset


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('out_dir', nargs='?', default='data/shapes', help='folder to write into')
    parser.add_argument('--num-train', type=int, default=400)
    parser.add_argument('--num-val', type=int, default=100)
    parser.add_argument('--image-size', type=int, default=160)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--overwrite', action='store_true',
                        help='regenerate even if the same dataset is already there')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    start = time.perf_counter()
    ann_files = make_shapes_dataset(args.out_dir, num_train=args.num_train, num_val=args.num_val,
                                    image_size=args.image_size, seed=args.seed,
                                    overwrite=args.overwrite)
    print(f'shapes dataset ready in {time.perf_counter() - start:.1f} s: '
          f'{ann_files["train"]}, {ann_files["val"]}')


if __name__ == '__main__':
    main()
