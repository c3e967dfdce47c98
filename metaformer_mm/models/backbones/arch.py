"""Turning ``arch=`` (a preset name or a dict) and keyword overrides into backbone settings.

Each backbone class holds the presets it builds (``arch_settings``, its family's table from
``presets.py``; all of them for the general ``MetaFormer``) and the prefix its short names
take (``'s12'`` -> ``'poolformer_s12'``). A preset of another family is refused with the
class, the name and the allowed presets; an unknown keyword with the valid arguments and the
closest match.
"""
import copy
import difflib
import inspect
from typing import Dict, List, Union

from mmengine.model import BaseModule

from .presets import ARCH_SETTINGS, FAMILIES

# Arguments a user may override on top of a preset (or give in full as ``arch=dict(...)``).
ARCH_KEYS = ('depths', 'dims', 'token_mixers', 'mlp_ratios', 'norm_cfg', 'act_cfg', 'mlp_bias',
             'layer_scale_init_value', 'res_scale_init_values', 'stem', 'downsample',
             'out_norm_cfg', 'head')
# Keywords beside ARCH_KEYS: the pool size of every pooling mixer, and sMLPNet's missing
# pre-mixer norm (``norm1_cfg=None``).
EXTRA_KEYS = ('pool_size', 'norm1_cfg')


def preset_name(cls: type, arch: str, base: bool = False) -> str:
    """The full preset name of ``arch`` (an ``arch=`` string, or with ``base`` the base of an
    arch dict) for ``cls``; refuses unknown names and the presets of another family."""
    presets, prefix = cls.arch_settings, cls.arch_prefix
    name = arch if arch in presets else f'{prefix}{arch}'
    if name in presets:
        return name
    allowed = sorted(k[len(prefix):] for k in presets if k.startswith(prefix))
    other = arch if arch in ARCH_SETTINGS else name if name in ARCH_SETTINGS else None
    if other is not None:
        family = next(f for f, members in FAMILIES.items() if other in members)
        raise ValueError(f'{cls.__name__} does not build arch {arch!r}, a preset of the '
                         f'{family} family; allowed for {cls.__name__}: {allowed} (the general '
                         f'MetaFormer class takes any preset)')
    close = difflib.get_close_matches(arch, allowed + sorted(presets), n=1)
    hint = f'; did you mean {close[0]!r}?' if close else ''
    if base:
        raise ValueError(f'unknown arch base {arch!r}; allowed: {sorted(presets)}{hint}')
    raise ValueError(f'unknown arch {arch!r} for {cls.__name__}; allowed: {allowed}{hint}')


def constructor_args(cls: type) -> List[str]:
    """Named arguments of the constructors of ``cls`` and its bases below ``BaseModule``."""
    names: List[str] = []
    for klass in cls.__mro__:
        if klass is BaseModule:
            break
        if '__init__' in klass.__dict__:
            for param in inspect.signature(klass.__dict__['__init__']).parameters.values():
                if (param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)
                        and param.name != 'self' and param.name not in names):
                    names.append(param.name)
    return names


def resolve_arch(cls: type, arch: Union[str, Dict], overrides: Dict) -> Dict:
    """Settings of ``arch`` (a preset name of ``cls`` or a dict, optionally with ``base``)
    updated by ``overrides``; keys a preset leaves out take PoolFormer-S12's values."""
    if isinstance(arch, str):
        settings = copy.deepcopy(cls.arch_settings[preset_name(cls, arch)])
    elif isinstance(arch, dict):
        base = arch.get('base')
        # A misspelt key (e.g. 'dim') would otherwise be ignored silently.
        typos = set(arch) - set(ARCH_KEYS) - {'base', 'norm1_cfg'}
        if typos:
            raise ValueError(f'unknown arch dict keys {sorted(typos)}; allowed: '
                             f'{["base", *ARCH_KEYS]}')
        settings = (copy.deepcopy(cls.arch_settings[preset_name(cls, base, base=True)])
                    if base else {})
        settings.update({k: v for k, v in arch.items() if k != 'base'})
    else:
        raise TypeError(f'arch must be a preset name or a dict, got {type(arch).__name__}')
    unknown = sorted(set(overrides) - set(ARCH_KEYS) - set(EXTRA_KEYS))
    if unknown:
        valid = constructor_args(cls) + list(ARCH_KEYS) + ['pool_size']
        hints = [f'{close[0]!r} for {key!r}' for key in unknown
                 for close in [difflib.get_close_matches(key, valid, n=1)] if close]
        hint = f' (did you mean {", ".join(hints)}?)' if hints else ''
        raise TypeError(f'{cls.__name__} got unexpected arguments {unknown}{hint}; valid '
                        f'arguments are {valid}')
    settings.update(copy.deepcopy(overrides))
    missing = {'depths', 'dims', 'stem', 'downsample'} - set(settings)
    if missing:
        raise ValueError(f'arch dict lacks {sorted(missing)}; give them or base=PRESET')
    for key, value in ARCH_SETTINGS['poolformer_s12'].items():
        settings.setdefault(key, copy.deepcopy(value))
    return settings
