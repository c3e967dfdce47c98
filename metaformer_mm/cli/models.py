"""Building a model from a config: the one way the tools do it."""
import copy
from typing import Dict, Optional, Union

import torch.nn as nn
from mmengine.config import Config
from mmengine.registry import Registry, init_default_scope

from .config import load_config


def model_registry(scope: str) -> Registry:
    """mmdet's or mmseg's ``MODELS``, with its scope initialised."""
    import metaformer_mm  # noqa: F401  (registers the backbones)
    init_default_scope(scope)
    if scope == 'mmseg':
        from mmseg.registry import MODELS
    else:
        from mmdet.registry import MODELS
    return MODELS


def backbone_config(cfg: Config) -> Dict:
    """The backbone of a config: ``model.backbone``, or a backbone ``model``/``backbone``."""
    model = cfg.get('model')
    if isinstance(model, dict) and isinstance(model.get('backbone'), dict):
        return copy.deepcopy(model.backbone)
    for candidate in (model, cfg.get('backbone')):
        if isinstance(candidate, dict) and 'type' in candidate:
            return copy.deepcopy(candidate)
    raise ValueError(f'{cfg.filename}: no model.backbone, model or backbone entry')


def load_backbone_weights(backbone: nn.Module, checkpoint: str) -> Dict:
    """Loads a whole model's ``backbone.*`` or backbone weights in any layout into
    ``backbone``, as strictly as ``init_cfg``; returns the report."""
    from metaformer_mm.checkpoint import load_pretrained
    return load_pretrained(backbone, checkpoint, prefix='auto')


def build_model_from_config(config: Union[str, Config], checkpoint: Optional[str] = None,
                            device: str = 'cpu', cfg_options: Optional[Dict] = None,
                            part: str = 'model',
                            backbone_overrides: Optional[Dict] = None) -> nn.Module:
    """The config's model (``part='model'``) or backbone, in eval mode, with
    ``checkpoint``'s weights (never ``init_cfg``'s downloads) or random ones.
    ``backbone_overrides`` update the backbone config; the config is ``model.cfg``, as
    ``init_detector`` does."""
    if part not in ('model', 'backbone'):
        raise ValueError(f"part must be 'model' or 'backbone', got {part!r}")
    cfg = load_config(config, cfg_options)
    registry = model_registry(cfg.default_scope)
    if part == 'backbone':
        model_cfg = backbone_config(cfg)
        model_cfg.update(backbone_overrides or {}, init_cfg=None)
    else:
        model_cfg = copy.deepcopy(cfg.model)
        model_cfg.backbone.update(backbone_overrides or {}, init_cfg=None)
        model_cfg.pop('pretrained', None)
    model = registry.build(model_cfg)
    if part == 'backbone':
        model.init_weights()
        if checkpoint:
            load_backbone_weights(model, checkpoint)
    elif checkpoint:
        from mmengine.runner import load_checkpoint
        load_checkpoint(model, checkpoint, map_location='cpu')
    model.cfg = cfg
    return model.to(device).eval()
