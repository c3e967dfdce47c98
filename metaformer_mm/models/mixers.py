"""Token mixers: ``Mixer(dim, token_stride, **options)`` maps an NCHW tensor to one of the same
shape (``token_stride``, 4 to 32, sizes the resolution-bound weights of sMLP and random)."""
import math
from typing import Dict, Optional, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import check_int, check_number
from .layers import build_act
from .norms import build_norm
from .random_mixing import RandomMixing


class Pooling(nn.Module):
    """PoolFormer's mixer: average pooling (stride 1, padding excluded) minus the input."""

    def __init__(self, dim: int, token_stride: int = 4, pool_size: int = 3) -> None:
        super().__init__()
        check_int('pooling mixer', 'pool_size', pool_size, lo=1, odd=True)
        self.pool_size = pool_size
        self.pool = nn.AvgPool2d(pool_size, 1, pool_size // 2, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) - x


class IdentityMixer(nn.Module):
    """No token mixing (IdentityFormer)."""

    def __init__(self, dim: int, token_stride: int = 4) -> None:
        super().__init__()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


class Attention(nn.Module):
    """Multi-head self-attention over all tokens of the stage; ``qkv``/``proj`` are
    ``nn.Linear`` as in the originals, so checkpoints load as they are."""

    def __init__(self, dim: int, token_stride: int = 4, head_dim: int = 32,
                 num_heads: Optional[int] = None, qkv_bias: bool = False,
                 proj_bias: bool = False, attn_drop: float = 0.0, proj_drop: float = 0.0) -> None:
        super().__init__()
        check_int('attention mixer', 'head_dim', head_dim, lo=1)
        check_int('attention mixer', 'num_heads', num_heads, lo=1, optional=True)
        for name, value in (('attn_drop', attn_drop), ('proj_drop', proj_drop)):
            check_number('attention mixer', name, value, lo=0, hi=1, hi_open=True)
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
    """Inverted separable conv: pointwise, act, depthwise k x k, pointwise (ConvFormer)."""

    def __init__(self, dim: int, token_stride: int = 4, expansion_ratio: float = 2,
                 act_cfg: Optional[Dict] = None, act2_cfg: Optional[Dict] = None,
                 bias: bool = False, kernel_size: int = 7) -> None:
        super().__init__()
        # An even kernel would shift the map by half a pixel and change its size.
        check_int('sepconv mixer', 'kernel_size', kernel_size, lo=1, odd=True)
        check_number('sepconv mixer', 'expansion_ratio', expansion_ratio, lo=0, lo_open=True)
        if int(expansion_ratio * dim) < 1:
            check_number('sepconv mixer', 'expansion_ratio', expansion_ratio, lo=1 / dim,
                         wanted=f'at least 1/{dim} (one hidden channel of {dim})')
        med = int(expansion_ratio * dim)
        self.pwconv1 = nn.Conv2d(dim, med, 1, bias=bias)
        self.act1 = build_act(act_cfg or dict(type='StarReLU'))
        self.dwconv = nn.Conv2d(med, med, kernel_size, padding=kernel_size // 2, groups=med,
                                bias=bias)
        self.act2 = build_act(act2_cfg)
        self.pwconv2 = nn.Conv2d(med, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pwconv2(self.act2(self.dwconv(self.act1(self.pwconv1(x)))))


def _mix_last_axis(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                   mode: str) -> torch.Tensor:
    """``x @ weight.T + bias`` along the last axis, the n x n ``weight`` adapted to its
    length by ``mode`` (see ``SMLP``)."""
    length, n = x.shape[-1], weight.shape[0]
    if length == n:
        return torch.matmul(x, weight.t()) + bias
    if mode == 'window':
        # Non-overlapping windows of the native length; the tail window is zero-padded.
        padded = math.ceil(length / n) * n
        xw = F.pad(x, (0, padded - length)).unflatten(-1, (padded // n, n))
        return (torch.matmul(xw, weight.t()) + bias).flatten(-2)[..., :length]
    # Scaled by n / length so that each row keeps its sum (the mixing's gain); shrinking is
    # antialiased, as plain bilinear sampling would skip most trained entries below n / 2.
    w = F.interpolate(weight[None, None], size=(length, length), mode='bilinear',
                      align_corners=False, antialias=length < n)[0, 0] * (n / length)
    b = F.interpolate(bias[None, None, None], size=(1, length), mode='bilinear',
                      align_corners=False, antialias=length < n)[0, 0, 0]
    return torch.matmul(x, w.t()) + b


class SMLP(nn.Module):
    """sMLPNet's token mixer: ``BN, GELU, dwconv 3x3, BN, GELU``, then identity, a linear
    map along W and one along H, concatenated and fused by a 1x1 conv.

    The n x n axial weights (n = ``image_size // token_stride``) meet other lengths by
    ``resize_mode``: ``'interpolate'`` resamples them (a global field, smooth in the image size);
    ``'window'`` applies them in windows of n tokens (exact, windows do not interact). The
    original's ``proj_h`` acts on W and is ``mix_w`` here; its ``proh_w`` is ``mix_h``."""

    resize_modes = ('interpolate', 'window')

    def __init__(self, dim: int, token_stride: int = 4, image_size: int = 224,
                 resize_mode: str = 'interpolate', norm_cfg: Optional[Dict] = None) -> None:
        super().__init__()
        check_int('smlp mixer', 'image_size', image_size, lo=1)
        if resize_mode not in self.resize_modes:
            raise ValueError(f'resize_mode must be one of {self.resize_modes}, got {resize_mode!r}')
        if image_size % token_stride:
            raise ValueError(f'image_size {image_size} is not a multiple of the token stride '
                             f'{token_stride}')
        norm_cfg = norm_cfg or dict(type='BN')
        self.native_size = n = image_size // token_stride
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
        # Initialised as the original's ``nn.Conv2d(n, n, 1)`` layers are.
        for w, b in ((self.mix_w_weight, self.mix_w_bias), (self.mix_h_weight, self.mix_h_bias)):
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            nn.init.uniform_(b, -1 / math.sqrt(n), 1 / math.sqrt(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dwconv(self.act(self.dw_norm(x)))
        x = self.act(self.norm(x))
        x_w = _mix_last_axis(x, self.mix_w_weight, self.mix_w_bias, self.resize_mode)
        x_h = _mix_last_axis(x.transpose(-1, -2), self.mix_h_weight, self.mix_h_bias,
                             self.resize_mode).transpose(-1, -2)
        return self.fuse(torch.cat([x, x_w, x_h], dim=1))

    def extra_repr(self) -> str:
        return f'native_size={self.native_size}, resize_mode={self.resize_mode!r}'


MIXERS = {'pooling': Pooling, 'identity': IdentityMixer, 'attention': Attention,
          'sepconv': SepConv, 'smlp': SMLP, 'random': RandomMixing}


def build_mixer(cfg: Union[str, Dict], dim: int, token_stride: int) -> nn.Module:
    """A token mixer from a name (``'pooling'``) or a dict with ``type``."""
    cfg = dict(type=cfg) if isinstance(cfg, str) else cfg
    if not isinstance(cfg, dict) or 'type' not in cfg:
        raise TypeError(f'a token mixer is a name or a dict with "type", got {cfg!r}')
    name, options = cfg['type'], {k: v for k, v in cfg.items() if k != 'type'}
    if name not in MIXERS:
        raise ValueError(f'unknown token mixer {name!r}; allowed: {sorted(MIXERS)}')
    return MIXERS[name](dim, token_stride, **options)
