"""Checkpoints: safe loading, layout detection and key mapping, in one place.

Every foreign layout is mapped to this project's keys (timm's ``metaformer.py`` naming):

==============  ===========================================================================
layout          recognised by
==============  ===========================================================================
official_v1     sail-sg/poolformer: ``patch_embed.proj``, ``network.{0..6}``, ``norm``, ``head``;
                also its mmdet 2.x / mmseg 0.x backbones (``norm{0,2,4,6}`` output norms)
mmpretrain      ``backbone.patch_embed.proj`` ... ``backbone.norm6`` beside ``head.fc``
official_v2     sail-sg/metaformer: ``downsample_layers.N``, ``stages.N.M``, ``norm``, ``head``
spach           microsoft/SPACH sMLPNet: ``to_patch_embedding``, ``token_mix``, ``channel_mix``
timm            ``stem.conv``, ``stages.N.downsample``, ``stages.N.blocks.M``, ``head.norm/fc``
metaformer_mm   our own files (the timm naming plus ``out_norms.N``)
==============  ===========================================================================

Linear weights ``[out, in]`` load into 1x1 convs ``[out, in, 1, 1]`` and back.
External files are always read with ``torch.load(weights_only=True)``.
"""
import argparse
import os
import os.path as osp
import pickle
import re
import zipfile
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from mmengine.dist import barrier, get_dist_info
from mmengine.logging import MMLogger

StateDict = Dict[str, torch.Tensor]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


# --------------------------------------------------------------------------- reading files
def _is_url(path: str) -> bool:
    return path.startswith(('http://', 'https://'))


def read_checkpoint(path: str, map_location: Any = 'cpu') -> Any:
    """Reads a checkpoint file or URL with ``weights_only=True``.

    URLs are downloaded once into torch's hub cache (the one mmengine uses), by rank 0
    first under ``torch.distributed``. Errors name the file: missing, empty, truncated or
    not a checkpoint, or holding pickled objects other than tensors and containers
    (which are never executed).
    """
    if _is_url(path):
        from mmengine.utils.dl_utils import load_url
        rank, world_size = get_dist_info()
        if rank == 0:
            obj = _guarded(path, lambda: load_url(path, map_location=map_location,
                                                  weights_only=True))
        if world_size > 1:
            barrier()
            if rank > 0:
                obj = _guarded(path, lambda: load_url(path, map_location=map_location,
                                                      weights_only=True))
        return obj
    if not osp.isfile(path):
        raise FileNotFoundError(f'checkpoint file not found: {path}')
    if osp.getsize(path) == 0:
        raise CheckpointError(f'checkpoint file is empty: {path}')
    return _guarded(path, lambda: torch.load(path, map_location=map_location, weights_only=True))


# What a file that fails to load is, from its first bytes: the error then says
# "a JPEG image" or "truncated" rather than repeating the unpickler's complaint.
_ZIP_MAGIC = b'PK\x03\x04'  # torch.save's default (zip) format
_LEGACY_MAGIC = b'\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19'  # before 1.6
_SIGNATURES = ((b'\xff\xd8\xff', 'a JPEG image'), (b'\x89PNG', 'a PNG image'),
               (b'GIF8', 'a GIF image'), (b'\x1f\x8b', 'a gzip archive'),
               (b'\x80', 'a Python pickle without PyTorch\'s header'))


def _diagnose(path: str) -> Optional[str]:
    """Why the local file ``path`` is not a loadable checkpoint, or None if unknown."""
    try:
        with open(path, 'rb') as f:
            head = f.read(512)
    except OSError:
        return None
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            return ('it is truncated: its zip archive has no end record (an interrupted '
                    'download or write?)')
        return 'its zip archive is corrupt or holds no PyTorch checkpoint'
    if head.startswith(_LEGACY_MAGIC):
        return 'it is truncated or corrupt (a PyTorch checkpoint in the pre-1.6 format)'
    for magic, kind in _SIGNATURES:
        if head.startswith(magic):
            return f'it is not a PyTorch checkpoint but {kind}'
    if head.lstrip().startswith(b'<'):
        return 'it is not a PyTorch checkpoint but an HTML/XML page (a failed download?)'
    try:
        head.decode('utf-8')
        return 'it is not a PyTorch checkpoint but a text file'
    except UnicodeDecodeError:
        return 'it is not a PyTorch checkpoint'


# Training scripts in the DeiT family (SPACH, the sail-sg repos) save their argparse
# options beside the weights; a Namespace holds only plain values and runs no code.
_EXTERNAL_SAFE_TYPES = [argparse.Namespace]


def _guarded(path: str, load: Callable[[], Any]) -> Any:
    try:
        safe_globals = getattr(torch.serialization, 'safe_globals', None)
        if safe_globals is None:
            return load()
        with safe_globals(_EXTERNAL_SAFE_TYPES):
            return load()
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, KeyError,
            AttributeError, IndexError, TypeError) as err:
        # The legacy loader reads a non-checkpoint as a pickle and fails in many ways
        # (a text file gives KeyError); all of them are "not a checkpoint".
        message = str(err)
        found = re.search(r'(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)', message)
        if found:
            raise CheckpointError(
                f'refused to load {path}: it holds a pickled object ({found.group(1)}) that is '
                f'not a tensor or container, and unpickling it could run code (torch\'s '
                f'weights-only unpickler: unsupported GLOBAL {found.group(1)}). Only plain '
                f'weights are loaded.') from None
        if isinstance(err, FileNotFoundError):
            raise
        if _is_url(path) and isinstance(err, OSError):  # HTTP and network errors
            raise CheckpointError(f'cannot download {path}: {message}') from None
        reason = _diagnose(path) if osp.isfile(path) else None
        if reason is None:
            detail = message.strip().split('\n')[0] or type(err).__name__
            reason = f'it is truncated or not a PyTorch checkpoint ({detail})'
        raise CheckpointError(f'cannot load {path}: {reason}') from None


def _reduce_history_buffer(buffer: Any) -> tuple:
    """Pickles a ``HistoryBuffer`` as its data only.

    mmengine's ``HistoryBuffer.__getstate__`` also stores the class-wide statistics
    methods (``HistoryBuffer.min`` ...), which pickle as ``getattr`` calls; allowing
    ``getattr`` would open the weights-only unpickler far wider than needed.
    ``__setstate__`` registers the default methods again on load, so nothing is lost.
    """
    state = {k: v for k, v in vars(buffer).items() if k != 'statistics_methods'}
    return type(buffer), (), state


def allow_mmengine_checkpoint_types() -> None:
    """Lets ``weights_only=True`` load mmengine's own training checkpoints.

    With torch >= 2.6, ``torch.load`` defaults to ``weights_only=True`` and refuses the
    checkpoints mmengine writes (``resume``, ``load_from``): their ``message_hub`` holds
    ``HistoryBuffer`` objects with numpy arrays. This allow-lists exactly those types
    (``HistoryBuffer``, numpy arrays, dtypes and scalars) and registers a data-only pickle
    form for ``HistoryBuffer`` (see ``_reduce_history_buffer``). The weights-only
    unpickler stays on for everything else; nothing that can run code is allowed.
    """
    import copyreg

    import numpy as np
    from mmengine.logging.history_buffer import HistoryBuffer
    copyreg.pickle(HistoryBuffer, _reduce_history_buffer)
    add = getattr(torch.serialization, 'add_safe_globals', None)
    if add is None:  # torch < 2.4 has no weights-only default to satisfy
        return
    try:
        from numpy._core.multiarray import _reconstruct, scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct, scalar
    dtype_classes = {type(np.dtype(t)) for t in np.typecodes['All'] if t not in 'OV'}
    add([HistoryBuffer, _reconstruct, scalar, np.ndarray, np.dtype, *dtype_classes])


# --------------------------------------------------------------------------- state dicts
def extract_state_dict(obj: Any, path: str, prefix: Optional[str] = None) -> StateDict:
    """Finds the tensor dict inside a loaded checkpoint and strips wrappers and ``prefix``."""
    if isinstance(obj, dict):
        for key in ('state_dict', 'model', 'module'):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(
            isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise CheckpointError(f'{path} holds no state dict (a dict of named tensors)')
    state = OrderedDict((k[len('module.'):] if k.startswith('module.') else k, v)
                        for k, v in obj.items())
    if prefix:
        sub = OrderedDict((k[len(prefix):], v) for k, v in state.items() if k.startswith(prefix))
        if not sub:
            raise CheckpointError(f'no key of {path} starts with prefix {prefix!r}; '
                                  f'first keys: {list(state)[:5]}')
        state = sub
    return state


def _renamer(rules: List[Tuple[str, str]]) -> Callable[[str], Optional[str]]:
    compiled = [(re.compile(pattern), repl) for pattern, repl in rules]

    def rename(key: str) -> Optional[str]:
        for pattern, repl in compiled:
            if pattern.fullmatch(key):
                return pattern.sub(repl, key)
        return None
    return rename


def _stage(match_group: str, offset: int = 0, div: int = 1) -> str:
    return str((int(match_group) + offset) // div)


def _convert_official_v1(state: StateDict, classifier: bool) -> StateDict:
    """sail-sg/poolformer (and its mmdet/mmseg/mmpretrain forms) -> our keys."""
    out = OrderedDict()
    for key, value in state.items():
        m = re.fullmatch(r'network\.(\d+)\.(\d+)\.(.+)', key)
        if key.startswith('patch_embed.proj.'):
            new = 'stem.conv.' + key[len('patch_embed.proj.'):]
        elif m:
            rest = {'layer_scale_1': 'layer_scale1.scale',
                    'layer_scale_2': 'layer_scale2.scale'}.get(m.group(3), m.group(3))
            new = f'stages.{int(m.group(1)) // 2}.blocks.{m.group(2)}.{rest}'
        elif re.fullmatch(r'network\.(\d+)\.proj\.(.+)', key):
            m = re.fullmatch(r'network\.(\d+)\.proj\.(.+)', key)
            new = f'stages.{(int(m.group(1)) + 1) // 2}.downsample.conv.{m.group(2)}'
        elif re.fullmatch(r'norm(\d)\.(.+)', key):
            m = re.fullmatch(r'norm(\d)\.(.+)', key)
            stage = int(m.group(1)) // 2
            # In a classification file (mmpretrain) norm6 is the classifier's final norm.
            new = (f'head.norm.{m.group(2)}' if classifier and stage == 3
                   else f'out_norms.{stage}.{m.group(2)}')
        elif key.startswith('norm.'):
            new = 'head.' + key
        elif key.startswith('head.fc.'):
            new = key
        elif key.startswith('head.'):
            new = 'head.fc.' + key[len('head.'):]
        else:
            new = key  # reported as unexpected
        out[new] = value
    return out


_V2_RULES = _renamer([
    (r'downsample_layers\.0\.conv\.(.+)', r'stem.conv.\1'),
    (r'downsample_layers\.0\.post_norm\.(.+)', r'stem.norm.\1'),
    (r'downsample_layers\.(\d)\.pre_norm\.(.+)', r'stages.\1.downsample.norm.\2'),
    (r'downsample_layers\.(\d)\.conv\.(.+)', r'stages.\1.downsample.conv.\2'),
    (r'stages\.(\d)\.(\d+)\.(.+)', r'stages.\1.blocks.\2.\3'),
    (r'norm\.(.+)', r'head.norm.\1'),
    (r'head\.(fc1|norm|fc2)\.(.+)', r'head.fc.\1.\2'),
    (r'head\.(weight|bias)', r'head.fc.\1'),
])


def _convert_official_v2(state: StateDict, classifier: bool) -> StateDict:
    """sail-sg/metaformer (PoolFormerV2, ConvFormer, CAFormer, ...) -> our keys."""
    return OrderedDict((_V2_RULES(k) or k, v) for k, v in state.items())


def _spach_depths(state: StateDict) -> List[int]:
    """Blocks per stage of a SPACH sMLPNet file, from the width of each block's dwconv."""
    widths = []
    g = 0
    while f'token_mix.{g}.0.conv_merge.Conv.weight' in state:
        widths.append(state[f'token_mix.{g}.0.conv_merge.Conv.weight'].shape[0])
        g += 1
    return [widths.count(w) for w in sorted(set(widths))]


_SPACH_BLOCK_RULES = _renamer([
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
])


def _convert_spach(state: StateDict, classifier: bool) -> StateDict:
    """microsoft/SPACH sMLPNet -> our keys (blocks are numbered globally there)."""
    depths = _spach_depths(state)
    block_of = [(s, j) for s, d in enumerate(depths) for j in range(d)]
    out = OrderedDict()
    for key, value in state.items():
        m = re.fullmatch(r'(token_mix|channel_mix)\.(\d+)\.(.+)', key)
        new = None
        if m and int(m.group(2)) < len(block_of):
            s, j = block_of[int(m.group(2))]
            inner = _SPACH_BLOCK_RULES(f'{m.group(1)}.{m.group(3)}')
            new = f'stages.{s}.blocks.{j}.{inner}' if inner else None
        elif re.fullmatch(r'to_patch_embedding\.(\d)\.0\.(.+)', key):
            m = re.fullmatch(r'to_patch_embedding\.(\d)\.0\.(.+)', key)
            new = (f'stem.conv.{m.group(2)}' if m.group(1) == '0'
                   else f'stages.{m.group(1)}.downsample.conv.{m.group(2)}')
        elif key.startswith('batch_norm.'):
            new = 'head.norm.' + key[len('batch_norm.'):]
        elif key.startswith('mlp_head.0.'):
            new = 'head.fc.' + key[len('mlp_head.0.'):]
        out[new or key] = value
    return out


def _identity(state: StateDict, classifier: bool) -> StateDict:
    return OrderedDict(state)


def detect_layout(state: StateDict) -> str:
    """Names the layout of a state dict (see the module docstring) or raises."""
    keys = list(state)
    has = lambda pattern: any(re.match(pattern, k) for k in keys)  # noqa: E731
    if has(r'backbone\.patch_embed\.proj\.') and has(r'head\.fc\.'):
        return 'mmpretrain'
    if has(r'patch_embed\.proj\.') and has(r'network\.\d+\.'):
        return 'official_v1'
    if has(r'downsample_layers\.0\.conv\.') and has(r'stages\.\d\.\d+\.'):
        return 'official_v2'
    if has(r'to_patch_embedding\.0\.') and has(r'token_mix\.\d+\.'):
        return 'spach'
    if has(r'stem\.conv\.') and has(r'stages\.\d\.blocks\.'):
        return 'metaformer_mm' if has(r'out_norms\.') else 'timm'
    raise CheckpointError(
        'unrecognised checkpoint layout (first keys: '
        f'{keys[:4]}); supported: official PoolFormer/MetaFormer/SPACH files, mmpretrain, timm '
        'and metaformer_mm checkpoints (give prefix="backbone." for detector/segmentor files)')


CONVERTERS: Dict[str, Callable[[StateDict, bool], StateDict]] = {
    'official_v1': _convert_official_v1,
    'official_v2': _convert_official_v2,
    'spach': _convert_spach,
    'timm': _identity,
    'metaformer_mm': _identity,
}


def convert_state_dict(state: StateDict, layout: Optional[str] = None) -> Tuple[str, StateDict]:
    """Maps a backbone state dict in any supported layout to this project's keys."""
    layout = layout or detect_layout(state)
    if layout == 'mmpretrain':
        classifier = any(k.startswith('head.') for k in state)
        backbone = OrderedDict((k[len('backbone.'):], v) for k, v in state.items()
                               if k.startswith('backbone.'))
        heads = OrderedDict((k, v) for k, v in state.items() if k.startswith('head.'))
        return layout, _convert_official_v1(OrderedDict(**backbone, **heads), classifier)
    if layout not in CONVERTERS:
        raise ValueError(f'unknown layout {layout!r}; allowed: {sorted(CONVERTERS) + ["mmpretrain"]}')
    classifier = any(k.startswith(('head.', 'mlp_head.')) for k in state)
    return layout, CONVERTERS[layout](state, classifier)


# --------------------------------------------------------------------------- loading
def _fit(name: str, value: torch.Tensor, target: torch.Tensor, path: str) -> torch.Tensor:
    """Reshapes Linear <-> 1x1-conv weights; raises on a real shape mismatch."""
    if value.shape == target.shape:
        return value
    squeeze = lambda s: tuple(d for i, d in enumerate(s) if not (i >= 2 and d == 1))  # noqa: E731
    if value.numel() == target.numel() and squeeze(value.shape) == squeeze(target.shape):
        return value.reshape(target.shape)
    raise CheckpointError(
        f'shape mismatch loading {path}: {name} is {tuple(value.shape)} in the checkpoint but '
        f'{tuple(target.shape)} in the model (a checkpoint of another architecture?)')


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


def load_pretrained(model: nn.Module, path: str, prefix: Optional[str] = None,
                    map_location: Any = 'cpu', min_fraction: float = 0.5,
                    logger: Optional[MMLogger] = None) -> Dict[str, Any]:
    """Loads backbone weights in any supported layout into ``model`` (a MetaFormer).

    A classification file's head and final norm are dropped when the model has
    ``fork_feat``; the output norms it lacks keep their initial values, as in the original
    ``fork_feat`` models. Raises :class:`CheckpointError` on a shape mismatch or when fewer
    than ``min_fraction`` of the model's tensors would load. Logs one line with the format,
    the count and the missing and unexpected keys; returns the same facts as a dict.
    """
    logger = logger or MMLogger.get_current_instance()
    raw = read_checkpoint(path, map_location)
    state = extract_state_dict(raw, path, prefix)
    try:
        layout, converted = convert_state_dict(state)
    except CheckpointError as err:  # e.g. keys that match no known layout: name the file
        raise CheckpointError(f'cannot load {path}: {err}') from None
    fork_feat = getattr(model, 'fork_feat', True)
    dropped = [k for k in converted if k.startswith('head.' if fork_feat else 'out_norms.')]
    own = model.state_dict()
    _check_depths(converted, own, path)
    loaded, unexpected = OrderedDict(), []
    for key, value in converted.items():
        if key in dropped:
            continue
        if key not in own:
            unexpected.append(key)
            continue
        loaded[key] = _fit(key, value, own[key], path).to(own[key].dtype)
    missing = [k for k in own if k not in loaded]
    if len(loaded) < min_fraction * len(own):
        raise CheckpointError(
            f'only {len(loaded)} of the model\'s {len(own)} tensors would load from {path} '
            f'(format {layout}); refusing to train mostly from scratch. Unexpected keys: '
            f'{unexpected[:8]}, missing: {missing[:8]}')
    own.update(loaded)
    model.load_state_dict(own, strict=True)
    report = dict(path=path, layout=layout, loaded=len(loaded), total=len(own),
                  missing=missing, unexpected=unexpected, dropped=dropped)
    logger.info(
        f'Loaded {len(loaded)}/{len(own)} tensors from {path} (format: {layout}); '
        f'missing (kept initial values): {missing or "none"}; unexpected: {unexpected or "none"}; '
        f'dropped classifier: {len(dropped)} tensors')
    return report


def save_converted(src: str, dst: str, layout: Optional[str] = None,
                   prefix: Optional[str] = None) -> Tuple[str, int]:
    """Writes ``src`` converted to this project's keys as ``{'state_dict': ...}`` at ``dst``.

    The write goes to a temporary file first so that a failure never leaves a partial
    ``dst``. Returns the detected layout and the number of tensors.
    """
    state = extract_state_dict(read_checkpoint(src), src, prefix)
    layout, converted = convert_state_dict(state, layout)
    atomic_save({'state_dict': converted, 'meta': {'converted_from': layout}}, dst)
    return layout, len(converted)


def atomic_save(obj: Any, dst: str) -> None:
    """``torch.save`` through a temporary file and a rename: the old ``dst`` survives failures."""
    tmp = f'{dst}.tmp-{os.getpid()}'
    try:
        with open(tmp, 'wb') as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)


# =========================================================================== whole detectors
# Section: converting whole detector / segmentor checkpoints (detection tools, issue 4).
# Self-contained: it uses only the backbone converters above.
#
# The sail-sg releases were trained with mmdet 2.19 (RetinaNet, Mask R-CNN) and mmseg 0.19
# (Semantic FPN). Their backbone keys are the official_v1 layout under ``backbone.``
# (``network.N...``, output norms ``norm{0,2,4,6}``; RetinaNet's files lack ``norm0``, which
# was an ``nn.Identity`` under ``FORK_LAST3=1``). Everything else was compared, module by
# module, between mmdet 2.x / mmseg 0.x and the installed mmdet 3.3 / mmseg 1.2 sources:
#   FPN               neck.lateral_convs.N.conv.*, neck.fpn_convs.N.conv.*
#   RetinaHead        bbox_head.{cls_convs,reg_convs}.N.conv.*, bbox_head.retina_{cls,reg}.*
#   RPNHead           rpn_head.rpn_conv.*, rpn_head.rpn_{cls,reg}.*  (num_convs=1: a Conv2d)
#   Shared2FCBBoxHead roi_head.bbox_head.shared_fcs.N.*, roi_head.bbox_head.fc_{cls,reg}.*
#   FCNMaskHead       roi_head.mask_head.convs.N.conv.*, .upsample.*, .conv_logits.*
#   FPNHead (mmseg)   decode_head.scale_heads.N.M.{conv,bn}.*, decode_head.conv_seg.*
# All of these names are unchanged (ConvModule still names its parts ``conv``/``bn``/``gn``),
# and the FPN index of RetinaNet's first lateral conv is 0 both for 2.x's
# ``in_channels=[64,128,320,512], start_level=1`` and for our ``[128,320,512], start_level=0``.
# So the rename tables are empty; they stay as the one place to add a rule should a head's
# names differ.
DETECTOR_KEY_RULES: Dict[str, List[Tuple[str, str]]] = {
    'mmdet2': [],  # mmdet 2.x -> 3.x, keys outside the backbone
    'mmseg0': [],  # mmseg 0.x -> 1.x, keys outside the backbone
}


def detector_backbone_layout(state: StateDict, prefix: str = 'backbone.') -> Optional[str]:
    """Layout of the ``prefix`` keys of a whole-model state dict; None if none or unknown."""
    backbone = OrderedDict((k[len(prefix):], v) for k, v in state.items() if k.startswith(prefix))
    if not backbone:
        return None
    try:
        return detect_layout(backbone)
    except CheckpointError:
        return None  # not a MetaFormer backbone (e.g. a ResNet): nothing of ours to convert


def convert_detector_checkpoint(state: StateDict, kind: str = 'mmdet2',
                                prefix: str = 'backbone.') -> StateDict:
    """Maps a whole detector (``kind='mmdet2'``) or segmentor (``'mmseg0'``) state dict to ours.

    The ``prefix`` keys go through :func:`convert_state_dict` (any supported backbone layout;
    files already in this project's layout come back unchanged); the neck and head keys go
    through ``DETECTOR_KEY_RULES[kind]`` and are otherwise kept. Order is preserved.
    """
    if kind not in DETECTOR_KEY_RULES:
        raise ValueError(f'unknown kind {kind!r}; allowed: {sorted(DETECTOR_KEY_RULES)}')
    backbone = OrderedDict((k[len(prefix):], v) for k, v in state.items() if k.startswith(prefix))
    if not backbone:
        raise CheckpointError(f'no key starts with {prefix!r} (first keys: {list(state)[:4]}); '
                              f'is this a whole detector/segmentor checkpoint?')
    _, converted_backbone = convert_state_dict(backbone)
    rename = _renamer(DETECTOR_KEY_RULES[kind])
    out = OrderedDict((prefix + k, v) for k, v in converted_backbone.items())
    for key, value in state.items():
        if not key.startswith(prefix):
            out[rename(key) or key] = value
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


def convert_detector_file(src: str, dst: str, kind: str = 'mmdet2') -> Tuple[Optional[str], int]:
    """Writes ``src`` (a whole-model checkpoint) converted for this project's configs to ``dst``.

    The output is ``{'state_dict': ..., 'meta': {'dataset_meta': ..., 'converted_from': ...}}``,
    which ``tools/test.py``, ``init_detector`` and ``load_from`` read. Returns the layout the
    backbone was found in and the number of tensors written.
    """
    raw = read_checkpoint(src)
    state = extract_state_dict(raw, src)
    layout = detector_backbone_layout(state)
    converted = convert_detector_checkpoint(state, kind)
    meta = {'converted_from': f'{kind}/{layout}'}
    dataset_meta = detector_dataset_meta(raw)
    if dataset_meta:
        meta['dataset_meta'] = dataset_meta
    atomic_save({'state_dict': converted, 'meta': meta}, dst)
    return layout, len(converted)
# ======================================================================= end whole detectors
