"""Loading weights into a MetaFormer.

:func:`load_pretrained` serves ``init_cfg=dict(type='Pretrained')``. :func:`convert_backbone_keys`
runs inside every ``load_state_dict`` reaching a MetaFormer (``load_checkpoint``, ``load_from``,
``resume``, the inferencers, torch's): it converts a foreign layout in place and refuses
missing, unexpected or misshapen tensors naming the file, where mmengine would only warn and
leave a silently random backbone. Deliberate partial loads: :func:`partial_loading` or
``strict_load=False``."""
import contextlib
import contextvars
import re
from collections import OrderedDict
from typing import Any, Dict, Iterator, List, Optional

import torch
import torch.nn as nn
from mmengine.logging import MMLogger

from .convert import detector_backbone_layout
from .embedded_config import guard_embedded_configs
from .family import check_architecture
from .io import (CheckpointError, checkpoint_source, file_being_loaded, loading_source,
                 read_checkpoint)
from .layouts import (KEYS_SHOWN, NATIVE_LAYOUTS, StateDict, convert_state_dict,
                      extract_state_dict, strip_prefix, unwrap_weights)

_PARTIAL: contextvars.ContextVar = contextvars.ContextVar('metaformer_mm_partial', default=False)


@contextlib.contextmanager
def partial_loading() -> Iterator[None]:
    """Allows loads leaving MetaFormer tensors missing or unexpected (logged as a warning);
    tensors of another shape are never copied."""
    token = _PARTIAL.set(True)
    try:
        yield
    finally:
        _PARTIAL.reset(token)


def _fits(value: torch.Tensor, target: torch.Tensor) -> bool:
    """Same shape, or Linear ``[out, in]`` <-> 1x1 conv ``[out, in, 1, 1]``."""
    if value.shape == target.shape:
        return True
    squeeze = lambda s: tuple(d for i, d in enumerate(s) if not (i >= 2 and d == 1))  # noqa: E731
    return value.numel() == target.numel() and squeeze(value.shape) == squeeze(target.shape)


def _why_shape(model: nn.Module, key: str, shape: tuple) -> str:
    """The owning module's ``shape_mismatch`` explanation of a misfit (RandFormer), or ''."""
    try:
        owner = model.get_submodule(key.rsplit('.', 1)[0]) if '.' in key else model
    except AttributeError:
        return ''
    explain = getattr(owner, 'shape_mismatch', None)
    return f' ({explain(key, shape)})' if callable(explain) else ''


# --------------------------------------------------------------------------- inside load_state_dict
def convert_backbone_keys(module: nn.Module, state_dict: Dict[str, Any], prefix: str,
                          strict: bool = True) -> Optional[str]:
    """Converts the keys of ``state_dict`` under ``prefix`` for ``module`` in place (the
    children load from it afterwards), then refuses a misfit unless partial loading is allowed.
    Returns the layout converted from (None when already ours)."""
    keys = [k for k in state_dict if k.startswith(prefix)]
    local = strip_prefix(state_dict, prefix)
    # None for a layout we do not know: every key is then reported as unexpected below.
    layout = detector_backbone_layout(local, prefix='')
    source = checkpoint_source(list(local.values())[:8]) or 'the state dict'
    converted_from = None
    if layout is not None and layout not in NATIVE_LAYOUTS:
        _, local = convert_state_dict(local, layout)
        for key in keys:
            del state_dict[key]
        state_dict.update((prefix + k, v) for k, v in local.items())
        converted_from = layout
        MMLogger.get_current_instance().info(
            f'{source}: converted the {len(local)} {type(module).__name__} tensors under '
            f'{prefix!r} from the {layout} layout to this project\'s keys')

    own = module.state_dict()
    mismatched = []
    for key, value in local.items():
        if key in own and torch.is_tensor(value) and value.shape != own[key].shape:
            if _fits(value, own[key]):
                state_dict[prefix + key] = value.reshape(own[key].shape)
            else:
                mismatched.append(f'{prefix}{key}: {tuple(value.shape)} in the checkpoint, '
                                  f'{tuple(own[key].shape)} in the model'
                                  + _why_shape(module, key, tuple(value.shape)))
    # BatchNorm's step counter is optional in old files (torch fills it in).
    missing = [prefix + k for k in own if k not in local and not k.endswith('num_batches_tracked')]
    unexpected = [prefix + k for k in local if k not in own]
    enforce = strict and not _PARTIAL.get() and getattr(module, 'strict_load', True)
    if not (missing or unexpected or mismatched):
        if enforce:  # same layout: the name the file gives decides (e.g. IdentityFormer)
            read = file_being_loaded()
            check_architecture(module, checkpoint_source(list(local.values())[:8]),
                               read and read.config_text)
        return converted_from
    report = _misfit_report(source, module, prefix, len(own), layout, missing, unexpected,
                            mismatched, has_keys=bool(local))
    if enforce:
        raise CheckpointError(
            report + ' Is it a checkpoint of another config? To load part of it on purpose, '
            'load inside `with metaformer_mm.checkpoint.partial_loading():` or set the '
            'backbone\'s strict_load=False.')
    MMLogger.get_current_instance().warning(f'partial load (allowed): {report}')
    return converted_from


def _misfit_report(source: str, module: nn.Module, prefix: str, total: int,
                   layout: Optional[str], missing: List[str], unexpected: List[str],
                   mismatched: List[str], has_keys: bool) -> str:
    where = f'{type(module).__name__} at {prefix!r}' if prefix else type(module).__name__
    if not has_keys:
        read = file_being_loaded()
        first = read.first_keys if read else []
        listed = f' (its first keys: {first})' if first else ''
        return (f'{source} does not fit the {where}: it has no key under {prefix!r}{listed}, '
                f'so all {len(missing)} backbone tensors would stay uninitialised.')
    found = f' (layout: {layout})' if layout else ' (keys of no known layout)'
    parts = []
    if missing:
        parts.append(f'{len(missing)} of its {total} tensors missing (first: '
                     f'{missing[:KEYS_SHOWN]})')
    if unexpected:
        parts.append(f'{len(unexpected)} unexpected keys (first: {unexpected[:KEYS_SHOWN]})')
    if mismatched:
        parts.append(f'{len(mismatched)} shapes that do not fit (first: {mismatched[:KEYS_SHOWN]})')
    return f'{source} does not fit the {where}{found}: ' + '; '.join(parts) + '.'


# --------------------------------------------------------------------------- Pretrained
def _depths(keys) -> List[int]:
    blocks = [set() for _ in range(4)]
    for key in keys:
        m = re.match(r'stages\.(\d)\.blocks\.(\d+)\.', key)
        if m and int(m.group(1)) < 4:
            blocks[int(m.group(1))].add(int(m.group(2)))
    return [len(b) for b in blocks]


def _check_depths(converted: StateDict, own: StateDict, path: str) -> None:
    """Refuses a checkpoint whose stages hold another number of blocks than the model's."""
    theirs, ours = _depths(converted), _depths(own)
    # A stage absent from the file is a partial file (judged by the load fraction), not a mismatch.
    if any(t and t != o for t, o in zip(theirs, ours)):
        raise CheckpointError(
            f'architecture mismatch loading {path}: its stages have {theirs} blocks, the model '
            f'has {ours} (a checkpoint of another arch, e.g. S24 weights for an S12 backbone?)')


def prepare_checkpoint(obj: Any, path: str) -> Dict[str, Any]:
    """The checkpoint ``obj`` read from ``path`` as mmengine's loads get it: a finite
    state dict under ``state_dict``, a ``meta`` (mmseg's ``init_model`` reads it), embedded
    configs checked when read."""
    extract_state_dict(obj, path)
    key, weights = unwrap_weights(obj)
    if key != 'state_dict':
        rest = {k: v for k, v in obj.items() if k != key} if key else {}
        obj = dict(rest, state_dict=weights)
    obj.setdefault('meta', {})
    guard_embedded_configs(obj, path)
    return obj


def _output_norms_absent(converted: StateDict, own: StateDict) -> List[str]:
    """The model's output-norm tensors of stages the file has no output norm for (a
    classification file has none): they keep their initial values, as in the original models."""
    stage = lambda k: k.split('.')[1]  # noqa: E731  ('out_norms.N.weight')
    present = {stage(k) for k in converted if k.startswith('out_norms.')}
    return [k for k in own if k.startswith('out_norms.') and stage(k) not in present]


def load_pretrained(model: nn.Module, path: str, prefix: Optional[str] = None,
                    map_location: Any = 'cpu',
                    logger: Optional[MMLogger] = None) -> Dict[str, Any]:
    """Loads backbone weights in any supported layout into ``model``; logs and returns what
    loaded. With ``fork_feat`` a classifier head and output norms the model lacks are dropped.
    ``prefix='auto'`` (the tools) takes a whole model's ``backbone.`` keys."""
    from ..zoo import resolve_weights
    logger = logger or MMLogger.get_current_instance()
    try:
        path = resolve_weights(path)
    except ValueError as err:  # an unknown name: the loader's own error type, same words
        raise CheckpointError(str(err)) from None
    raw = read_checkpoint(path, map_location)
    state = extract_state_dict(raw, path, None if prefix == 'auto' else prefix)
    if prefix == 'auto' and detector_backbone_layout(state, prefix='') is None \
            and any(k.startswith('backbone.') for k in state):
        state = extract_state_dict(state, path, 'backbone.')  # a whole model's file
    try:
        layout, converted = convert_state_dict(state)
    except CheckpointError as err:  # e.g. keys that match no known layout: name the file
        raise CheckpointError(f'cannot load {path}: {err}') from None
    fork_feat = getattr(model, 'fork_feat', True)
    own = model.state_dict()
    # A dense model built for fewer outputs (out_indices=(2, 3)) has no norm for the others.
    outputs = {k.split('.')[1] for k in own if k.startswith('out_norms.')}
    dropped = [k for k in converted if k.startswith('head.' if fork_feat else 'out_norms.')
               or (fork_feat and k.startswith('out_norms.') and k.split('.')[1] not in outputs)]
    _check_depths(converted, own, path)
    loaded = OrderedDict((k, v) for k, v in converted.items() if k not in dropped)
    kept = _output_norms_absent(loaded, own) if fork_feat else []
    with loading_source(path):
        # Not strict here because the in-load hook (convert_backbone_keys) is the one check: it
        # refuses any misfit unless partial loading was asked for; what it lets through is
        # logged and returned below.
        result = model.load_state_dict(OrderedDict(loaded, **{k: own[k] for k in kept}),
                                       strict=False)
    missing = kept + [k for k in result.missing_keys if k not in kept]
    unexpected = list(result.unexpected_keys)
    report = dict(path=path, layout=layout, loaded=len(loaded) - len(unexpected),
                  total=len(own), missing=missing, unexpected=unexpected, dropped=dropped)
    logger.info(
        f'Loaded {report["loaded"]}/{len(own)} tensors from {path} (format: {layout}); '
        f'missing (kept initial values): {missing or "none"}; unexpected: {unexpected or "none"}; '
        f'dropped classifier: {len(dropped)} tensors')
    return report
