"""Chunk sizes of the cache-blocked kernels: one per purpose, changeable for tests.

Sizes are in float elements. They were tuned on the project's CI machine (2 cores of an
AMD EPYC, see the README's Performance section); any size gives the same results.
"""
import contextlib
import dataclasses
from typing import Iterator

# MLP hidden activation per chunk on aten GEMMs (16 MiB): the chunk stays in the last-level
# cache, the full-size activation is never allocated, and the ops stay few.
ATEN_MLP_CHUNK = 1 << 22
# The same on oneDNN's fused kernels, which leave less work between the GEMMs: a smaller
# chunk (4 MiB) keeps fc2's input in L2.
ONEDNN_MLP_CHUNK = 1 << 20
# Slab of the channels-last -> NCHW output copy (512 KiB: source and target in L2).
NCHW_COPY_CHUNK = 1 << 17


@dataclasses.dataclass
class ChunkSizes:
    """The sizes in use (read at every call)."""
    aten_mlp: int = ATEN_MLP_CHUNK
    onednn_mlp: int = ONEDNN_MLP_CHUNK
    nchw_copy: int = NCHW_COPY_CHUNK


SIZES = ChunkSizes()


@contextlib.contextmanager
def chunk_sizes(**sizes: int) -> Iterator[ChunkSizes]:
    """Sets some of ``ChunkSizes``'s fields while the context lasts (e.g. tiny chunks in tests)."""
    fields = {f.name for f in dataclasses.fields(ChunkSizes)}
    unknown = set(sizes) - fields
    if unknown or any(not isinstance(v, int) or v < 1 for v in sizes.values()):
        raise ValueError(f'chunk_sizes takes positive ints for {sorted(fields)}, got {sizes}')
    saved = dataclasses.replace(SIZES)
    for name, value in sizes.items():
        setattr(SIZES, name, value)
    try:
        yield SIZES
    finally:
        for name in fields:
            setattr(SIZES, name, getattr(saved, name))
