"""What tools/train.py and tools/test.py share: their common options and the checked run of a
config through mmengine's Runner (imported from their folder, which Python puts on sys.path)."""
import argparse
import os
import sys
import warnings
from typing import Any, Callable, Optional

# Keep the CLI's output to what matters: setuptools' notice about mmengine's use of
# pkg_resources is not something a user can act on.
warnings.filterwarnings('ignore', message='pkg_resources is deprecated')
from mmengine.config import DictAction  # noqa: E402


def parser(doc: str, *positionals: str) -> argparse.ArgumentParser:
    """A parser for the tool documented by ``doc``: ``config``, then ``positionals`` (each
    'name: help'), then ``--work-dir``."""
    p = argparse.ArgumentParser(description=doc.split('\n')[0])
    p.add_argument('config', help='config file (configs/detection/... or configs/segmentation/'
                                  '...) or a model name')
    for positional in positionals:
        name, text = positional.split(': ')
        p.add_argument(name, help=text)
    p.add_argument('--work-dir', help='where logs, checkpoints and metrics go '
                                      '(default: ./work_dirs/<config name>)')
    return p


def parse(p: argparse.ArgumentParser, argv: Optional[list] = None) -> argparse.Namespace:
    """Adds the options both tools end with (``--cfg-options``, ``--launcher``) and parses."""
    p.add_argument('--cfg-options', nargs='+', action=DictAction, metavar='KEY=VALUE',
                   help='override config entries, e.g. test_dataloader.batch_size=2')
    p.add_argument('--launcher', choices=['none', 'pytorch', 'slurm'], default='none',
                   help='job launcher (pytorch: torchrun, as tools/dist_*.sh; slurm: srun, as '
                        'tools/slurm_*.sh)')
    # torch.distributed.launch passes --local_rank (or --local-rank); torchrun sets LOCAL_RANK.
    p.add_argument('--local_rank', '--local-rank', type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def run_config(args: argparse.Namespace, phase: str, options: Callable[[Any], None],
               prepare: Callable[[Any], None], run: Callable[[Any, Any], Any],
               kept: Optional[Callable[[str], str]] = None) -> Any:
    """Loads ``args.config``; ``options(cfg)`` applies the tool's own options; what ``phase``
    ('train' / 'test') reads is checked; ``prepare(cfg)`` readies the work dir and weights;
    ``run(runner, cfg)`` runs. What a user can fix ends as one ``error:`` line (on a failed write
    followed by ``kept(work_dir)``), not a traceback."""
    import metaformer_mm  # noqa: F401  (registers the backbones; safe checkpoint loading)
    from metaformer_mm.checkpoint import CheckpointError
    from metaformer_mm.cli.config import (ToolError, build_runner, check_neck_inputs,
                                          default_work_dir, error_line, load_config, write_error)
    from metaformer_mm.cli.datasets import (DatasetMissingError, check_annotation_files,
                                            check_dataset, explain_data_error,
                                            name_files_in_errors)
    from metaformer_mm.cli.distributed import close_distributed, init_distributed_without_cuda
    from metaformer_mm.datasets import DataError
    from metaformer_mm.engine import NonFiniteError
    cfg = None
    try:
        cfg = load_config(args.config, args.cfg_options)
        cfg.launcher = args.launcher
        cfg.work_dir = args.work_dir or cfg.get('work_dir') or default_work_dir(args.config)
        options(cfg)
        check_dataset(cfg, phase, config_name=args.config)
        check_annotation_files(cfg, phase)
        check_neck_inputs(cfg)
        prepare(cfg)
        name_files_in_errors(cfg, phase)
        init_distributed_without_cuda(cfg, args.launcher)
        runner = build_runner(cfg, args.config)
        try:
            return run(runner, cfg)
        except ValueError as err:  # JSONDecodeError is one
            why = explain_data_error(cfg, phase, err)
            if why is None:
                raise
            raise DataError(why) from err
        finally:
            runner = None  # the model (DDP holds the process group) goes before the group
    except (DatasetMissingError, ToolError, CheckpointError, NonFiniteError, DataError) as err:
        sys.exit(f'error: {error_line(err)}')
    except OSError as err:  # a full disk, a quota
        why = write_error(err)
        if why is None:
            raise
        sys.exit(f'error: {why}{kept(cfg.work_dir) if kept and cfg else ""}')
    finally:
        close_distributed()
