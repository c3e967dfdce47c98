"""Training-run machinery for mmengine's Runner: safe checkpoint writing and reading, a guard
against non-finite training, CPU mixed precision."""
from .checkpoint_io import (ATOMIC_BACKEND, AtomicLocalBackend, atomic_write,
                            install_checkpoint_loader)
from .guard import NonFiniteError, NonFiniteGuardHook, compiles
from .hooks import SafeCheckpointHook
from .optim import CPUAmpOptimWrapper

__all__ = ['ATOMIC_BACKEND', 'AtomicLocalBackend', 'CPUAmpOptimWrapper', 'NonFiniteError',
           'NonFiniteGuardHook', 'SafeCheckpointHook', 'atomic_write', 'compiles',
           'install_checkpoint_loader']
