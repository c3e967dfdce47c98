#!/usr/bin/env python
"""Train a detector (mmdet) or segmentor (mmseg) from a config with mmengine's Runner.

    python tools/train.py CONFIG [--work-dir DIR] [--resume [CHECKPOINT | auto]] [--amp]
                          [--auto-scale-lr] [--compile] [--cfg-options KEY=VALUE ...]
                          [--launcher ...]

Multi-GPU: tools/dist_train.sh CONFIG GPUS; Slurm: tools/slurm_train.sh.
"""
import argparse
import os
import sys
import warnings

# Keep the CLI's output to what matters: setuptools' notice about mmengine's use of
# pkg_resources is not something a user can act on.
warnings.filterwarnings('ignore', message='pkg_resources is deprecated')
from mmengine.config import DictAction  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('config', help='config file (configs/detection/... or '
                                       'configs/segmentation/...)')
    parser.add_argument('--work-dir', help='where logs and checkpoints go '
                                           '(default: ./work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', const='latest', metavar='CHECKPOINT|auto',
                        help='resume training from CHECKPOINT; without a value, from the '
                             'latest checkpoint of the work dir (the one last_checkpoint '
                             'names, else the newest complete iter_N/epoch_N.pth), failing '
                             'if there is none; "auto": the same, but train from scratch '
                             'when the work dir holds no checkpoint')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision: fp16 on CUDA, bfloat16 on CPU')
    parser.add_argument('--compile', action='store_true',
                        help="torch.compile the train step (the config's compile key; "
                             "--cfg-options compile.mode=... for options)")
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by the real total batch size / '
                             'auto_scale_lr.base_batch_size of the config')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries, e.g. train_dataloader.batch_size=4')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none',
                        help='job launcher (pytorch: torchrun, as tools/dist_train.sh does)')
    # torch.distributed.launch passes --local_rank (or --local-rank); torchrun sets LOCAL_RANK.
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    import metaformer_mm  # noqa: F401  (registers the backbones; safe checkpoint loading)
    from metaformer_mm.checkpoint import CheckpointError
    from metaformer_mm.cli.checkpoints import (last_checkpoint_kept, prepare_work_dir,
                                               remove_interrupted_writes, resolve_resume)
    from metaformer_mm.cli.config import (ToolError, build_runner, check_neck_inputs,
                                          check_train_schedule, default_work_dir, error_line,
                                          load_config, write_error)
    from metaformer_mm.cli.datasets import (DatasetMissingError, check_annotation_files,
                                            check_dataset, explain_data_error,
                                            name_files_in_errors)
    from metaformer_mm.datasets import DataError
    from metaformer_mm.cli.distributed import close_distributed, init_distributed_without_cuda
    from metaformer_mm.cli.options import enable_amp, enable_auto_scale_lr, enable_compile
    from metaformer_mm.engine import NonFiniteError
    cfg = None
    try:
        cfg = load_config(args.config, args.cfg_options)
        cfg.launcher = args.launcher
        cfg.work_dir = args.work_dir or cfg.get('work_dir') or default_work_dir(args.config)
        if args.amp:
            enable_amp(cfg)
        if args.auto_scale_lr:
            enable_auto_scale_lr(cfg)
        if args.compile:
            enable_compile(cfg)
        # What the config reads is checked before the work dir is made or locked.
        check_dataset(cfg, 'train', config_name=args.config)
        check_annotation_files(cfg, 'train')
        check_neck_inputs(cfg)
        check_train_schedule(cfg)
        prepare_work_dir(cfg.work_dir, lock=True)  # before anything there is touched
        remove_interrupted_writes(cfg.work_dir)
        resolve_resume(cfg, args.resume)
        name_files_in_errors(cfg, 'train')
        init_distributed_without_cuda(cfg, args.launcher)

        runner = build_runner(cfg, args.config)
        try:
            runner.train()
        except ValueError as err:  # JSONDecodeError is one
            why = explain_data_error(cfg, 'train', err)
            if why is None:
                raise
            raise DataError(why) from err
        finally:
            runner = None  # the model (DDP holds the process group) goes before the group
    except (DatasetMissingError, ToolError, CheckpointError, NonFiniteError, DataError) as err:
        sys.exit(f'error: {error_line(err)}')
    except OSError as err:  # a full disk, a quota: SafeCheckpointHook kept the checkpoints
        why = write_error(err)
        if why is None:
            raise
        kept = f'; training stopped, {last_checkpoint_kept(cfg.work_dir)}' if cfg else ''
        sys.exit(f'error: {why}{kept}')
    finally:
        close_distributed()


if __name__ == '__main__':
    main()
