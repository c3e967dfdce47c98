"""Shared logic of ``tools/train.py`` and ``tools/test.py``, kept here so tests can call it.

The tools are thin layers over mmengine's ``Runner`` that work for mmdet and mmseg configs
alike. This module holds what they add: choosing the default scope, a clear error when the
dataset is missing, ``--amp`` (also on CPU), ``--show-dir``, ``--out``, converting released
mmdet 2.x / mmseg 0.x checkpoints on load, and distributed runs on machines without CUDA.
"""
import copy
import datetime
import os
import os.path as osp
import subprocess
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmengine.config import Config, ConfigDict
from mmengine.evaluator import DumpResults
from mmengine.logging import MMLogger
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS
from mmengine.structures import BaseDataElement

SCOPES = ('mmdet', 'mmseg')
# Checkpoint conversion kind of each scope (see metaformer_mm.checkpoint).
LEGACY_KIND = {'mmdet': 'mmdet2', 'mmseg': 'mmseg0'}
VISUALIZATION_HOOKS = {'mmdet': 'DetVisualizationHook', 'mmseg': 'SegVisualizationHook'}


class DatasetMissingError(FileNotFoundError):
    """The files a config's datasets read are not there; the message says what and how to fix."""


class ToolError(RuntimeError):
    """A user-facing error of the tools (bad checkpoint path, unknown scope, ...)."""


# --------------------------------------------------------------------------- config
def load_config(path: str, cfg_options: Optional[Dict] = None) -> Config:
    """Reads a config, merges ``--cfg-options`` and makes sure it names its default scope."""
    if not osp.isfile(path):
        raise ToolError(f'config file not found: {path}')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    cfg.default_scope = default_scope(cfg)
    return cfg


def default_scope(cfg: Config) -> str:
    """'mmdet' or 'mmseg': the config's ``default_scope``, else guessed from the model."""
    scope = cfg.get('default_scope')
    if scope is None:
        model = cfg.get('model') or {}
        scope = 'mmseg' if 'decode_head' in model else 'mmdet'
    if scope not in SCOPES:
        raise ToolError(f'default_scope {scope!r} is not supported by these tools; '
                        f'expected one of {SCOPES}')
    return scope


def drop_training(cfg: Config) -> None:
    """Removes the training parts from a config that only tests.

    Without them the Runner never builds the training loop, which some hooks would
    otherwise build on the fly just to read the iteration count (mmseg's
    SegVisualizationHook does), reading the training split a test run does not need.
    """
    for key in ('train_dataloader', 'train_cfg', 'optim_wrapper', 'param_scheduler'):
        cfg[key] = None


def default_work_dir(config_path: str) -> str:
    """``./work_dirs/<config name>``, mmdet's convention."""
    return osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


# --------------------------------------------------------------------------- dataset check
# Dataloaders and evaluators each command reads; val only when the train loop validates.
_PHASES = {
    'train': (('train_dataloader', None), ('val_dataloader', 'val_evaluator')),
    'test': (('test_dataloader', 'test_evaluator'),),
}


def _is_remote(path: str) -> bool:
    return '://' in path


def _join(root: Optional[str], path: str) -> str:
    # mmengine's BaseDataset joins data_root with relative paths only.
    return path if not root or osp.isabs(path) or _is_remote(path) else osp.join(root, path)


def _dataset_needs(ds: Any, key: str) -> Tuple[List[Tuple[str, str, str]], List[Tuple[str, str]]]:
    """(path, 'file'|'dir', option key) triples a dataset config reads, and its data roots."""
    needs: List[Tuple[str, str, str]] = []
    roots: List[Tuple[str, str]] = []
    if not isinstance(ds, dict):
        return needs, roots
    if isinstance(ds.get('dataset'), dict):  # RepeatDataset, ClassBalancedDataset, ...
        sub_needs, sub_roots = _dataset_needs(ds['dataset'], f'{key}.dataset')
        needs += sub_needs
        roots += sub_roots
    for i, sub in enumerate(ds.get('datasets') or []):  # ConcatDataset
        sub_needs, sub_roots = _dataset_needs(sub, f'{key}.datasets.{i}')
        needs += sub_needs
        roots += sub_roots
    if ds.get('backend_args'):  # a remote storage backend: nothing to check locally
        return needs, roots
    root = ds.get('data_root')
    if root:
        roots.append((f'{key}.data_root', root))
    if ds.get('ann_file'):
        needs.append((_join(root, ds['ann_file']), 'file', key))
    prefix = ds.get('data_prefix') or {}
    if isinstance(prefix, dict):
        for value in prefix.values():
            if isinstance(value, str) and value:
                needs.append((_join(root, value), 'dir', key))
    return needs, roots


def _evaluator_needs(ev: Any, key: str) -> List[Tuple[str, str, str]]:
    if isinstance(ev, (list, tuple)):
        return [n for i, e in enumerate(ev) for n in _evaluator_needs(e, f'{key}.{i}')]
    if isinstance(ev, dict) and isinstance(ev.get('ann_file'), str) and ev['ann_file'] \
            and not ev.get('backend_args'):
        return [(ev['ann_file'], 'file', f'{key}.ann_file')]
    return []


def dataset_requirements(cfg: Config, phase: str) -> Tuple[List[Tuple[str, str, str]],
                                                             List[Tuple[str, str]]]:
    """Files/dirs that ``phase`` ('train' or 'test') reads, and the data roots they hang from.

    Returns ``(needs, roots)``: ``needs`` holds ``(path, 'file'|'dir', cfg key)``, ``roots``
    ``(cfg key of a data_root, its value)``.
    """
    if phase not in _PHASES:
        raise ValueError(f'phase must be one of {sorted(_PHASES)}, got {phase!r}')
    needs: List[Tuple[str, str, str]] = []
    roots: List[Tuple[str, str]] = []
    for loader_key, evaluator_key in _PHASES[phase]:
        loader = cfg.get(loader_key)
        if not loader:
            continue
        if phase == 'train' and loader_key == 'val_dataloader' and not (
                cfg.get('val_cfg') and cfg.get('val_evaluator')):
            continue  # the Runner builds no validation loop
        ds_needs, ds_roots = _dataset_needs(loader.get('dataset'), f'{loader_key}.dataset')
        needs += ds_needs
        roots += ds_roots
        if evaluator_key:
            needs += _evaluator_needs(cfg.get(evaluator_key), evaluator_key)
    return [n for n in needs if not _is_remote(n[0])], roots


def check_dataset(cfg: Config, phase: str, config_name: str = 'the config') -> None:
    """Raises :class:`DatasetMissingError` naming every missing file and how to fix it.

    Call before building the Runner, so that a missing dataset is one message rather than a
    stack trace from deep inside dataset construction.
    """
    needs, roots = dataset_requirements(cfg, phase)
    # test_dataloader is usually val_dataloader: report each path once.
    missing = list(dict.fromkeys((p, kind) for p, kind, _ in needs
                                 if not (osp.isdir(p) if kind == 'dir' else osp.isfile(p))))
    if not missing:
        return
    where = ('' if all(osp.isabs(p) for p, _ in missing)
             else f' (relative to {os.getcwd()})')
    lines = [f'The dataset that {config_name} reads is missing. Not found{where}:']
    lines += [f'  {p.rstrip("/") + "/" if kind == "dir" else p}' for p, kind in missing]
    lines.append(_fix_hint(cfg, needs, roots))
    raise DatasetMissingError('\n'.join(lines))


def _fix_hint(cfg: Config, needs: List[Tuple[str, str, str]],
              roots: List[Tuple[str, str]]) -> str:
    values = sorted({r.rstrip('/') for _, r in roots})
    name = osp.basename(values[0]) if values else 'dataset'
    new_root = f'/path/to/{name}/'
    options = [f'{key}={new_root}' for key, _ in roots]
    for path, _, key in needs:  # evaluator annotation files are absolute-ish paths of their own
        if key.endswith('.ann_file'):
            rel = next((path[len(r):].lstrip('/') for r in values if path.startswith(r)), None)
            options.append(f'{key}={new_root}{rel}' if rel
                           else f'{key}=/path/to/{osp.basename(path)}')
    lines = []
    if len(values) == 1 and not osp.isabs(values[0]):
        parent = osp.dirname(values[0])
        mkdir = f'mkdir -p {parent} && ' if parent else ''
        lines.append(f'Put the dataset at {values[0]}/ (e.g. {mkdir}ln -s /path/to/{name} '
                     f'{values[0]}), or point the config elsewhere:')
    else:
        lines.append('Point the config at the dataset:')
    if options:
        lines.append('  --cfg-options ' + ' '.join(dict.fromkeys(options)))
    return '\n'.join(lines)


# --------------------------------------------------------------------------- --amp
@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(OptimWrapper):
    """Mixed precision on CPU: bfloat16 autocast in the forward pass.

    mmengine's ``AmpOptimWrapper`` needs a GPU (its fp16 loss scaling is CUDA-only);
    bfloat16 has float32's exponent range, so no loss scaling is needed.
    """

    def __init__(self, dtype: str = 'bfloat16', **kwargs) -> None:
        super().__init__(**kwargs)
        self.cast_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype

    @contextmanager
    def optim_context(self, model: nn.Module) -> Iterator[None]:
        with super().optim_context(model), torch.autocast('cpu', dtype=self.cast_dtype):
            yield


def enable_amp(cfg: Config, cuda: Optional[bool] = None) -> None:
    """``--amp``: fp16 with dynamic loss scaling on CUDA, bfloat16 autocast on CPU."""
    cuda = torch.cuda.is_available() if cuda is None else cuda
    wrapper = cfg.optim_wrapper
    if wrapper.get('type') in ('AmpOptimWrapper', 'CPUAmpOptimWrapper'):
        MMLogger.get_current_instance().info('--amp: the config already uses mixed precision')
        return
    if wrapper.get('type', 'OptimWrapper') != 'OptimWrapper':
        raise ToolError(f'--amp needs optim_wrapper.type OptimWrapper, the config has '
                        f'{wrapper.get("type")}')
    model = cfg.get('model') or {}
    if not cuda and ('rpn_head' in model or 'roi_head' in model):
        # The RPN's proposals go through NMS inside the autocast region during training.
        raise ToolError('--amp on CPU trains in bfloat16, and mmcv\'s CPU NMS kernel has no '
                        'bfloat16 version, so two-stage detectors (RPN/RoI heads) cannot use '
                        'it; drop --amp or train on a GPU (fp16)')
    if cuda:
        wrapper.type = 'AmpOptimWrapper'
        wrapper.loss_scale = 'dynamic'
    else:
        wrapper.type = 'CPUAmpOptimWrapper'
        wrapper.dtype = 'bfloat16'


def enable_auto_scale_lr(cfg: Config) -> None:
    """``--auto-scale-lr``: scale the lr by (GPUs x batch) / ``auto_scale_lr.base_batch_size``."""
    if 'base_batch_size' not in (cfg.get('auto_scale_lr') or {}):
        raise ToolError('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config '
                        '(the total batch size its lr was tuned for)')
    cfg.auto_scale_lr.enable = True


# --------------------------------------------------------------------------- --show-dir
def enable_show_dir(cfg: Config, show_dir: str) -> None:
    """Draws predictions of the test set into ``show_dir`` with the scope's visualization hook.

    Detection writes ``show_dir/<image name>``; segmentation writes through the visualizer's
    local backend, ``show_dir/vis_data/vis_image/<image name>_<step>.png`` (mmseg's layout).
    """
    scope = default_scope(cfg)
    hook_type = VISUALIZATION_HOOKS[scope]
    hooks = cfg.setdefault('default_hooks', ConfigDict())
    hook = hooks.get('visualization') or ConfigDict(type=hook_type)
    if hook.get('type') != hook_type:
        hook = ConfigDict(type=hook_type)
    hook.draw = True
    show_dir = osp.abspath(show_dir)
    if scope == 'mmdet':
        hook.test_out_dir = show_dir  # absolute: mmdet would put a relative one in work_dir
    else:
        hook.interval = 1  # every test image, as for detection
        cfg.visualizer.save_dir = show_dir
    hooks.visualization = hook


# --------------------------------------------------------------------------- --out
class DumpPredictions(DumpResults):
    """Pickles the test predictions (``--out``), compactly.

    Ground truth and segmentation logits are dropped, instance masks are stored as COCO RLE
    and semantic maps as small-integer numpy arrays: raw tensors would take gigabytes on
    COCO or ADE20K.
    """

    _DROP = ('gt_instances', 'ignored_instances', 'gt_panoptic_seg', 'gt_sem_seg', 'seg_logits')

    def process(self, data_batch: Any, data_samples: Sequence[Any]) -> None:
        for sample in data_samples:
            if isinstance(sample, BaseDataElement):
                sample = sample.to_dict()
            sample = {k: v for k, v in sample.items() if k not in self._DROP}
            sample = _to_cpu(sample)
            pred = sample.get('pred_instances')
            if isinstance(pred, dict) and torch.is_tensor(pred.get('masks')):
                from mmdet.structures.mask import encode_mask_results
                pred['masks'] = encode_mask_results(pred['masks'].numpy())
            sem = sample.get('pred_sem_seg')
            if isinstance(sem, dict) and torch.is_tensor(sem.get('data')):
                data = sem['data']
                small = torch.uint8 if data.numel() == 0 or int(data.max()) < 256 else torch.int16
                sem['data'] = data.to(small).numpy()
            self.results.append(sample)


def _to_cpu(obj: Any) -> Any:
    if torch.is_tensor(obj):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def check_out_path(path: str) -> str:
    """``--out`` must be a pickle file (mmengine's DumpResults writes pickles)."""
    if not path.endswith(('.pkl', '.pickle')):
        raise ToolError(f'--out must end with .pkl or .pickle, got {path}')
    return path


# --------------------------------------------------------------------------- checkpoints
def load_test_checkpoint(path: str, scope: str) -> Tuple[Dict, Dict]:
    """For ``tools/test.py``: the model state of ``path`` and its ``dataset_meta``.

    Released mmdet 2.x / mmseg 0.x checkpoints (a MetaFormer backbone in a foreign layout,
    such as the sail-sg releases) are converted in memory; this project's own come as they are.
    """
    from .checkpoint import (convert_detector_checkpoint, detector_backbone_layout,
                             detector_dataset_meta, extract_state_dict, read_checkpoint)
    if not _is_remote(path) and not osp.isfile(path):
        raise ToolError(f'checkpoint file not found: {path}')
    raw = read_checkpoint(path)
    state = extract_state_dict(raw, path)
    layout = detector_backbone_layout(state)
    if layout not in (None, 'metaformer_mm'):
        state = convert_detector_checkpoint(state, LEGACY_KIND[scope])
        MMLogger.get_current_instance().info(
            f'{path}: backbone in the {layout} layout ({LEGACY_KIND[scope]} release); '
            f'converted {len(state)} tensors to this project\'s keys')
    return state, detector_dataset_meta(raw)


def load_state_into_runner(runner: Any, state: Dict, dataset_meta: Dict) -> None:
    """Loads a state dict into the Runner's model strictly: a checkpoint of another config
    is an error, not an evaluation of half-initialised weights."""
    from mmengine.model import is_model_wrapper
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    from .checkpoint import CheckpointError
    try:
        # strict=False only to word the error: any missing or unexpected key is refused below.
        result = model.load_state_dict(state, strict=False)
    except CheckpointError:  # the backbone's own check, which names the file: keep its words
        raise
    except RuntimeError as err:  # size mismatches
        detail = ' '.join(str(err).split('\n')[1:3]).strip()
        raise ToolError(f'the checkpoint does not fit the config\'s model: {detail} '
                        f'(is it a checkpoint of another config?)') from None
    if result.missing_keys or result.unexpected_keys:
        raise ToolError(
            f'the checkpoint does not fit the config\'s model: '
            f'{len(result.missing_keys)} missing keys {result.missing_keys[:6]}, '
            f'{len(result.unexpected_keys)} unexpected keys {result.unexpected_keys[:6]} '
            f'(is it a checkpoint of another config?)')
    if dataset_meta:
        model.dataset_meta = copy.deepcopy(dataset_meta)


# --------------------------------------------------------------------------- distributed
def init_distributed_without_cuda(cfg: Config, launcher: str) -> bool:
    """Starts torch.distributed on CPU-only machines, where mmengine's launcher code fails.

    mmengine's ``init_dist`` calls ``torch.cuda.set_device`` and its DDP wrapper passes
    ``device_ids``; both need CUDA. On a CPU-only machine this joins the process group with
    gloo (from torchrun's or Slurm's environment) and wraps the model without ``device_ids``;
    the Runner then finds the group already initialised. Returns whether it did anything.
    """
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


def _replace_sync_bn(node: Any) -> bool:
    """Turns every ``norm_cfg=dict(type='SyncBN')`` below ``node`` into BN; True if any."""
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
