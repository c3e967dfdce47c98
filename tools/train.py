#!/usr/bin/env python
"""Train a detector (mmdet) or segmentor (mmseg) from a config with mmengine's Runner.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CHECKPOINT | auto]] [--amp]
                          [--auto-scale-lr] [--compile] [--cfg-options KEY=VALUE ...]
                          [--launcher ...]

Multi-GPU: tools/dist_train.sh CONFIG GPUS; Slurm: tools/slurm_train.sh.
"""
import argparse
from typing import List, Optional

from runner_cli import parse, parser, run_config  # (this folder is on sys.path)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = parser(__doc__)
    p.add_argument('--resume', nargs='?', const='latest', metavar='CHECKPOINT|auto',
                   help='resume training from CHECKPOINT; without a value, from the latest '
                        'checkpoint of the work dir (the one last_checkpoint names, else the '
                        'newest complete iter_N/epoch_N.pth), failing if there is none; "auto": '
                        'the same, but train from scratch when the work dir holds no checkpoint')
    p.add_argument('--amp', action='store_true',
                   help='mixed precision: fp16 on CUDA, bfloat16 on CPU')
    p.add_argument('--compile', action='store_true',
                   help="torch.compile the train step (the config's compile key; "
                        "--cfg-options compile.mode=... for options)")
    p.add_argument('--auto-scale-lr', action='store_true',
                   help='scale the lr by the real total batch size / '
                        'auto_scale_lr.base_batch_size of the config')
    return parse(p, argv)


def main(argv: Optional[List[str]] = None) -> None:
    args = parse_args(argv)
    from metaformer_mm.cli.checkpoints import (last_checkpoint_kept, prepare_work_dir,
                                               remove_interrupted_writes, resolve_resume)
    from metaformer_mm.cli.config import check_train_schedule
    from metaformer_mm.cli.options import enable_amp, enable_auto_scale_lr, enable_compile

    def options(cfg) -> None:
        for wanted, enable in ((args.amp, enable_amp), (args.auto_scale_lr, enable_auto_scale_lr),
                               (args.compile, enable_compile)):
            if wanted:
                enable(cfg)

    def prepare(cfg) -> None:
        # After the checks of what the config reads: the work dir is made and locked only now.
        check_train_schedule(cfg)
        prepare_work_dir(cfg.work_dir, lock=True)  # before anything there is touched
        remove_interrupted_writes(cfg.work_dir)
        resolve_resume(cfg, args.resume)

    # On a full disk or a quota SafeCheckpointHook kept the checkpoints: say which is last.
    run_config(args, 'train', options, prepare, lambda runner, _: runner.train(),
               kept=lambda work_dir: f'; training stopped, {last_checkpoint_kept(work_dir)}')


if __name__ == '__main__':
    main()
