"""``SafeCheckpointHook``: mmengine's CheckpointHook that never loses the last good checkpoint.

mmengine 0.10's ``CheckpointHook`` deletes the oldest and the previous best checkpoint
*before* writing the new one, and writes it and ``last_checkpoint`` in place: a full disk can
leave no loadable checkpoint. This drop-in replacement writes both all-or-nothing (the
``'atomic_local'`` backend, for local directories), points ``last_checkpoint`` at a file only
once it is complete, deletes old files only after that, and refuses to write a model holding
non-finite tensors. ``default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))``."""
import os.path as osp
from pathlib import Path
from typing import Any, Dict, List, Set, Tuple, Union

from mmengine.dist import is_main_process
from mmengine.fileio import LocalBackend, get_file_backend, register_backend
from mmengine.hooks import CheckpointHook
from mmengine.registry import HOOKS

from ..checkpoint import atomic_write
from .guard import NonFiniteError, non_finite_tensors, runner_model


ATOMIC_BACKEND = 'atomic_local'


@register_backend(ATOMIC_BACKEND)
class AtomicLocalBackend(LocalBackend):
    """mmengine's local file backend with all-or-nothing writes."""

    def put(self, obj: bytes, filepath: Union[str, Path]) -> None:
        _named_write(obj, filepath)

    def put_text(self, obj: str, filepath: Union[str, Path], encoding: str = 'utf-8') -> None:
        _named_write(obj.encode(encoding), filepath)


def _named_write(data: bytes, filepath: Union[str, Path]) -> None:
    """``atomic_write``; a failed write (``write`` errors of a full disk carry no file name)
    names its file."""
    try:
        atomic_write(data, filepath)
    except OSError as err:
        if err.filename or not err.errno:
            raise
        raise OSError(err.errno, err.strerror, str(filepath)) from err


class _DeferredRemovals:
    """A file backend whose ``remove``/``rmtree`` wait for :meth:`apply`:
    ``_save_best_checkpoint`` removes the previous best before saving the new one."""

    def __init__(self, backend: Any) -> None:
        self._backend = backend
        self._queued: List[Tuple[str, str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def remove(self, path: str) -> None:
        self._queued.append(('remove', path))

    def rmtree(self, path: str) -> None:
        self._queued.append(('rmtree', path))

    def apply(self, keep: Set[str]) -> None:
        for operation, path in self._queued:
            if path not in keep:
                getattr(self._backend, operation)(path)


@HOOKS.register_module()
class SafeCheckpointHook(CheckpointHook):
    """A ``CheckpointHook`` whose failed writes leave the previous checkpoints intact."""

    def before_train(self, runner) -> None:
        super().before_train(runner)
        # Local directories only: other backends (s3://, ...) keep their own semantics.
        if self.file_client_args is None and type(self.file_backend) is LocalBackend:
            self.backend_args = dict(backend=ATOMIC_BACKEND)
            self.file_backend = get_file_backend(self.out_dir, backend_args=self.backend_args)

    def _refuse_non_finite(self, runner, what: str) -> None:
        bad = non_finite_tensors(runner_model(runner).state_dict())
        if bad:
            last = runner.message_hub.get_info('last_ckpt')
            raise NonFiniteError(
                f'not writing {what}: {len(bad)} model tensors are non-finite (first: '
                f'{bad[0]}); the last checkpoint, {last or "none"}, is kept')

    def _save_checkpoint_with_step(self, runner, step: int, meta: Dict) -> None:
        filename = self.filename_tmpl.format(step)
        self._refuse_non_finite(runner, filename)
        path = self.file_backend.join_path(self.out_dir, filename)
        expired = []
        if self.max_keep_ckpts > 0 and not (self.keep_ckpt_ids
                                            and self.keep_ckpt_ids[-1] == step):
            if len(self.keep_ckpt_ids) == self.max_keep_ckpts:
                expired.append(self.keep_ckpt_ids[0])
            self.keep_ckpt_ids.append(step)  # a deque of maxlen max_keep_ckpts
            # Recorded before saving, so that the checkpoint holds the list it belongs to.
            runner.message_hub.update_info('keep_ckpt_ids', list(self.keep_ckpt_ids))
        self.last_ckpt = path
        runner.message_hub.update_info('last_ckpt', path)

        runner.save_checkpoint(
            self.out_dir, filename, self.file_client_args,
            save_optimizer=self.save_optimizer, save_param_scheduler=self.save_param_scheduler,
            meta=meta, by_epoch=self.by_epoch, backend_args=self.backend_args, **self.args)

        if not is_main_process():  # only rank 0 writes files
            return
        atomic_write(path, osp.join(runner.work_dir, 'last_checkpoint'))
        for old in expired:
            self._remove(self.file_backend.join_path(self.out_dir, self.filename_tmpl.format(old)))

    def _save_best_checkpoint(self, runner, metrics: Dict) -> None:
        if not self.save_best:
            return
        self._refuse_non_finite(runner, 'the best checkpoint')
        backend = self.file_backend
        deferred = _DeferredRemovals(backend)
        self.file_backend = deferred
        try:
            super()._save_best_checkpoint(runner, metrics)
        finally:
            self.file_backend = backend
        # The new best checkpoint is written: the one it supersedes can go.
        current = {getattr(self, 'best_ckpt_path', None),
                   *getattr(self, 'best_ckpt_path_dict', {}).values()}
        deferred.apply(keep={str(p) for p in current if p})

    def _remove(self, path: str) -> None:
        if self.file_backend.isfile(path):
            self.file_backend.remove(path)
        elif self.file_backend.isdir(path):  # DeepSpeed saves directories
            self.file_backend.rmtree(path)
