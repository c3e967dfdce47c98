"""Backbone state-dict layouts: recognising them and mapping their keys to this project's.

==============  ===========================================================================
layout          recognised by
==============  ===========================================================================
official_v1     sail-sg/poolformer: ``patch_embed.proj``, ``network.{0..6}``, ``norm``, ``head``;
                also its mmdet 2.x / mmseg 0.x backbones (``norm{0,2,4,6}`` output norms)
                and mmseg 0.x's PoolFormer FPN files
mmpretrain      ``backbone.patch_embed.proj`` ... ``backbone.norm6`` beside ``head.fc``
official_v2     sail-sg/metaformer: ``downsample_layers.N``, ``stages.N.M``, ``norm``, ``head``
spach           microsoft/SPACH sMLPNet: ``to_patch_embedding``, ``token_mix``, ``channel_mix``
timm            ``stem.conv``, ``stages.N.downsample``, ``stages.N.blocks.M``, ``head.norm/fc``
metaformer_mm   our own files (the timm naming plus ``out_norms.N``)
==============  ===========================================================================

A mapping is a rule table of ``(pattern, replacement)``: the first pattern matching the whole
key wins; the replacement is an ``re`` template or a function of the match. Keys no rule
matches are kept (and reported as unexpected by the loader)."""
import re
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch

from .io import CheckpointError, unwrap_weights

StateDict = Dict[str, torch.Tensor]
Replacement = Union[str, Callable[[re.Match], Optional[str]]]
Rules = Sequence[Tuple[str, Replacement]]

# Layouts whose keys already are ours: nothing to convert.
NATIVE_LAYOUTS = ('metaformer_mm', 'timm')
KEYS_SHOWN = 5  # keys listed in an error (per kind)


def _kind(value: Any) -> str:
    if value is None:
        return 'None'
    return f'a {type(value).__name__}'


def state_dict_problem(obj: Any) -> Optional[str]:
    """What keeps the loaded ``obj`` from being a state dict (a non-empty dict of tensors
    by name, possibly under ``state_dict``/``model``/``module``), or None."""
    key, weights = unwrap_weights(obj)
    where = f'its {key!r} entry' if key else 'it'
    if not isinstance(weights, dict):
        return f'{where} is {_kind(weights)}, not a dict of named tensors'
    if not weights:
        return f'{where} is an empty dict: it holds no tensors'
    bad_key = next((k for k in weights if not isinstance(k, str)), None)
    if bad_key is not None:
        return (f'{where} has a key that is not a tensor name: {bad_key!r} '
                f'({type(bad_key).__name__})')
    bad = next((k for k, v in weights.items()
                if not torch.is_tensor(v) and not k.endswith('_extra_state')), None)
    if bad is not None:
        return f'{where} holds {bad!r}: {_kind(weights[bad])}, not a tensor'
    return None


def strip_prefix(state: Dict[str, Any], prefix: str) -> StateDict:
    """The entries of ``state`` under ``prefix``, without it."""
    return OrderedDict((k[len(prefix):], v) for k, v in state.items() if k.startswith(prefix))


def check_finite(weights: Dict[str, Any], path: str) -> None:
    """Refuses weights holding nan or inf (SafeCheckpointHook never writes such a file)."""
    from ..engine.guard import non_finite_tensors
    bad = non_finite_tensors(weights)
    if bad:
        raise CheckpointError(f'refused to load {path}: {len(bad)} of its tensors hold nan or '
                              f'inf values (first: {bad[:KEYS_SHOWN]}); a model loaded from it '
                              f'would compute nan')


def extract_state_dict(obj: Any, path: str, prefix: Optional[str] = None) -> StateDict:
    """The finite tensor dict of a loaded checkpoint, wrappers, ``module.`` and ``prefix``
    stripped; else a :class:`CheckpointError` naming ``path``."""
    problem = state_dict_problem(obj)
    if problem:
        raise CheckpointError(f'cannot load {path}: {problem} (a checkpoint is a dict of '
                              f'tensors by name, or holds one under \'state_dict\')')
    obj = unwrap_weights(obj)[1]
    check_finite(obj, path)
    state = OrderedDict((k[len('module.'):] if k.startswith('module.') else k, v)
                        for k, v in obj.items())
    if prefix:
        sub = strip_prefix(state, prefix)
        if not sub:
            raise CheckpointError(f'no key of {path} starts with prefix {prefix!r}; '
                                  f'first keys: {list(state)[:KEYS_SHOWN]}')
        state = sub
    return state


def rename_with(rules: Rules) -> Callable[[str], Optional[str]]:
    """The renaming function of a rule table: the new key, or None if no rule matches."""
    compiled = [(re.compile(pattern), repl) for pattern, repl in rules]

    def rename(key: str) -> Optional[str]:
        for pattern, repl in compiled:
            match = pattern.fullmatch(key)
            if match:
                new = repl(match) if callable(repl) else match.expand(repl)
                if new is not None:
                    return new
        return None
    return rename


def apply_rules(state: StateDict, rules: Rules) -> StateDict:
    rename = rename_with(rules)
    return OrderedDict((rename(k) or k, v) for k, v in state.items())


# --------------------------------------------------------------------------- official_v1
# network.{0,2,4,6} are the stages, network.{1,3,5} the downsampling convs between them.
_V1_RULES: Rules = [
    (r'patch_embed\.proj\.(.+)', r'stem.conv.\1'),
    (r'network\.(\d+)\.proj\.(.+)',
     lambda m: f'stages.{(int(m[1]) + 1) // 2}.downsample.conv.{m[2]}'),
    (r'network\.(\d+)\.(\d+)\.layer_scale_([12])',
     lambda m: f'stages.{int(m[1]) // 2}.blocks.{m[2]}.layer_scale{m[3]}.scale'),
    (r'network\.(\d+)\.(\d+)\.(.+)', lambda m: f'stages.{int(m[1]) // 2}.blocks.{m[2]}.{m[3]}'),
    (r'norm(\d)\.(.+)', lambda m: f'out_norms.{int(m[1]) // 2}.{m[2]}'),
    (r'norm\.(.+)', r'head.norm.\1'),
    (r'head\.fc\.(.+)', r'head.fc.\1'),
    (r'head\.(.+)', r'head.fc.\1'),
]
# In a classification file (mmpretrain) norm6 is the classifier's final norm.
_V1_CLASSIFIER_RULES: Rules = [(r'norm6\.(.+)', r'head.norm.\1'), *_V1_RULES]


# --------------------------------------------------------------------------- official_v2
_V2_RULES: Rules = [
    (r'downsample_layers\.0\.conv\.(.+)', r'stem.conv.\1'),
    (r'downsample_layers\.0\.post_norm\.(.+)', r'stem.norm.\1'),
    (r'downsample_layers\.(\d)\.pre_norm\.(.+)', r'stages.\1.downsample.norm.\2'),
    (r'downsample_layers\.(\d)\.conv\.(.+)', r'stages.\1.downsample.conv.\2'),
    (r'stages\.(\d)\.(\d+)\.(.+)', r'stages.\1.blocks.\2.\3'),
    (r'norm\.(.+)', r'head.norm.\1'),
    (r'head\.(fc1|norm|fc2)\.(.+)', r'head.fc.\1.\2'),
    (r'head\.(weight|bias)', r'head.fc.\1'),
]


# --------------------------------------------------------------------------- spach
_SPACH_BLOCK_RULES: Rules = [
    (r'token_mix\.0\.conv_merge\.BN\.(.+)', r'token_mixer.dw_norm.\1'),
    (r'token_mix\.0\.conv_merge\.Conv\.(.+)', r'token_mixer.dwconv.\1'),
    (r'token_mix\.1\.BN\.(.+)', r'token_mixer.norm.\1'),
    # proj_h mixes along W and proh_w along H in the original (see SMLP's docstring).
    (r'token_mix\.1\.proj_h\.(weight|bias)', r'token_mixer.mix_w_\1'),
    (r'token_mix\.1\.proh_w\.(weight|bias)', r'token_mixer.mix_h_\1'),
    (r'token_mix\.1\.fuse\.(.+)', r'token_mixer.fuse.\1'),
    (r'channel_mix\.1\.(.+)', r'norm2.\1'),
    (r'channel_mix\.2\.net\.0\.(.+)', r'mlp.fc1.\1'),
    (r'channel_mix\.2\.net\.3\.(.+)', r'mlp.fc2.\1'),
]
_spach_block = rename_with(_SPACH_BLOCK_RULES)


def _spach_depths(state: StateDict) -> List[int]:
    """Blocks per stage of a SPACH sMLPNet file, from the width of each block's dwconv."""
    widths = []
    g = 0
    while f'token_mix.{g}.0.conv_merge.Conv.weight' in state:
        widths.append(state[f'token_mix.{g}.0.conv_merge.Conv.weight'].shape[0])
        g += 1
    return [widths.count(w) for w in sorted(set(widths))]


def _convert_spach(state: StateDict) -> StateDict:
    """microsoft/SPACH sMLPNet -> our keys (blocks are numbered globally there)."""
    block_of = [(s, j) for s, d in enumerate(_spach_depths(state)) for j in range(d)]

    def block(m: re.Match) -> Optional[str]:
        if int(m[2]) >= len(block_of):
            return None
        inner = _spach_block(f'{m[1]}.{m[3]}')
        stage, index = block_of[int(m[2])]
        return f'stages.{stage}.blocks.{index}.{inner}' if inner else None

    return apply_rules(state, [
        (r'(token_mix|channel_mix)\.(\d+)\.(.+)', block),
        (r'to_patch_embedding\.0\.0\.(.+)', r'stem.conv.\1'),
        (r'to_patch_embedding\.(\d)\.0\.(.+)', r'stages.\1.downsample.conv.\2'),
        (r'batch_norm\.(.+)', r'head.norm.\1'),
        (r'mlp_head\.0\.(.+)', r'head.fc.\1'),
    ])


# --------------------------------------------------------------------------- detection
# Tried in order; the first layout whose patterns all match some key (re.match) wins. The
# last pattern of each is its blocks' (the body of the network).
_SIGNATURES: List[Tuple[str, Tuple[str, ...]]] = [
    ('mmpretrain', (r'backbone\.patch_embed\.proj\.', r'head\.fc\.')),
    ('official_v1', (r'patch_embed\.proj\.', r'network\.\d+\.')),
    ('official_v2', (r'downsample_layers\.0\.conv\.', r'stages\.\d\.\d+\.')),
    ('spach', (r'to_patch_embedding\.0\.', r'token_mix\.\d+\.')),
    ('metaformer_mm', (r'stem\.conv\.', r'out_norms\.', r'stages\.\d\.blocks\.')),
    ('timm', (r'stem\.conv\.', r'stages\.\d\.blocks\.')),
]


def detect_layout(state: StateDict) -> str:
    """Names the layout of a state dict or raises. A file with a layout's blocks but not all
    its other parts is taken as that layout, so that the loader can say what is missing."""
    keys = list(state)
    matched = [(layout, [any(re.match(p, k) for k in keys) for p in patterns])
               for layout, patterns in _SIGNATURES]
    for layout, hits in matched:
        if all(hits):
            return layout
    partial = [(sum(hits), -i, layout) for i, (layout, hits) in enumerate(matched)
               if hits[-1] and layout != 'mmpretrain']
    if partial:
        return max(partial)[2]
    raise CheckpointError(
        'unrecognised checkpoint layout (first keys: '
        f'{keys[:4]}); supported: official PoolFormer/MetaFormer/SPACH files, mmpretrain, timm '
        'and metaformer_mm checkpoints (give prefix="backbone." for detector/segmentor files)')


def convert_state_dict(state: StateDict, layout: Optional[str] = None) -> Tuple[str, StateDict]:
    """Maps a backbone state dict in any supported layout to this project's keys."""
    layout = layout or detect_layout(state)
    if layout == 'mmpretrain':  # official_v1 keys under 'backbone.', beside 'head.'
        heads = [(k, v) for k, v in state.items() if k.startswith('head.')]
        state = strip_prefix(state, 'backbone.')
        state.update(heads)
    if layout in ('official_v1', 'mmpretrain'):
        classifier = any(k.startswith('head.') for k in state)
        return layout, apply_rules(state, _V1_CLASSIFIER_RULES if classifier else _V1_RULES)
    if layout == 'official_v2':
        return layout, apply_rules(state, _V2_RULES)
    if layout == 'spach':
        return layout, _convert_spach(state)
    if layout in NATIVE_LAYOUTS:
        return layout, OrderedDict(state)
    allowed = sorted(['official_v1', 'official_v2', 'spach', 'mmpretrain', *NATIVE_LAYOUTS])
    raise ValueError(f'unknown layout {layout!r}; allowed: {allowed}')
