"""Whole detector / segmentor checkpoints (mmdet 2.x, mmseg 0.x) -> this project's keys, and
:func:`save_converted`, the one writer of converted files.

The sail-sg releases hold the official_v1 backbone under ``backbone.`` (RetinaNet's lack
``norm0``). Only backbone keys change: the neck and head names (FPN, RetinaHead, RPNHead,
Shared2FCBBoxHead, FCNMaskHead, FPNHead) were compared between mmdet 2.x / mmseg 0.x and
mmdet 3.3 / mmseg 1.2 and are unchanged."""
from collections import OrderedDict
from typing import Any, Dict, Optional, Tuple

from .io import CheckpointError, atomic_save, read_checkpoint
from .layouts import (NATIVE_LAYOUTS, StateDict, convert_state_dict, detect_layout,
                      extract_state_dict, strip_prefix)

KINDS = ('mmdet2', 'mmseg0')  # mmdet 2.x -> 3.x, mmseg 0.x -> 1.x
# A whole model whose backbone is already in this project's layout was saved by mmdet 3.x /
# mmseg 1.x with its configs: labelling it "mmdet2" would be wrong.
_CURRENT_KINDS = {'mmdet2': 'mmdet3', 'mmseg0': 'mmseg1'}


def detector_backbone_layout(state: StateDict, prefix: str = 'backbone.') -> Optional[str]:
    """Layout of the ``prefix`` keys of a (whole-model) state dict; None if none or unknown."""
    backbone = strip_prefix(state, prefix)
    if not backbone:
        return None
    try:
        return detect_layout(backbone)
    except CheckpointError:
        return None  # not a MetaFormer backbone (e.g. a ResNet): nothing of ours to convert


def convert_detector_checkpoint(state: StateDict, kind: str = 'mmdet2',
                                prefix: str = 'backbone.') -> StateDict:
    """Maps a whole detector (``'mmdet2'``) or segmentor (``'mmseg0'``) state dict to
    ours: the ``prefix`` keys through :func:`convert_state_dict` first, the others as they are."""
    if kind not in KINDS:
        raise ValueError(f'unknown kind {kind!r}; allowed: {list(KINDS)}')
    backbone = strip_prefix(state, prefix)
    if not backbone:
        raise CheckpointError(f'no key starts with {prefix!r} (first keys: {list(state)[:4]}); '
                              f'is this a whole detector/segmentor checkpoint?')
    _, converted_backbone = convert_state_dict(backbone)
    out = OrderedDict((prefix + k, v) for k, v in converted_backbone.items())
    out.update((k, v) for k, v in state.items() if not k.startswith(prefix))
    return out


def detector_dataset_meta(obj: Any) -> Dict[str, Any]:
    """``dataset_meta`` (classes, palette) of a loaded checkpoint, from 3.x or 2.x metadata."""
    meta = obj.get('meta') if isinstance(obj, dict) else None
    if not isinstance(meta, dict):
        return {}
    if isinstance(meta.get('dataset_meta'), dict):
        return dict(meta['dataset_meta'])
    # mmdet 2.x / mmseg 0.x stored upper-case CLASSES and PALETTE at the top of ``meta``.
    return {k.lower(): meta[k] for k in ('CLASSES', 'PALETTE') if meta.get(k) is not None}


# ``source`` of :func:`save_converted` -> the backbone layouts it stands for.
BACKBONE_SOURCES = {'official': ('official_v1', 'official_v2'), 'timm': ('timm',),
                    'mmpretrain': ('mmpretrain',), 'spach': ('spach',)}


def save_converted(src: str, dst: str, source: str = 'auto') -> Tuple[str, int]:
    """Writes checkpoint ``src`` converted to this project's keys to ``dst`` (all or nothing).

    ``source``: ``'auto'``, a key of :data:`BACKBONE_SOURCES` or of :data:`KINDS`. Writes
    ``{'state_dict', 'meta': {'converted_from', 'dataset_meta'}}`` without an embedded config;
    Linear weights stay ``[out, in]`` (loads reshape them). Returns ``converted_from`` and the
    number of tensors written."""
    raw = read_checkpoint(src)
    state = extract_state_dict(raw, src)
    if source == 'auto':
        try:
            layout = detect_layout(state)
        except CheckpointError:
            if not any(k.startswith('backbone.') for k in state):
                raise
            # A whole model: the segmentor files have a decode head, the detector files not.
            source = 'mmseg0' if any(k.startswith('decode_head.') for k in state) else 'mmdet2'
        else:
            source = next(s for s, layouts in BACKBONE_SOURCES.items() if layout in layouts)
    meta: Dict[str, Any] = {}
    if source in KINDS:
        layout = detector_backbone_layout(state)
        converted = convert_detector_checkpoint(state, source)
        kind = _CURRENT_KINDS[source] if layout in NATIVE_LAYOUTS else source
        meta['converted_from'] = f'{kind}/{layout}'
        if detector_dataset_meta(raw):
            meta['dataset_meta'] = detector_dataset_meta(raw)
    elif source in BACKBONE_SOURCES:
        layout, converted = convert_state_dict(state)
        if layout not in BACKBONE_SOURCES[source]:
            raise CheckpointError(f'{src} is in the {layout} layout, not --from {source}')
        meta['converted_from'] = layout
    else:
        raise ValueError(f'unknown source {source!r}; allowed: '
                         f'{["auto", *BACKBONE_SOURCES, *KINDS]}')
    atomic_save({'state_dict': converted, 'meta': meta}, dst)
    return meta['converted_from'], len(converted)
