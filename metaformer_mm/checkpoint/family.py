"""The architecture a checkpoint names, compared with the model it is loaded into.

Families without token-mixer weights share one tensor layout (an IdentityFormer-S12 file fits
a PoolFormerV2-S12 tensor for tensor). Where a file names its architecture, in its embedded
config (``model.backbone`` type/arch, found by a bounded scan: the text is untrusted and never
executed) or its file name, the token mixers of that preset must match the model's."""
import os.path as osp
import re
import urllib.parse
from typing import Dict, List, Optional, Tuple

import torch.nn as nn

from .io import CheckpointError, is_url

_SCAN_CHARS = 1 << 16  # a backbone entry is a few hundred characters
_TOKEN = re.compile(r"""'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*"|[()\[\]{}]|(\w+)\s*=(?!=)""")


def _presets():
    """(``FAMILIES``, ``MIXERS``), imported late: models imports this package."""
    from ..models.backbones.presets import FAMILIES
    from ..models.mixers import MIXERS
    return FAMILIES, MIXERS


def _backbone_fields(text: str) -> Dict[str, str]:
    """The string fields (``type``, ``arch``, ``arch.base``) of the first
    ``backbone=dict(...)`` of config ``text``, and its other field names (value '')."""
    start = text.find('backbone=dict(')
    if start < 0:
        return {}
    fields: Dict[str, str] = {}
    depth, key, parents = 1, None, []
    for match in _TOKEN.finditer(text, start + len('backbone=dict('),
                                 start + len('backbone=dict(') + _SCAN_CHARS):
        token = match.group(0)
        if match.group(1):  # NAME=
            key = match.group(1)
            if depth == 1:
                fields.setdefault(key, '')
            continue
        if token in '([{':
            parents.append(key)
            depth += 1
        elif token in ')]}':
            depth -= 1
            if depth == 0:
                break
            parents.pop()
        elif key is not None and token[0] in '\'"':
            if depth == 1:
                fields[key] = token[1:-1]
            elif depth == 2 and parents[-1] == 'arch' and key == 'base':
                fields['arch.base'] = token[1:-1]
        key = None
    return fields


def _family_in(name: str, families) -> Optional[str]:
    """The one family a name (a file name, an arch, a class name) names, or None."""
    pattern = '|'.join(sorted(families, key=len, reverse=True))
    found = {m.group(1) for m in re.finditer(rf'(?<![a-z])({pattern})(?![a-z0-9])',
                                            name.lower())}
    return found.pop() if len(found) == 1 else None


def named_architecture(path: str, config_text: Optional[str]) -> Optional[Tuple[str, str]]:
    """``(family, where it is named)`` of the checkpoint ``path``, or None (none named, or
    its config overrides the token mixers)."""
    families, _ = _presets()
    if config_text:
        fields = _backbone_fields(config_text)
        if 'token_mixers' in fields:
            return None
        for key in ('arch.base', 'arch', 'type'):
            family = _family_in(fields.get(key, '').split('.')[-1], families)
            if family:
                return family, f'its embedded config (model.backbone {key}={fields[key]!r})'
        if fields:
            return None
    name = osp.basename(urllib.parse.urlparse(path).path if is_url(path) else path)
    family = _family_in(name, families)
    return (family, f'its file name ({name})') if family else None


def model_mixers(module: nn.Module) -> Optional[List[str]]:
    """The token mixer of each stage of a MetaFormer, by name, or None if not one."""
    _, mixers = _presets()
    names = {cls: name for name, cls in mixers.items()}
    try:
        return [names[type(stage.blocks[0].token_mixer)] for stage in module.stages]
    except (AttributeError, IndexError, KeyError, TypeError):
        return None


def check_architecture(module: nn.Module, path: Optional[str],
                       config_text: Optional[str]) -> None:
    """Refuses loading ``path`` into ``module`` when the file names an architecture with
    other token mixers."""
    if not path:
        return
    named = named_architecture(path, config_text)
    ours = model_mixers(module) if named else None
    if not named or ours is None:
        return
    family, where = named
    from ..models.backbones.arch import mixer_types
    families, _ = _presets()
    theirs = mixer_types(next(iter(families[family].values()))['token_mixers'])
    if theirs != ours:
        raise CheckpointError(
            f'{path} holds weights of another architecture: {where} names {family} '
            f'(token mixers {theirs}), but the model is a {type(module).__name__} with token '
            f'mixers {ours}. The tensors may fit, the network would not compute what was '
            f'trained. Use the config of {family}, or weights of this architecture (to load '
            f'them anyway, set the backbone\'s strict_load=False).')
