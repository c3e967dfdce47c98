"""Token mixers: the one part of a MetaFormer block that differs between family members.

Every mixer has the same constructor signature, ``Mixer(dim, token_stride, **options)``:
``dim`` is the stage width and ``token_stride`` the stage's stride relative to the image
(4, 8, 16, 32), which only mixers with resolution-bound weights (sMLP, random) use. All take and
return NCHW tensors of the same shape.
"""
import math
from typing import Dict, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import build_act
from .norms import build_norm
from .random_mixing import RandomMixing


class Pooling(nn.Module):
    """PoolFormer's mixer: average pooling (stride 1, padding excluded) minus the input."""

    def __init__(self, dim: int, token_stride: int = 4, pool_size: int = 3) -> None:
        super().__init__()
        if pool_size < 1 or pool_size % 2 == 0:
            raise ValueError(f'pool_size must be a positive odd number, got {pool_size}')
        self.pool_size = pool_size
        self.pool = nn.AvgPool2d(pool_size, 1, pool_size // 2, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # In place on the pooled map: no backward saves it, and one buffer is spared.
        return self.pool(x).sub_(x)


class IdentityMixer(nn.Module):
    """No token mixing at all (IdentityFormer); the block is then an MLP stack."""

    def __init__(self, dim: int, token_stride: int = 4) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Attention(nn.Module):
    """Multi-head self-attention over all tokens of the stage (any H x W).

    Keys ``qkv``/``proj`` are ``nn.Linear`` as in the originals, so checkpoints load as they are.
    """

    def __init__(self, dim: int, token_stride: int = 4, head_dim: int = 32,
                 num_heads: Optional[int] = None, qkv_bias: bool = False,
                 proj_bias: bool = False, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.num_heads = num_heads if num_heads else max(dim // head_dim, 1)
        self.attn_dim = self.num_heads * head_dim
        self.qkv = nn.Linear(dim, 3 * self.attn_dim, bias=qkv_bias)
        self.proj = nn.Linear(self.attn_dim, dim, bias=proj_bias)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop) if proj_drop > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        qkv = self.qkv(tokens).reshape(b, h * w, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        out = self.proj_drop(self.proj(out.transpose(1, 2).reshape(b, h * w, self.attn_dim)))
        return out.transpose(1, 2).reshape(b, c, h, w)


class SepConv(nn.Module):
    """Inverted separable conv (MobileNetV2 style): pointwise, act, depthwise k x k, pointwise."""

    def __init__(self, dim: int, token_stride: int = 4, expansion_ratio: float = 2,
                 act_cfg: Optional[Dict] = None, act2_cfg: Optional[Dict] = None,
                 bias: bool = False, kernel_size: int = 7) -> None:
        super().__init__()
        med = int(expansion_ratio * dim)
        self.pwconv1 = nn.Conv2d(dim, med, 1, bias=bias)
        self.act1 = build_act(act_cfg or dict(type='StarReLU'))
        self.dwconv = nn.Conv2d(med, med, kernel_size, padding=kernel_size // 2, groups=med,
                                bias=bias)
        self.act2 = build_act(act2_cfg)
        self.pwconv2 = nn.Conv2d(med, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pwconv2(self.act2(self.dwconv(self.act1(self.pwconv1(x)))))


def _axial_operator(weight: torch.Tensor, bias: torch.Tensor, length: int,
                    mode: str) -> Union[tuple, None]:
    """Adapts an n x n axial mixing matrix and its bias to ``length`` tokens.

    ``interpolate``: resample the matrix bilinearly to length x length and scale it by
    n / length, so that a constant input is mixed to the same magnitude as at the native
    size (each row of the resampled matrix sums to what a row of the original sums to);
    the bias is resampled the same way. Shrinking uses an antialiasing filter: plain
    bilinear sampling would skip most trained entries below n / 2 tokens (and break the
    gain). Exact at the native length, smooth in the length, and every token still sees
    the whole row or column.
    """
    n = weight.shape[0]
    if length == n or mode == 'window':
        return weight, bias
    w = F.interpolate(weight[None, None], size=(length, length), mode='bilinear',
                      align_corners=False, antialias=length < n)[0, 0] * (n / length)
    b = F.interpolate(bias[None, None, None], size=(1, length), mode='bilinear',
                      align_corners=False, antialias=length < n)[0, 0, 0]
    return w, b


def _mix_last_axis(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   mode: str) -> torch.Tensor:
    """Applies ``out[..., i] = sum_j weight[i, j] * x[..., j] + bias[i]`` along the last axis."""
    length = x.shape[-1]
    n = weight.shape[0]
    if mode == 'window' and length != n:
        # Non-overlapping windows of the native length; the tail window is zero-padded.
        padded = math.ceil(length / n) * n
        xw = F.pad(x, (0, padded - length)).unflatten(-1, (padded // n, n))
        out = torch.matmul(xw, weight.t()) + bias
        return out.flatten(-2)[..., :length]
    w, b = _axial_operator(weight, bias, length, mode)
    return torch.matmul(x, w.t()) + b


class SMLP(nn.Module):
    """sMLPNet's token mixer: depthwise 3x3 conv block, then the sparse (axial) MLP.

    ``BN, GELU, depthwise conv`` followed by ``BN, GELU`` and three branches, identity,
    a linear map along W shared by all rows and channels, one along H shared by all
    columns and channels, concatenated and fused by a 1x1 conv.

    The axial weights are n x n with n = ``image_size // token_stride`` (the training
    resolution). ``resize_mode`` says how they apply to other lengths:

    * ``'interpolate'`` (default): the n x n matrix and its bias are resampled to the
      runtime length and the matrix is scaled by n / L, which keeps the mixing's gain.
      It keeps the global axial receptive field that defines sMLP, is exact at the
      native size, and features change smoothly with image size.
    * ``'window'``: the original matrix is applied within non-overlapping windows of n
      tokens (the last one zero-padded). Exactly the trained operator, but tokens in
      different windows no longer interact in that layer.

    In the original code ``proj_h`` is applied to ``x.permute(0, 3, 1, 2)``, whose
    channel axis is W, so it mixes along W; ``proh_w`` mixes along H. Here they are named
    for what they mix: ``mix_w`` (original ``proj_h``) and ``mix_h`` (original ``proh_w``).
    """

    resize_modes = ('interpolate', 'window')

    def __init__(self, dim: int, token_stride: int = 4, image_size: int = 224,
                 resize_mode: str = 'interpolate', norm_cfg: Optional[Dict] = None) -> None:
        super().__init__()
        if resize_mode not in self.resize_modes:
            raise ValueError(f'resize_mode must be one of {self.resize_modes}, got {resize_mode!r}')
        if image_size % token_stride:
            raise ValueError(f'image_size {image_size} is not a multiple of the token stride '
                             f'{token_stride}')
        norm_cfg = norm_cfg or dict(type='BN')
        n = image_size // token_stride
        self.native_size = n
        self.resize_mode = resize_mode
        self.dw_norm = build_norm(norm_cfg, dim)
        self.dwconv = nn.Conv2d(dim, dim, 3, padding=1, groups=dim, bias=False)
        self.norm = build_norm(norm_cfg, dim)
        self.act = nn.GELU()
        self.mix_w_weight = nn.Parameter(torch.empty(n, n))
        self.mix_w_bias = nn.Parameter(torch.empty(n))
        self.mix_h_weight = nn.Parameter(torch.empty(n, n))
        self.mix_h_bias = nn.Parameter(torch.empty(n))
        self.fuse = nn.Conv2d(3 * dim, dim, 1, bias=False)
        self.reset_axial_parameters()

    def reset_axial_parameters(self) -> None:
        """Initialises the axial maps as ``nn.Conv2d(n, n, 1)`` would (the original's layers)."""
        bound = 1 / math.sqrt(self.native_size)
        for p in (self.mix_w_weight, self.mix_h_weight):
            nn.init.kaiming_uniform_(p, a=math.sqrt(5))
        for p in (self.mix_w_bias, self.mix_h_bias):
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dwconv(self.act(self.dw_norm(x)))
        x = self.act(self.norm(x))
        x_w = _mix_last_axis(x, self.mix_w_weight, self.mix_w_bias, self.resize_mode)
        x_h = _mix_last_axis(x.transpose(-1, -2), self.mix_h_weight, self.mix_h_bias,
                             self.resize_mode).transpose(-1, -2)
        return self.fuse(torch.cat([x, x_w, x_h], dim=1))

    def extra_repr(self) -> str:
        return f'native_size={self.native_size}, resize_mode={self.resize_mode!r}'


MIXERS = {
    'pooling': Pooling,
    'identity': IdentityMixer,
    'attention': Attention,
    'sepconv': SepConv,
    'smlp': SMLP,
    'random': RandomMixing,  # RandFormer; its own module (random_mixing.py)
}


def build_mixer(cfg: Union[str, Dict], dim: int, token_stride: int) -> nn.Module:
    """Builds a token mixer from a name (``'pooling'``) or a dict (``dict(type='pooling', pool_size=5)``)."""
    if isinstance(cfg, str):
        cfg = dict(type=cfg)
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise TypeError(f'a token mixer is a name or a dict with "type", got {cfg!r}')
    cfg = dict(cfg)
    name = cfg.pop('type')
    if name not in MIXERS:
        raise ValueError(f'unknown token mixer {name!r}; allowed: {sorted(MIXERS)}')
    return MIXERS[name](dim, token_stride, **cfg)
