"""Checkpoint files for mmengine's Runner: all-or-nothing writes, clear errors on reads.

* :class:`AtomicLocalBackend` (registered as mmengine file backend ``'atomic_local'``)
  writes a file to a temporary name in the same directory, syncs it to disk and renames
  it over the destination. A write that fails part-way (disk full, quota, a crash) leaves
  the destination as it was and no partial file behind.
* :func:`install_checkpoint_loader` makes mmengine read local checkpoints (``load_from``,
  ``resume``, ``init_detector``, ``init_model``, ``Pretrained`` init of any module) through
  :func:`metaformer_mm.checkpoint.read_checkpoint`: the same ``weights_only=True`` load as
  torch's default, with one error naming the file and the problem instead of the
  unpickler's (``KeyError: 101`` for a text file, ``[Errno 22]`` for a truncated one).
"""
import os
import os.path as osp
import uuid
from pathlib import Path
from typing import Any, Union

from mmengine.fileio import LocalBackend, register_backend
from mmengine.runner.checkpoint import CheckpointLoader

from ..checkpoint import read_checkpoint

ATOMIC_BACKEND = 'atomic_local'


def atomic_write(data: Union[bytes, str], path: Union[str, Path]) -> None:
    """Writes ``data`` to ``path`` completely or not at all (temporary file + rename)."""
    path = str(path)
    directory = osp.dirname(osp.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Hidden, unique and in the same directory: os.replace is atomic only within a filesystem.
    tmp = osp.join(directory, f'.{osp.basename(path)}.{uuid.uuid4().hex[:8]}.tmp')
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
    """Makes the rename itself durable (POSIX); a no-op where directories cannot be opened."""
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


@register_backend(ATOMIC_BACKEND)
class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend whose writes are all-or-nothing (see :func:`atomic_write`)."""

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        atomic_write(obj, filepath)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = 'utf-8') -> None:
        atomic_write(obj.encode(encoding), filepath)


def load_local_checkpoint(filename: str, map_location: Any = None) -> Any:
    """mmengine's loader for local paths, through :func:`read_checkpoint`."""
    return read_checkpoint(osp.expanduser(filename), map_location)


def install_checkpoint_loader() -> None:
    """Routes mmengine's loading of local checkpoint files through :func:`read_checkpoint`."""
    CheckpointLoader.register_scheme(prefixes='', loader=load_local_checkpoint, force=True)
