"""Training-run machinery for mmengine's Runner: safe checkpoints, a non-finite guard, CPU mixed
precision, and what the package changes in mmengine (``mmengine_internals``)."""
from .guard import NonFiniteError, NonFiniteGuardHook, compiles, runner_model
from .hooks import ATOMIC_BACKEND, AtomicLocalBackend, SafeCheckpointHook
from .optim import CPUAmpOptimWrapper

__all__ = ['ATOMIC_BACKEND', 'AtomicLocalBackend', 'CPUAmpOptimWrapper', 'NonFiniteError',
           'NonFiniteGuardHook', 'SafeCheckpointHook', 'compiles', 'runner_model']
