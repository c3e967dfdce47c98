"""Turning ``arch=`` (a preset name or a dict) and keyword overrides into backbone settings,
and checking every argument (``ARGUMENT_CHECKS``)."""
import copy
import difflib
import inspect
from functools import partial
from typing import Any, Callable, Dict, List, Tuple, Union

from mmengine.model import BaseModule

from ..checks import ArgumentError, check_bool, check_int, check_number, fail, is_int, is_number
from .presets import FAMILIES

NUM_STAGES = 4

# Arguments a user may override on top of a preset (or give in full as ``arch=dict(...)``).
ARCH_KEYS = ('depths', 'dims', 'token_mixers', 'mlp_ratios', 'norm_cfg', 'act_cfg', 'mlp_bias',
             'layer_scale_init_value', 'res_scale_init_values', 'stem', 'downsample',
             'out_norm_cfg', 'head', 'norm1_cfg')
# Keywords beside ARCH_KEYS: an option of every token mixer of the kinds named.
MIXER_OPTIONS = {'pool_size': ('pooling',), 'image_size': ('random', 'smlp'),
                 'max_matrix_mb': ('random',), 'resize_mode': ('smlp',)}


def preset_name(cls: type, arch: str, base: bool = False) -> str:
    """The full preset name of ``arch`` for ``cls`` (``base``: the base of an arch dict);
    refuses unknown names and other families' presets."""
    presets, prefix = cls.arch_settings, cls.arch_prefix
    name = arch if arch in presets else f'{prefix}{arch}'
    if name in presets:
        return name
    allowed = sorted(k[len(prefix):] for k in presets if k.startswith(prefix))
    family = next((f for f, members in FAMILIES.items() if arch in members or name in members),
                  None)
    if family is not None:
        raise ValueError(f'{cls.__name__} does not build arch {arch!r}, a preset of the '
                         f'{family} family; allowed for {cls.__name__}: {allowed} (the general '
                         f'MetaFormer class takes any preset)')
    close = difflib.get_close_matches(arch, allowed + sorted(presets), n=1)
    hint = f'; did you mean {close[0]!r}?' if close else ''
    if base:
        raise ValueError(f'unknown arch base {arch!r}; allowed: {sorted(presets)}{hint}')
    raise ValueError(f'unknown arch {arch!r} for {cls.__name__}; allowed: {allowed}{hint}')


def mixer_types(token_mixers: Any) -> List[Any]:
    """The type of each stage's token mixer in a ``token_mixers`` setting (one or per stage)."""
    per_stage = (token_mixers if isinstance(token_mixers, (list, tuple))
                 else [token_mixers] * NUM_STAGES)
    return [m.get('type') if isinstance(m, dict) else m for m in per_stage]


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
    """Settings of ``arch`` updated by ``overrides``; keys a preset leaves out take
    PoolFormer-S12's values."""
    presets = cls.arch_settings
    if isinstance(arch, str):
        settings = copy.deepcopy(presets[preset_name(cls, arch)])
    elif isinstance(arch, dict):
        base = arch.get('base')
        # A misspelt key (e.g. 'dim') would otherwise be ignored silently.
        typos = set(arch) - set(ARCH_KEYS) - {'base'}
        if typos:
            raise ValueError(f'unknown arch dict keys {sorted(typos)}; allowed: '
                             f'{["base", *ARCH_KEYS]}')
        settings = (copy.deepcopy(presets[preset_name(cls, base, base=True)])
                    if base else {})
        settings.update({k: v for k, v in arch.items() if k != 'base'})
    else:
        raise TypeError(f'arch must be a preset name or a dict, got {type(arch).__name__}')
    unknown = sorted(set(overrides) - set(ARCH_KEYS) - set(MIXER_OPTIONS))
    if unknown:
        valid = constructor_args(cls) + list(ARCH_KEYS) + list(MIXER_OPTIONS)
        hints = [f'{close[0]!r} for {key!r}' for key in unknown
                 for close in [difflib.get_close_matches(key, valid, n=1)] if close]
        hint = f' (did you mean {", ".join(hints)}?)' if hints else ''
        raise TypeError(f'{cls.__name__} got unexpected arguments {unknown}{hint}; valid '
                        f'arguments are {valid}')
    settings.update(copy.deepcopy(overrides))
    missing = {'depths', 'dims', 'stem', 'downsample'} - set(settings)
    if missing:
        raise ValueError(f'arch dict lacks {sorted(missing)}; give them or base=PRESET')
    for key, value in FAMILIES['poolformer']['poolformer_s12'].items():
        settings.setdefault(key, copy.deepcopy(value))
    return settings


# --------------------------------------------------------------------------- argument checks
def _stage_indices(owner: str, name: str, out_indices: Any) -> Tuple[int, ...]:
    """``out_indices`` as sorted stage indices 0..3 (negatives count from the end)."""
    values = [out_indices] if is_int(out_indices) else out_indices
    if not isinstance(values, (list, tuple)):
        fail(owner, name, f'a stage index in {-NUM_STAGES}..{NUM_STAGES - 1} or a list of them',
             out_indices, kind='a list of integers')
    if not all(is_int(i) and -NUM_STAGES <= i < NUM_STAGES for i in values):
        raise ArgumentError(f'{owner}: out_indices must hold stage indices in {-NUM_STAGES}..'
                            f'{NUM_STAGES - 1}, got {list(values)}')
    result = [i % NUM_STAGES for i in values]
    if len(set(result)) != len(result) or not result:
        raise ArgumentError(f'{owner}: out_indices must be non-empty and name each stage once, '
                            f'got {list(values)}')
    return tuple(sorted(result))


def _per_stage_numbers(owner: str, name: str, value: Any) -> None:
    """None or a finite number, once or per stage (the count is checked where expanded)."""
    for v in value if isinstance(value, (list, tuple)) else [value]:
        check_number(owner, name, v, optional=True,
                     wanted='a finite number or None (one per stage or a single value)')


def _init_cfg(owner: str, name: str, init_cfg: Any) -> None:
    if init_cfg is None:
        return
    for cfg in init_cfg if isinstance(init_cfg, (list, tuple)) else [init_cfg]:
        if not isinstance(cfg, dict):
            fail(owner, name, 'None, a dict or a list of dicts', init_cfg, kind='a dict')
        checkpoint = cfg.get('checkpoint')
        if cfg.get('type') == 'Pretrained' and not (isinstance(checkpoint, str) and checkpoint):
            raise ArgumentError(f"{owner}: init_cfg=dict(type='Pretrained') needs "
                                f"checkpoint=a file, URL or model name, got "
                                f"checkpoint={checkpoint!r}")


Check = Callable[[str, str, Any], Any]
# Argument (of the constructor or of the arch settings) -> its check(owner, name, value).
ARGUMENT_CHECKS: Dict[str, Check] = {
    'in_channels': partial(check_int, lo=1),
    'num_classes': partial(check_int, lo=1),
    'frozen_stages': partial(check_int, lo=-1, hi=NUM_STAGES, wanted=f'in -1..{NUM_STAGES}'),
    'drop_path_rate': partial(check_number, lo=0, hi=1, hi_open=True),
    'out_indices': _stage_indices,
    'fork_feat': check_bool, 'norm_eval': check_bool, 'with_cp': check_bool,
    'strict_load': check_bool, 'mlp_bias': check_bool,
    'init_cfg': _init_cfg,
    'layer_scale_init_value': partial(check_number, optional=True),
    'res_scale_init_values': _per_stage_numbers,
    'pool_size': partial(check_int, lo=1, odd=True, optional=True),
}


def check_arguments(cls: type, settings: Dict, **arguments: Any) -> Tuple[int, ...]:
    """Checks the constructor ``arguments`` and resolved ``settings`` (one
    :class:`ArgumentError` naming the argument); returns the sorted ``out_indices``."""
    owner = cls.__name__
    for name, value in {**arguments, **settings}.items():
        if name in ARGUMENT_CHECKS:
            ARGUMENT_CHECKS[name](owner, name, value)
    depths, dims = settings['depths'], settings['dims']
    if not (isinstance(depths, (list, tuple)) and isinstance(dims, (list, tuple))
            and len(depths) == NUM_STAGES and len(dims) == NUM_STAGES):
        raise ArgumentError(f'{owner}: depths and dims must have {NUM_STAGES} entries, got '
                            f'depths={depths!r}, dims={dims!r}')
    if not all(is_int(d) and d > 0 for d in list(depths) + list(dims)):
        raise ArgumentError(f'{owner}: depths and dims must be positive integers, got '
                            f'depths={list(depths)}, dims={list(dims)}')
    mixers = settings['token_mixers']
    kinds = {k for k in mixer_types(mixers) if isinstance(k, str)}
    for key, types in MIXER_OPTIONS.items():
        if settings.get(key) is not None and not kinds & set(types):
            raise ArgumentError(f'{owner}: {key} is an option of the {"/".join(types)} token '
                                f'mixers, and this model has none (token_mixers={mixers!r})')
    ratios = settings['mlp_ratios']
    ratios = list(ratios) if isinstance(ratios, (list, tuple)) else [ratios] * NUM_STAGES
    if len(ratios) == NUM_STAGES and not all(is_number(r) and r > 0 and int(r * d) > 0
                                             for r, d in zip(ratios, dims)):
        raise ArgumentError(f'{owner}: mlp_ratios must be positive numbers (one per stage or '
                            f'a single value) giving at least one hidden channel, got '
                            f'{settings["mlp_ratios"]!r}')
    return ARGUMENT_CHECKS['out_indices'](owner, 'out_indices', arguments['out_indices'])
