"""Everything importing ``metaformer_mm`` changes in mmengine (and torch), and why.

Each is kept only because mmengine 0.10 has no public mechanism for it;
``tests/engine/test_mmengine_internals.py`` fails by name when mmengine changes what it relies on.

* **Every checkpoint read** (``load_from``, ``resume``, ``init_detector``, ``init_model``, the
  inferencers, ``Pretrained`` init) goes through :func:`load_from_safe`: ``weights_only=True``,
  errors naming the file, embedded configs checked when read. ``register_scheme`` is public,
  but replacing the loader of plain paths relies on the ``''`` prefix matching them in the
  private ``CheckpointLoader._get_checkpoint_loader``. Other schemes (``open-mmlab://``,
  ``s3://``, ...) keep mmengine's loaders.
* **mmengine's own training checkpoints load with ``weights_only=True``**
  (:func:`allow_mmengine_checkpoint_types`): torch's public ``add_safe_globals``, plus a
  ``copyreg`` form of ``HistoryBuffer`` that leaves out its private ``statistics_methods``.
* **``SafeCheckpointHook``** (``hooks.py``) overrides ``CheckpointHook``'s private
  ``_save_checkpoint_with_step`` and ``_save_best_checkpoint``: mmengine deletes old files
  there before the new one is written, and offers no public step to reorder.
* **``metaformer_mm::`` config paths**: an entry in mmengine's ``MODULE2PACKAGE``
  (``zoo.register_package_configs``), the only table ``Config`` consults for packages.
"""
import os.path as osp
from typing import Any, List

import torch
from mmengine.runner.checkpoint import CheckpointLoader

from ..checkpoint import is_url, prepare_checkpoint, read_checkpoint
from ..zoo import checkpoint_url


def load_from_safe(filename: str, map_location: Any = None) -> Any:
    """mmengine's loader for local paths and URLs, through :func:`read_checkpoint`.

    (mmengine logs "Loads checkpoint by safe backend": it names loaders by their suffix.)
    """
    path = checkpoint_url(filename) if is_url(filename) else osp.expanduser(filename)
    return prepare_checkpoint(read_checkpoint(path, map_location), path)


def install_checkpoint_loader() -> None:
    """Routes mmengine's loading of local and http(s) checkpoints through :func:`load_from_safe`."""
    CheckpointLoader.register_scheme(prefixes='', loader=load_from_safe, force=True)
    CheckpointLoader.register_scheme(prefixes=('http://', 'https://'),
                                     loader=load_from_safe, force=True)


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
    types: List[Any] = [HistoryBuffer, _reconstruct, scalar, np.ndarray, np.dtype,
                        *dtype_classes]
    add(types)


def install() -> None:
    """What ``import metaformer_mm`` changes in mmengine (see the module docstring)."""
    allow_mmengine_checkpoint_types()
    install_checkpoint_loader()
