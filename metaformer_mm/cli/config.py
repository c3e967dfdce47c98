"""Config handling of the tools: reading a config, its default scope, test-only configs.

Also :class:`ToolError`, the tools' user-facing error (printed as one ``error:`` line).
"""
import os.path as osp
from typing import Dict, Optional

from mmengine.config import Config

SCOPES = ('mmdet', 'mmseg')


class ToolError(RuntimeError):
    """A user-facing error of the tools (bad checkpoint path, unknown scope, ...)."""


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
