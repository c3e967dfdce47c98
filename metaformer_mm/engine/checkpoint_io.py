"""Checkpoint files for mmengine's Runner: all-or-nothing writes, safe and clear reads.

* :class:`AtomicLocalBackend` (registered as mmengine file backend ``'atomic_local'``)
  writes through :func:`metaformer_mm.checkpoint.atomic_write`: a temporary file in the same
  directory, synced and renamed over the destination. A write that fails part-way (disk
  full, quota, a crash) leaves the destination as it was and no partial file behind.
* :func:`install_checkpoint_loader` makes mmengine read local and ``http(s)://``
  checkpoints (``load_from``, ``resume``, ``init_detector``, ``init_model``, the
  inferencers, ``Pretrained`` init of any module) through :func:`load_from_safe`:
  ``weights_only=True``, one error naming the file and the problem instead of the
  unpickler's or a ``KeyError`` (not a state dict, non-finite weights, no ``meta``), the file
  recorded for the backbone's load-time checks, and a config embedded in the file checked
  when an inferencer reads it (data only: no code, imports or file reads).
"""
import os.path as osp
from pathlib import Path
from typing import Any, Union

from mmengine.fileio import LocalBackend, register_backend
from mmengine.runner.checkpoint import CheckpointLoader

from ..checkpoint import atomic_write, prepare_checkpoint, read_checkpoint

ATOMIC_BACKEND = 'atomic_local'


@register_backend(ATOMIC_BACKEND)
class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend whose writes are all-or-nothing (see :func:`atomic_write`)."""

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        _named_write(obj, filepath)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = 'utf-8') -> None:
        _named_write(obj.encode(encoding), filepath)


def _named_write(data: bytes, filepath: Union[str, Path]) -> None:
    """:func:`atomic_write`; a failed write (a full disk: ``write`` errors carry no file name)
    names the file it was for."""
    try:
        atomic_write(data, filepath)
    except OSError as err:
        if err.filename or not err.errno:
            raise
        raise OSError(err.errno, err.strerror, str(filepath)) from err


def load_from_safe(filename: str, map_location: Any = None) -> Any:
    """mmengine's loader for local paths and URLs, through :func:`read_checkpoint`.

    (mmengine logs "Loads checkpoint by safe backend": it names loaders by their suffix.)
    """
    path = filename if '://' in filename else osp.expanduser(filename)
    return prepare_checkpoint(read_checkpoint(path, map_location), path)


def install_checkpoint_loader() -> None:
    """Routes mmengine's loading of local and http(s) checkpoints through
    :func:`load_from_safe`. Other schemes (``open-mmlab://``, ``torchvision://``,
    ``s3://``, ``pavi://``) keep mmengine's loaders.

    mmengine has no public hook for "every checkpoint read": ``register_scheme`` is public,
    but replacing its loader of plain paths relies on the ``''`` prefix matching them
    (``CheckpointLoader._get_checkpoint_loader``). tests/engine/test_mmengine_internals.py fails
    by name if mmengine changes that, or the ``CheckpointHook`` methods ``SafeCheckpointHook``
    overrides, or the keys under which its inferencers and ``Runner.resume`` read an
    embedded config.
    """
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_safe, force=True)
    CheckpointLoader.register_scheme(prefixes=('http://', 'https://'),
                                     loader=load_from_safe, force=True)
