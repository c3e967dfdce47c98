#!/usr/bin/env python
"""Evaluate a checkpoint of a detector (mmdet) or segmentor (mmseg) config with mmengine's Runner.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out RESULTS.pkl]
                         [--show-dir DIR] [--bf16] [--compile [freezing]]
                         [--cfg-options KEY=VALUE ...] [--launcher ...]

CHECKPOINT may be one of ours or a released sail-sg file (mmdet 2.19 / mmseg 0.x layout),
which is converted on load. Multi-GPU: tools/dist_test.sh CONFIG CHECKPOINT GPUS.
"""
import argparse
from typing import List, Optional

from runner_cli import parse, parser, run_config  # (this folder is on sys.path)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = parser(__doc__, 'checkpoint: checkpoint file (ours or a released sail-sg one)')
    p.add_argument('--out', metavar='RESULTS.pkl',
                   help='also dump the predictions to this pickle file')
    p.add_argument('--show-dir', help='draw the predictions on the test images into '
                                      'this directory')
    p.add_argument('--bf16', '--amp', action='store_true',
                   help='network in bf16 (CPU with avx512_bf16/amx_bf16, or CUDA), '
                        'post-processing in fp32; fp32 where bf16 would be emulated')
    p.add_argument('--compile', nargs='?', const='default', choices=['default', 'freezing'],
                   help="torch.compile the test step (also done by the config's compile "
                        "key); 'freezing': with Inductor's freezing (weights as constants)")
    return parse(p, argv)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    from metaformer_mm.cli.checkpoints import (load_state_into_runner, load_test_checkpoint,
                                               prepare_work_dir)
    from metaformer_mm.cli.config import drop_training
    from metaformer_mm.cli.datasets import check_test_metrics
    from metaformer_mm.cli.options import (DumpPredictions, check_out_path, compile_test_step,
                                           enable_compile, enable_show_dir)
    loaded = {}

    def options(cfg) -> None:
        drop_training(cfg)
        prepare_work_dir(cfg.work_dir)
        if args.bf16:
            from metaformer_mm.inference import apply_bf16
            apply_bf16(cfg)
        loaded['out'] = check_out_path(args.out) if args.out else None
        if args.show_dir:
            enable_show_dir(cfg, args.show_dir)
        if args.compile:
            enable_compile(cfg, freezing=args.compile == 'freezing')

    def prepare(cfg) -> None:
        # Loaded here rather than through cfg.load_from: strictly (mmengine only warns).
        loaded['state'] = load_test_checkpoint(args.checkpoint)
        cfg.load_from = None

    def run(runner, cfg) -> None:
        load_state_into_runner(runner, *loaded['state'])
        compile_test_step(runner)
        if loaded['out']:
            runner.test_evaluator.metrics.append(DumpPredictions(out_file_path=loaded['out']))
        check_test_metrics(cfg, runner.test())

    run_config(args, 'test', options, prepare, run)


if __name__ == '__main__':
    main()
