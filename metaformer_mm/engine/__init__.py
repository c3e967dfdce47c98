"""Training-run machinery for mmengine's Runner: safe checkpoint writing and reading."""
from .checkpoint_io import (ATOMIC_BACKEND, AtomicLocalBackend, atomic_write,
                            install_checkpoint_loader, load_local_checkpoint)
from .hooks import SafeCheckpointHook

__all__ = ['ATOMIC_BACKEND', 'AtomicLocalBackend', 'SafeCheckpointHook', 'atomic_write',
           'install_checkpoint_loader', 'load_local_checkpoint']
