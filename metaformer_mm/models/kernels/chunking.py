"""Chunk sizes of the cache-blocked kernels, in float elements: one per purpose, changeable
for tests. Tuned on the project's CI machine (2 cores of an AMD EPYC, README Performance);
any size gives the same results."""
import contextlib
from typing import Dict, Iterator

# MLP hidden activation per chunk on aten GEMMs (16 MiB): the chunk stays in the last-level
# cache, the full-size activation is never allocated, and the ops stay few.
ATEN_MLP_CHUNK = 1 << 22
# The same on oneDNN's fused kernels, which leave less work between the GEMMs: a smaller
# chunk (4 MiB) keeps fc2's input in L2.
ONEDNN_MLP_CHUNK = 1 << 20
# Slab of the channels-last -> NCHW output copy (512 KiB: source and target in L2).
NCHW_COPY_CHUNK = 1 << 17

SIZES: Dict[str, int] = dict(aten_mlp=ATEN_MLP_CHUNK, onednn_mlp=ONEDNN_MLP_CHUNK,
                             nchw_copy=NCHW_COPY_CHUNK)


@contextlib.contextmanager
def chunk_sizes(**sizes: int) -> Iterator[Dict[str, int]]:
    """Sets some of ``SIZES`` while the context lasts (e.g. tiny chunks in tests)."""
    if set(sizes) - set(SIZES) or any(not isinstance(v, int) or v < 1 for v in sizes.values()):
        raise ValueError(f'chunk_sizes takes positive ints for {sorted(SIZES)}, got {sizes}')
    saved = dict(SIZES)
    SIZES.update(sizes)
    try:
        yield SIZES
    finally:
        SIZES.update(saved)
