"""Chunk sizes of the cache-blocked kernels, in float elements (tuned on 2 cores of an AMD
EPYC; any size gives the same results)."""
import contextlib
from typing import Dict, Iterator

SIZES: Dict[str, int] = dict(
    # MLP hidden activation per chunk on aten GEMMs (16 MiB): it stays in the last-level cache,
    # the full-size activation is never allocated, and the ops stay few.
    aten_mlp=1 << 22,
    # oneDNN's fused kernels leave less work between the GEMMs: 4 MiB keeps fc2's input in L2.
    onednn_mlp=1 << 20)


@contextlib.contextmanager
def chunk_sizes(**sizes: int) -> Iterator[Dict[str, int]]:
    """Sets some of ``SIZES`` while the context lasts (tiny chunks in tests)."""
    if set(sizes) - set(SIZES) or any(not isinstance(v, int) or v < 1 for v in sizes.values()):
        raise ValueError(f'chunk_sizes takes positive ints for {sorted(SIZES)}, got {sizes}')
    saved = dict(SIZES)
    SIZES.update(sizes)
    try:
        yield SIZES
    finally:
        SIZES.update(saved)
