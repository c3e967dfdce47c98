"""The private mmengine behaviour this package relies on, checked so that an mmengine
upgrade that changes it fails here, by name, instead of silently disabling a safeguard.

Each has no public equivalent in mmengine 0.10 (see ``metaformer_mm/engine/mmengine_internals.py``,
which lists them): the loader for plain paths is the one registered for the ``''``
prefix; ``CheckpointHook`` writes through ``_save_checkpoint_with_step`` and
``_save_best_checkpoint``; inferencers read an embedded config as ``checkpoint['meta']['cfg']``
or ``checkpoint['message_hub']['runtime_info']['cfg']``, and ``Runner.resume`` executes
``checkpoint['meta']['config']`` (the check runs on those reads).
"""
import inspect

from mmengine.hooks import CheckpointHook
from mmengine.infer import BaseInferencer
from mmengine.runner import Runner
from mmengine.runner.checkpoint import CheckpointLoader

import metaformer_mm  # noqa: F401  (installs the loader)
from metaformer_mm.engine.mmengine_internals import load_from_safe
from metaformer_mm.engine.hooks import SafeCheckpointHook


def test_plain_paths_and_urls_are_read_by_our_loader():
    for path in ('/some/dir/iter_4.pth', 'relative.pth', 'https://host/x.pth', 'http://h/x'):
        assert CheckpointLoader._get_checkpoint_loader(path) is load_from_safe, path


def test_checkpoint_hook_methods_overridden_still_exist_and_are_called():
    for name, params in (('_save_checkpoint_with_step', ['self', 'runner', 'step', 'meta']),
                         ('_save_best_checkpoint', ['self', 'runner', 'metrics'])):
        method = getattr(CheckpointHook, name, None)
        assert method is not None, f'mmengine CheckpointHook has no {name} any more'
        assert list(inspect.signature(method).parameters) == params, name
        assert getattr(SafeCheckpointHook, name) is not method
    source = inspect.getsource(CheckpointHook)
    assert 'self._save_checkpoint_with_step(' in source
    assert 'self._save_best_checkpoint(' in source


def test_inferencers_read_the_embedded_config_by_key():
    source = inspect.getsource(BaseInferencer._init_model)
    assert "checkpoint['message_hub']['runtime_info']['cfg']" in source
    assert "meta['cfg']" in source


def test_resume_reads_the_mmdet2_config_by_key():
    assert "checkpoint['meta']['config']" in inspect.getsource(Runner.resume)


def test_history_buffer_pickles_as_data_and_loads_weights_only(tmp_path):
    """mmengine's training checkpoints hold ``HistoryBuffer``s: their ``copyreg`` form leaves
    out the private ``statistics_methods`` (which ``__setstate__`` must restore), and
    torch's ``add_safe_globals`` lets ``weights_only=True`` load them."""
    import torch
    from mmengine.logging.history_buffer import HistoryBuffer
    assert hasattr(torch.serialization, 'add_safe_globals')
    buffer = HistoryBuffer()
    buffer.update(2.0)
    # Why the copyreg form exists: mmengine's own pickle state holds the statistics methods.
    assert 'statistics_methods' in buffer.__getstate__(), 'HistoryBuffer changed its state'
    torch.save({'hub': buffer}, tmp_path / 'hub.pth')
    loaded = torch.load(tmp_path / 'hub.pth', weights_only=True)['hub']
    assert loaded.mean() == 2.0 and 'mean' in loaded._statistics_methods
