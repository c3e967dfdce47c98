"""Everything importing ``metaformer_mm`` changes in mmengine (and torch), and why.

Each exists because mmengine 0.10 has no public mechanism for it;
``tests/engine/test_mmengine_internals.py`` fails by name when mmengine changes what it relies on.

* **Every checkpoint read** (``load_from``, ``resume``, ``init_detector``, ``init_model``, the
  inferencers, ``Pretrained``) goes through :func:`load_from_safe`: ``weights_only=True``,
  errors naming the file, embedded configs checked when read. ``register_scheme`` is public,
  but replacing the loader of plain paths relies on the ``''`` prefix matching them in the
  private ``CheckpointLoader._get_checkpoint_loader``. Other schemes keep mmengine's loaders.
* **mmengine's own training checkpoints load with ``weights_only=True``**
  (:func:`allow_mmengine_checkpoint_types`): torch's public ``add_safe_globals``, plus a
  ``copyreg`` form of ``HistoryBuffer`` that leaves out its private ``statistics_methods``.
* **``SafeCheckpointHook``** (``hooks.py``) overrides ``CheckpointHook``'s private
  ``_save_checkpoint_with_step`` and ``_save_best_checkpoint``: mmengine deletes old files
  there before the new one is written, and offers no public step to reorder.
* **``metaformer_mm::`` config paths**: an entry in mmengine's ``MODULE2PACKAGE``
  (``startup.register_mmengine``), the only table ``Config`` consults for packages."""
import os.path as osp
from typing import Any, List

import torch
from mmengine.runner.checkpoint import CheckpointLoader

from ..checkpoint import is_url, prepare_checkpoint, read_checkpoint
from ..zoo import checkpoint_url


def load_from_safe(filename: str, map_location: Any = None) -> Any:
    """mmengine's loader of local paths and URLs, through :func:`read_checkpoint` (mmengine
    logs it as "safe backend": it names loaders by their suffix)."""
    path = checkpoint_url(filename) if is_url(filename) else osp.expanduser(filename)
    return prepare_checkpoint(read_checkpoint(path, map_location), path)


def install_checkpoint_loader() -> None:
    """Routes mmengine's loading of local and http(s) checkpoints through :func:`load_from_safe`."""
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_safe, force=True)
    CheckpointLoader.register_scheme(prefixes=('http://', 'https://'),
                                     loader=load_from_safe, force=True)


def _reduce_history_buffer(buffer: Any) -> tuple:
    """Pickles a ``HistoryBuffer`` as its data only: its ``__getstate__`` also stores the
    class-wide statistics methods, which pickle as ``getattr`` calls, and allowing ``getattr``
    would open the weights-only unpickler far wider. ``__setstate__`` restores the defaults."""
    state = {k: v for k, v in vars(buffer).items() if k != 'statistics_methods'}
    return type(buffer), (), state


def allow_mmengine_checkpoint_types() -> None:
    """Lets ``weights_only=True`` (torch >= 2.6's default) load mmengine's training
    checkpoints: allow-lists exactly the types their ``message_hub`` holds (``HistoryBuffer``,
    numpy arrays, dtypes and scalars), nothing that can run code."""
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
    types: List[Any] = [HistoryBuffer, _reconstruct, scalar, np.ndarray, np.dtype,
                        *dtype_classes]
    add(types)


def install() -> None:
    """What ``import metaformer_mm`` changes in mmengine (see the module docstring)."""
    allow_mmengine_checkpoint_types()
    install_checkpoint_loader()
