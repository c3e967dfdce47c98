"""Distributed runs of the tools on machines without CUDA (gloo via torchrun or Slurm)."""
import datetime
import gc
import os
import subprocess
from typing import Any

import torch
from mmengine.config import Config, ConfigDict
from mmengine.logging import MMLogger

from .config import ToolError


def init_distributed_without_cuda(cfg: Config, launcher: str) -> bool:
    """Starts torch.distributed with gloo on machines without CUDA, where mmengine's
    ``init_dist`` (``torch.cuda.set_device``) and DDP wrapper (``device_ids``) fail; the Runner
    then finds the group initialised. Returns whether it did anything."""
    if launcher == 'none' or torch.cuda.is_available():
        return False
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return False
    logger = MMLogger.get_current_instance()
    if launcher == 'slurm':
        _slurm_env()
    elif launcher != 'pytorch':
        raise ToolError(f'launcher {launcher!r} needs CUDA; on CPU use pytorch or slurm')
    missing = [v for v in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
               if v not in os.environ]
    if missing:
        raise ToolError(f'--launcher {launcher}: environment variables {missing} are not set; '
                        f'start the tool through tools/dist_train.sh (torchrun) or srun')
    env_cfg = cfg.setdefault('env_cfg', ConfigDict())
    dist_cfg = env_cfg.setdefault('dist_cfg', ConfigDict())
    if dist_cfg.get('backend', 'gloo') != 'gloo':
        logger.warning(f'no CUDA: using the gloo backend instead of {dist_cfg["backend"]}')
    dist_cfg.backend = 'gloo'
    kwargs = {}
    if dist_cfg.get('timeout') is not None:  # seconds in mmengine's dist_cfg
        kwargs['timeout'] = datetime.timedelta(seconds=dist_cfg['timeout'])
    dist.init_process_group(backend='gloo', **kwargs)
    if _replace_sync_bn(cfg.get('model')):
        # DDP refuses SyncBatchNorm on CPU modules; each process normalizes its own batch.
        logger.warning('no CUDA: SyncBN layers of the config run as BN (per-process statistics)')
    wrapper = cfg.get('model_wrapper_cfg')
    if wrapper is None:
        cfg.model_wrapper_cfg = ConfigDict(
            type='MMDistributedDataParallel', device_ids=None, broadcast_buffers=False,
            find_unused_parameters=cfg.get('find_unused_parameters', False))
    else:
        wrapper.setdefault('device_ids', None)
    return True


def close_distributed() -> None:
    """Leaves the process group once the tool has dropped its runner: left to interpreter
    exit, gloo's teardown aborts a finished run (pytorch/pytorch#190489)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        gc.collect()  # DDP modules in reference cycles
        dist.destroy_process_group()


def _replace_sync_bn(node: Any) -> bool:
    """Turns every ``type='SyncBN'`` below ``node`` into BN; True if any."""
    found = False
    if isinstance(node, dict):
        if node.get('type') == 'SyncBN':
            node['type'] = 'BN'
            return True
        for value in node.values():
            found |= _replace_sync_bn(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            found |= _replace_sync_bn(value)
    return found


def _slurm_env() -> None:
    """torch.distributed's environment from Slurm's (what mmengine's slurm launcher does)."""
    try:
        os.environ.setdefault('RANK', os.environ['SLURM_PROCID'])
        os.environ.setdefault('WORLD_SIZE', os.environ['SLURM_NTASKS'])
        os.environ.setdefault('LOCAL_RANK', os.environ.get('SLURM_LOCALID', '0'))
    except KeyError as err:
        raise ToolError(f'--launcher slurm: {err.args[0]} is not set; start through srun '
                        f'(tools/slurm_train.sh)') from None
    if 'MASTER_ADDR' not in os.environ:
        nodes = os.environ.get('SLURM_NODELIST', '')
        try:
            out = subprocess.run(['scontrol', 'show', 'hostnames', nodes], capture_output=True,
                                 text=True, check=True).stdout.split()
        except (OSError, subprocess.CalledProcessError):
            out = []
        os.environ['MASTER_ADDR'] = out[0] if out else '127.0.0.1'
    os.environ.setdefault('MASTER_PORT', '29500')
