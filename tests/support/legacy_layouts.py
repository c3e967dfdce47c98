"""This project's keys -> the sail-sg PoolFormer layout (mmdet 2.x / mmseg 0.x / official files):
the inverse of the loader's rule table, written out independently so that tests can build
released-layout checkpoints from this project's own models."""
import re
from collections import OrderedDict
from typing import Dict

import torch

_RULES = [
    (r'stem\.conv\.(.+)', lambda m: f'patch_embed.proj.{m[1]}'),
    (r'stages\.(\d)\.downsample\.conv\.(.+)',
     lambda m: f'network.{2 * int(m[1]) - 1}.proj.{m[2]}'),
    (r'stages\.(\d)\.blocks\.(\d+)\.layer_scale([12])\.scale',
     lambda m: f'network.{2 * int(m[1])}.{m[2]}.layer_scale_{m[3]}'),
    (r'stages\.(\d)\.blocks\.(\d+)\.(.+)', lambda m: f'network.{2 * int(m[1])}.{m[2]}.{m[3]}'),
    (r'out_norms\.(\d)\.(.+)', lambda m: f'norm{2 * int(m[1])}.{m[2]}'),
]


def legacy_backbone_key(key: str) -> str:
    """One backbone key (no prefix) in the sail-sg layout; an unmapped key is a test bug."""
    for pattern, build in _RULES:
        match = re.fullmatch(pattern, key)
        if match:
            return build(match)
    raise AssertionError(f'unmapped backbone key {key}')


def to_legacy(state: Dict[str, torch.Tensor], prefix: str = 'backbone.') -> Dict:
    """A whole-model state dict with its ``prefix`` keys in the sail-sg layout (copies)."""
    return OrderedDict(
        (prefix + legacy_backbone_key(k[len(prefix):]) if k.startswith(prefix) else k, v.clone())
        for k, v in state.items())
