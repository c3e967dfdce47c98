"""Checkpoint files: safe reading, diagnosis of unreadable files, all-or-nothing writing.

Files are read with ``torch.load(weights_only=True)`` or as ``.safetensors``: nothing a file
holds is executed. :func:`read_checkpoint` records which file its tensors came from, so that
a load failing later, inside ``load_state_dict``, can name the file."""
import argparse
import contextlib
import contextvars
import hashlib
import io
import os
import os.path as osp
import pickle
import re
import urllib.parse
import uuid
import weakref
import zipfile
from pathlib import Path
from typing import (Any, Dict, Iterable, Iterator, List, NamedTuple, Optional, Tuple,
                    Union)

import torch
from mmengine.dist import barrier, get_dist_info


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


# --------------------------------------------------------------------------- reading files
def is_url(path: str) -> bool:
    """Whether :func:`read_checkpoint` downloads ``path`` (http/https) rather than opens it."""
    return path.startswith(('http://', 'https://'))


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint path that names no file (a ``FileNotFoundError`` too)."""


def read_checkpoint(path: str, map_location: Any = 'cpu') -> Any:
    """Reads a checkpoint file or URL (safetensors recognised by its header).

    URLs are downloaded once into torch's hub cache, by rank 0 first under ``torch.distributed``.
    Errors name the file and the problem."""
    if is_url(path):
        rank, world_size = get_dist_info()
        if rank == 0:
            obj = _read_url(path, map_location)
        if world_size > 1:
            barrier()
            if rank > 0:
                obj = _read_url(path, map_location)
    else:
        if osp.isdir(path):
            raise CheckpointError(f'{path} is a directory, not a checkpoint file')
        if not osp.isfile(path):
            raise CheckpointNotFoundError(f'checkpoint file not found: {path}')
        if osp.getsize(path) == 0:
            raise CheckpointError(f'checkpoint file is empty: {path}')
        obj = _guarded(path, map_location)
    _record_source(path, obj)
    return obj


def url_cache_file(url: str) -> str:
    """The cache file of ``url`` in torch's hub cache, its name prefixed with a hash of the
    whole URL (two URLs ending alike never share an entry)."""
    name = osp.basename(urllib.parse.urlparse(url).path) or 'checkpoint'
    digest = hashlib.sha256(url.encode('utf-8')).hexdigest()[:12]
    return osp.join(torch.hub.get_dir(), 'checkpoints', f'{digest}_{name}')


def _read_url(url: str, map_location: Any) -> Any:
    """Loads ``url`` from its cache file, downloading it first. A download is renamed into
    place only once it loads; a cache file that no longer loads is downloaded again."""
    cached = url_cache_file(url)
    if osp.isfile(cached):
        try:
            return _guarded(cached, map_location, shown=f'{url} (cached as {cached})')
        except CheckpointError as err:
            if 'refused to load' in str(err):
                raise
            from mmengine.logging import MMLogger
            MMLogger.get_current_instance().warning(
                f'{url}: the cached file {cached} does not load ({err}); downloading it again')
            os.remove(cached)
    os.makedirs(osp.dirname(cached), exist_ok=True)
    tmp = temp_path(cached)
    try:
        try:
            torch.hub.download_url_to_file(url, tmp, progress=False)
        except (OSError, ValueError) as err:  # HTTP and network errors, bad URLs
            raise CheckpointError(f'cannot download {url}: {err} (nothing was written to the '
                                  f'cache file {cached})') from None
        try:
            obj = _guarded(tmp, map_location, shown=url)
        except CheckpointError as err:
            raise CheckpointError(f'{err} (the download was not kept as the cache file '
                                  f'{cached})') from None
        os.replace(tmp, cached)
    finally:
        if osp.lexists(tmp):
            os.remove(tmp)
    return obj


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


class _Unreadable(CheckpointError):
    """Why a file cannot be read; :func:`_guarded` adds the file's name."""


def _is_safetensors(path: str) -> bool:
    """A safetensors file starts with its header's length (8 bytes), then ``{``; a
    ``.safetensors`` name that is neither zip nor pickle counts too, to get that reader's error."""
    with open(path, 'rb') as f:
        head = f.read(9)
    if head[8:9] == b'{':  # byte 8 of a torch file: zip or pickle data, never '{'
        return True
    return path.endswith('.safetensors') and not head.startswith((_ZIP_MAGIC, b'\x80'))


def _load_file(path: str, map_location: Any) -> Any:
    """``torch.load(weights_only=True)`` of ``path``, or its tensors if it is safetensors."""
    if not _is_safetensors(path):
        return torch.load(path, map_location=map_location, weights_only=True)
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    device = map_location if isinstance(map_location, (str, torch.device)) else 'cpu'
    try:
        return load_file(path, device=str(device))
    except SafetensorError as err:
        raise _Unreadable(f'it is a corrupt or truncated .safetensors file ({err})') from None


def _guarded(path: str, map_location: Any, shown: Optional[str] = None) -> Any:
    """:func:`_load_file` of the local file ``path``, its errors turned into one
    :class:`CheckpointError` naming ``shown`` (default ``path``; the URL of a download)."""
    shown = shown or path
    safe_globals = getattr(torch.serialization, 'safe_globals', None)  # torch >= 2.5
    try:
        with safe_globals(_EXTERNAL_SAFE_TYPES) if safe_globals else contextlib.nullcontext():
            return _load_file(path, map_location)
    except _Unreadable as err:
        raise CheckpointError(f'cannot load {shown}: {err}') from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError, KeyError,
            AttributeError, IndexError, TypeError) as err:
        # The legacy loader reads a non-checkpoint as a pickle and fails in many ways
        # (a text file gives KeyError); all of them are "not a checkpoint".
        message = str(err)
        found = re.search(r'(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)', message)
        if found:
            raise CheckpointError(
                f'refused to load {shown}: it holds a pickled object ({found.group(1)}) that is '
                f'not a tensor or container, and unpickling it could run code (torch\'s '
                f'weights-only unpickler: unsupported GLOBAL {found.group(1)}). Only plain '
                f'weights are loaded.') from None
        if isinstance(err, FileNotFoundError):
            raise
        reason = _diagnose(path) if osp.isfile(path) else None
        if reason is None:
            # torch's own words advise weights_only=False, which would run the file's code.
            detail = message.strip().split('\n')[0]
            if not detail or 'weights_only' in message:
                detail = type(err).__name__
            reason = f'it is truncated or not a PyTorch checkpoint ({detail})'
        raise CheckpointError(f'cannot load {shown}: {reason}') from None


# --------------------------------------------------------------------------- whose tensors
# The file the last read came from, with weak references to the tensors it returned: a
# module's load hook sees only tensors, and names this file while any of them is alive
# (mmengine drops the checkpoint after loading it, so a later, unrelated load does not).
class _Read(NamedTuple):
    path: str
    refs: Dict[int, weakref.ref]
    first_keys: List[str]
    config_text: Optional[str]  # meta.cfg, unparsed


_LAST_READ: contextvars.ContextVar = contextvars.ContextVar('metaformer_mm_last_read',
                                                            default=None)
_EXPLICIT: contextvars.ContextVar = contextvars.ContextVar('metaformer_mm_source', default=None)


# Where the weights sit in a checkpoint: mmengine's 'state_dict', DeiT-style 'model', DDP's
# 'module'; else the checkpoint is the state dict itself.
_WRAPPERS = ('state_dict', 'model', 'module')


def unwrap_weights(obj: Any) -> Tuple[Optional[str], Any]:
    """``(key, weights)``: the weights of a loaded checkpoint and the key they are under
    (None when ``obj`` itself is the state dict)."""
    if isinstance(obj, dict):
        for key in _WRAPPERS:
            if key in obj and (isinstance(obj[key], dict) or key == 'state_dict'):
                return key, obj[key]
    return None, obj


def _record_source(path: str, obj: Any) -> None:
    weights = unwrap_weights(obj)[1]
    weights = weights if isinstance(weights, dict) else {}
    refs = {id(v): weakref.ref(v) for v in weights.values() if torch.is_tensor(v)}
    meta = obj.get('meta') if isinstance(obj, dict) else None
    config = meta.get('cfg') if isinstance(meta, dict) else None
    _LAST_READ.set(_Read(path, refs, [str(k) for k in list(weights)[:5]],
                         config if isinstance(config, str) else None))


def _last_read(tensors: Iterable[Any] = ()) -> Optional[_Read]:
    """The last read, if tensors it returned are alive and ``tensors`` (when given) are
    among them."""
    last = _LAST_READ.get()
    if last is None:
        return None
    refs = last.refs
    tensors = list(tensors)
    if tensors:
        found = any(refs.get(id(t)) is not None and refs[id(t)]() is t for t in tensors)
    else:
        found = any(ref() is not None for ref in refs.values())
    return last if found else None


def checkpoint_source(tensors: Iterable[Any] = ()) -> Optional[str]:
    """The file whose ``tensors`` are being loaded (see :func:`loading_source`,
    :func:`read_checkpoint`), or None."""
    explicit = _EXPLICIT.get()
    if explicit:
        return explicit
    last = _last_read(tensors)
    return last.path if last else None


def file_being_loaded() -> Optional[_Read]:
    last = _last_read()
    return last if last and _EXPLICIT.get() in (None, last.path) else None


@contextlib.contextmanager
def loading_source(path: str) -> Iterator[None]:
    """Names ``path`` as the file of every state dict loaded inside the ``with`` block."""
    token = _EXPLICIT.set(path)
    try:
        yield
    finally:
        _EXPLICIT.reset(token)


# --------------------------------------------------------------------------- writing files
def temp_path(path: str) -> str:
    """The hidden temporary file beside ``path`` that a write goes to before its rename."""
    return osp.join(osp.dirname(path), f'.{osp.basename(path)}.{uuid.uuid4().hex[:8]}.tmp')


def atomic_write(data: Union[bytes, str], path: Union[str, Path]) -> None:
    """Writes ``data`` to ``path`` completely or not at all: a temporary file in the same
    directory (``os.replace`` is atomic only within a filesystem), synced, renamed."""
    path = osp.abspath(path)
    directory = osp.dirname(path)
    os.makedirs(directory, exist_ok=True)
    tmp = temp_path(path)
    mode = 'xb' if isinstance(data, bytes) else 'x'
    try:
        with open(tmp, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if osp.lexists(tmp):
            os.remove(tmp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Makes the rename durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, dst: Union[str, Path]) -> None:
    """``torch.save`` of ``obj`` to ``dst`` through :func:`atomic_write`."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(buffer.getvalue(), dst)
