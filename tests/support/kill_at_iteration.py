"""A hook for training runs that must die as a killed process does, at a known point.

``tools/train.py`` runs in a test import it through ``custom_imports`` (tests/support on the
child's PYTHONPATH). After iteration ``at`` has run all its other hooks, the checkpoint
written at that iteration included, the process sends SIGKILL to itself: no exit handler and
no ``finally`` runs, as with ``kill -9``, and no timing of the parent decides where it lands.
"""
import os
import signal

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class KillAtIteration(Hook):
    """SIGKILLs its own process after training iteration ``at`` (1-based)."""

    # After CheckpointHook (VERY_LOW), so that iteration's checkpoint is complete.
    priority = 'LOWEST'

    def __init__(self, at: int) -> None:
        self.at = at

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if runner.iter + 1 == self.at:  # the loop counts runner.iter up after this hook
            os.kill(os.getpid(), signal.SIGKILL)
