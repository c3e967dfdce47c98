#!/usr/bin/env python
"""Evaluate a checkpoint of a detector (mmdet) or segmentor (mmseg) config with mmengine's Runner.

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--out RESULTS.pkl]
                         [--show-dir DIR] [--bf16] [--compile [freezing]]
                         [--cfg-options KEY=VALUE ...] [--launcher ...]

CHECKPOINT may be one of ours or a released sail-sg file (mmdet 2.19 / mmseg 0.x layout),
which is converted on load. Multi-GPU: tools/dist_test.sh CONFIG CHECKPOINT GPUS.
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
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file (ours or a released sail-sg one)')
    parser.add_argument('--work-dir', help='where the logs and metrics go '
                                           '(default: ./work_dirs/<config name>)')
    parser.add_argument('--out', metavar='RESULTS.pkl',
                        help='also dump the predictions to this pickle file')
    parser.add_argument('--show-dir', help='draw the predictions on the test images into '
                                           'this directory')
    parser.add_argument('--bf16', '--amp', action='store_true',
                        help='network in bf16 (CPU with avx512_bf16/amx_bf16, or CUDA), '
                             'post-processing in fp32; fp32 where bf16 would be emulated')
    parser.add_argument('--compile', nargs='?', const='default', choices=['default', 'freezing'],
                        help="torch.compile the test step (also done by the config's compile "
                             "key); 'freezing': with Inductor's freezing (weights as constants)")
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                        help='override config entries, e.g. test_dataloader.batch_size=2')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none',
                        help='job launcher (pytorch: torchrun, as tools/dist_test.sh does)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    import metaformer_mm  # noqa: F401  (registers the backbones; safe checkpoint loading)
    from metaformer_mm.checkpoint import CheckpointError
    from metaformer_mm.cli.checkpoints import (load_state_into_runner, load_test_checkpoint,
                                               prepare_work_dir)
    from metaformer_mm.cli.config import (ToolError, build_runner, check_neck_inputs,
                                          default_work_dir, drop_training, error_line,
                                          load_config, write_error)
    from metaformer_mm.cli.datasets import (DatasetMissingError, check_annotation_files,
                                            check_dataset, check_test_metrics,
                                            explain_data_error, name_files_in_errors)
    from metaformer_mm.datasets import DataError
    from metaformer_mm.cli.distributed import close_distributed, init_distributed_without_cuda
    from metaformer_mm.cli.options import (DumpPredictions, check_out_path, compile_test_step,
                                           enable_compile, enable_show_dir)
    try:
        cfg = load_config(args.config, args.cfg_options)
        cfg.launcher = args.launcher
        cfg.work_dir = args.work_dir or cfg.get('work_dir') or default_work_dir(args.config)
        drop_training(cfg)
        prepare_work_dir(cfg.work_dir)
        if args.bf16:
            from metaformer_mm.inference import apply_bf16
            apply_bf16(cfg)
        out = check_out_path(args.out) if args.out else None
        if args.show_dir:
            enable_show_dir(cfg, args.show_dir)
        if args.compile:
            enable_compile(cfg, freezing=args.compile == 'freezing')
        check_dataset(cfg, 'test', config_name=args.config)
        check_annotation_files(cfg, 'test')
        check_neck_inputs(cfg)
        name_files_in_errors(cfg, 'test')
        # Loaded here rather than through cfg.load_from: strictly (mmengine only warns).
        state, dataset_meta = load_test_checkpoint(args.checkpoint)
        cfg.load_from = None
        init_distributed_without_cuda(cfg, args.launcher)

        runner = build_runner(cfg, args.config)
        try:
            load_state_into_runner(runner, state, dataset_meta)
            compile_test_step(runner)
            if out:
                runner.test_evaluator.metrics.append(DumpPredictions(out_file_path=out))
            metrics = runner.test()
        except ValueError as err:  # JSONDecodeError is one
            why = explain_data_error(cfg, 'test', err)
            if why is None:
                raise
            raise DataError(why) from err
        finally:
            runner = None  # the model (DDP holds the process group) goes before the group
        check_test_metrics(cfg, metrics)
    except (DatasetMissingError, ToolError, CheckpointError, DataError) as err:
        sys.exit(f'error: {error_line(err)}')
    except OSError as err:  # a full disk, a quota
        why = write_error(err)
        if why is None:
            raise
        sys.exit(f'error: {why}')
    finally:
        close_distributed()


if __name__ == '__main__':
    main()
