"""RandFormer's token mixer: a frozen, row-softmaxed random token-to-token matrix tied to the
training grid (sail-sg/metaformer ``RandomMixing``), the parameter ``random_matrix``; another
grid gets a copy resampled as a 4-D kernel, rows renormalised, cached outside the state dict."""
import math
from collections import OrderedDict
from typing import Dict, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import is_int
from .layers import is_tracing

Grid = Tuple[int, int]


def parse_image_size(image_size: Union[int, Sequence[int]], name: str = 'image_size') -> Grid:
    """``image_size`` as (H, W); an int means a square image. Refuses anything else."""
    size = (image_size, image_size) if isinstance(image_size, int) else image_size
    if (isinstance(size, (list, tuple)) and len(size) == 2
            and all(is_int(v) and v > 0 for v in size)):
        return int(size[0]), int(size[1])
    raise ValueError(f'{name} must be a positive int or a pair (H, W) of positive ints, '
                     f'got {image_size!r}')


def resample_token_matrix(matrix: torch.Tensor, native: Grid, grid: Grid) -> torch.Tensor:
    """A (h*w, h*w) token matrix of grid ``native`` resampled to ``grid`` (bilinear,
    antialiased when shrinking), rows renormalised to sum 1."""
    if tuple(grid) == tuple(native):
        return matrix
    (nh, nw), (h, w) = native, grid
    shrink = h < nh or w < nw
    m = matrix.float().reshape(1, nh * nw, nh, nw)  # input-token axes as the image
    m = F.interpolate(m, size=(h, w), mode='bilinear', align_corners=False, antialias=shrink)
    m = m.reshape(nh, nw, h * w).permute(2, 0, 1).unsqueeze(0)  # now the output-token axes
    m = F.interpolate(m, size=(h, w), mode='bilinear', align_corners=False, antialias=shrink)
    m = m[0].permute(1, 2, 0).reshape(h * w, h * w)
    return m / m.sum(dim=1, keepdim=True)


def _check_megabytes(name: str, value, positive: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and \
        (0 < value if positive else 0 <= value) and value < math.inf
    if not ok:
        raise ValueError(f'{name} must be a {"positive" if positive else "non-negative"} '
                         f'finite number of MB, got {value!r}')


class RandomMixing(nn.Module):
    """Frozen random token mixing at any grid.

    ``image_size`` (int or (H, W)) is the input size the matrix belongs to (native grid
    ``image_size // token_stride``). ``max_matrix_mb``: the largest matrix, native or resampled
    (fp32, MB = 1e6 bytes; T tokens take 4 * T**2 bytes, e.g. 58 MB at 800x1216 in stage 3).
    ``max_cache_mb``: resampled matrices kept for repeated sizes (LRU; 0 keeps none). Under a
    tracer the resampling is part of the graph."""

    def __init__(self, dim: int, token_stride: int = 16, image_size: Union[int, Grid] = 224,
                 max_matrix_mb: float = 1024, max_cache_mb: float = 256) -> None:
        super().__init__()
        size = parse_image_size(image_size)
        if any(s % token_stride for s in size):
            raise ValueError(f'image_size {size} must be a multiple of the token stride '
                             f'{token_stride} of this stage (the grid is image_size // stride)')
        _check_megabytes('max_matrix_mb', max_matrix_mb, positive=True)
        _check_megabytes('max_cache_mb', max_cache_mb, positive=False)
        self.image_size = size
        self.token_stride = token_stride
        self.native_grid: Grid = (size[0] // token_stride, size[1] // token_stride)
        self.max_matrix_mb = float(max_matrix_mb)
        self.max_cache_mb = float(max_cache_mb)
        self._check_matrix_size(self.native_grid, 'image_size')
        n = self.native_grid[0] * self.native_grid[1]
        # As the original: softmax over each row of uniform noise, never trained.
        self.random_matrix = nn.Parameter(torch.softmax(torch.rand(n, n), dim=-1),
                                          requires_grad=False)
        self._cache: 'OrderedDict[tuple, torch.Tensor]' = OrderedDict()

    def _check_matrix_size(self, grid: Grid, cause: str) -> None:
        tokens = grid[0] * grid[1]
        megabytes = 4 * tokens ** 2 / 1e6
        if megabytes > self.max_matrix_mb:
            what = ('the native grid of image_size=' f'{self.image_size}' if cause == 'image_size'
                    else f'an input of about {grid[0] * self.token_stride}x'
                         f'{grid[1] * self.token_stride}')
            raise ValueError(
                f'random token mixing at a {grid[0]}x{grid[1]} token grid (stride '
                f'{self.token_stride}, {what}) needs a {tokens}x{tokens} matrix, '
                f'{megabytes:.0f} MB in fp32, above max_matrix_mb={self.max_matrix_mb:g}; '
                f'use a smaller {"image_size" if cause == "image_size" else "input"} or raise '
                f'max_matrix_mb (a token_mixers option, RandFormer(max_matrix_mb=...))')

    def matrix_for(self, grid: Grid, dtype: torch.dtype = None) -> torch.Tensor:
        """The mixing matrix of a runtime ``grid`` in ``dtype``: the parameter at the native
        grid, else its resampled copy (cached in eager mode)."""
        param = self.random_matrix
        dtype = dtype or param.dtype
        grid = (int(grid[0]), int(grid[1]))
        if grid == self.native_grid:
            return param if param.dtype == dtype else param.to(dtype)
        self._check_matrix_size(grid, 'input')
        if is_tracing():
            return resample_token_matrix(param, self.native_grid, grid).to(dtype)
        key = (grid, dtype)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        matrix = resample_token_matrix(param.detach(), self.native_grid, grid).to(dtype)
        budget = self.max_cache_mb * 1e6
        if matrix.numel() * matrix.element_size() <= budget:
            self._cache[key] = matrix
            while sum(m.numel() * m.element_size() for m in self._cache.values()) > budget:
                self._cache.popitem(last=False)
        return matrix

    def clear_cache(self) -> None:
        """Drops the resampled copies (done on every load and ``.to()``)."""
        self._cache.clear()

    def _apply(self, fn, *args, **kwargs):
        self.clear_cache()
        return super()._apply(fn, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        matrix = self.matrix_for((h, w), x.dtype)
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            # (B, H, W, C) in memory: tokens are rows of a (B, N, C) view, one batched GEMM.
            tokens = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
            return torch.matmul(matrix, tokens).view(b, h, w, c).permute(0, 3, 1, 2)
        # NCHW: tokens are columns of a (B, C, N) view.
        return torch.matmul(x.reshape(b, c, h * w), matrix.t()).view(b, c, h, w)

    def _load_from_state_dict(self, state_dict: Dict, prefix: str, *args, **kwargs) -> None:
        key = prefix + 'random_matrix'
        value = state_dict.get(key)
        if isinstance(value, torch.Tensor) and value.shape != self.random_matrix.shape:
            raise ValueError(self.shape_mismatch(key, tuple(value.shape)))
        self.clear_cache()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def shape_mismatch(self, key: str, shape: Tuple[int, ...]) -> str:
        """Why a checkpoint matrix of ``shape`` does not fit this mixer's native grid."""
        n = shape[0] if len(shape) == 2 and shape[0] == shape[1] else None
        side = math.isqrt(n) if n else 0
        implied = (f'{n} tokens, e.g. a {side}x{side} grid (image_size={side * self.token_stride}'
                   f' at stride {self.token_stride})' if n and side * side == n
                   else f'{n} tokens (not a square grid)' if n else 'no square token matrix')
        gh, gw = self.native_grid
        return (f'checkpoint tensor {key} has shape {tuple(shape)}: {implied}, but this mixer\'s '
                f'native grid is {gh}x{gw} = {gh * gw} tokens (image_size={self.image_size}, '
                f'stride {self.token_stride}); build the model with the image_size the '
                f'checkpoint was trained at')

    def extra_repr(self) -> str:
        gh, gw = self.native_grid
        return f'native_grid={gh}x{gw}, image_size={self.image_size}'
