"""Tool options that rewrite the config: ``--amp``, ``--auto-scale-lr``, ``--compile``,
``--show-dir``, ``--out``."""
import os.path as osp
from typing import Any, Optional, Sequence

import torch
from mmengine.config import Config, ConfigDict
from mmengine.evaluator import DumpResults
from mmengine.logging import MMLogger
from mmengine.structures import BaseDataElement

from ..engine import compiles
from .config import ToolError, default_scope, output_file

VISUALIZATION_HOOKS = {'mmdet': 'DetVisualizationHook', 'mmseg': 'SegVisualizationHook'}


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
        from ..inference.bf16 import bf16_units
        units, reason = bf16_units(torch.device('cpu'))
        if not units:  # said once: enable_amp runs once per tool
            MMLogger.get_current_instance().warning(
                f'--amp: {reason}: bfloat16 is emulated on this CPU, and training is slower '
                f'than in fp32 (about 3x measured); drop --amp here')


def enable_auto_scale_lr(cfg: Config) -> None:
    """``--auto-scale-lr``: scale the lr by (GPUs x batch) / ``auto_scale_lr.base_batch_size``."""
    if 'base_batch_size' not in (cfg.get('auto_scale_lr') or {}):
        raise ToolError('--auto-scale-lr needs auto_scale_lr.base_batch_size in the config '
                        '(the total batch size its lr was tuned for)')
    cfg.auto_scale_lr.enable = True


# --------------------------------------------------------------------------- --compile
def enable_compile(cfg: Config, freezing: bool = False) -> None:
    """``--compile``: the config's ``compile`` key, True unless it gives options already;
    ``freezing`` (inference) adds Inductor's freezing."""
    if not compiles(cfg):
        cfg.compile = True
    if freezing:
        if cfg.compile is True:
            cfg.compile = ConfigDict()
        cfg.compile.setdefault('options', ConfigDict())['freezing'] = True


def compile_test_step(runner: Any) -> None:
    """Compiles ``test_step`` as mmengine compiles ``train_step`` under ``compile`` (mmengine
    0.10 compiles only the latter)."""
    if not compiles(runner.cfg):
        return
    options = {} if runner.cfg.compile is True else dict(runner.cfg.compile)
    runner.model.test_step = torch.compile(runner.model.test_step, **options)
    runner.logger.info(f'test_step compiled with torch.compile({options or ""}); the first '
                       f'iterations include the compilation')


# --------------------------------------------------------------------------- --show-dir
def enable_show_dir(cfg: Config, show_dir: str) -> None:
    """Draws test predictions into ``show_dir`` with the scope's visualization hook
    (segmentation: ``show_dir/vis_data/vis_image/``, mmseg's layout)."""
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
    """Pickles the test predictions (``--out``) compactly: no ground truth or logits, masks
    as COCO RLE, semantic maps as small-integer arrays."""

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
    """``--out`` must be a writable pickle file (what DumpResults writes)."""
    if not path.endswith(('.pkl', '.pickle')):
        raise ToolError(f'--out must end with .pkl or .pickle, got {path}')
    return output_file(path, '--out')
