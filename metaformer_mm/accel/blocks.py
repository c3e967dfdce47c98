"""The eager kernels as classes swapped into a model's blocks by ``install``, in place (as
``torch.nn.utils.parametrize`` does: parameters, keys and ``isinstance`` stay the model's).
Both step aside for the plain forward wherever the model is traced, and
``AcceleratedBlock`` also in training under autocast."""
import torch
import torch.nn as nn

from ..models.backbones.metaformer import MetaFormer, MetaFormerBlock
from ..models.layers import drop_path_factor, is_tracing
from ..models.mixers import Pooling
from ..models.random_mixing import RandomMixing
from . import ops
from .elementwise import fused_residual, scale_vector
from .folded import folded_block, stage_is_foldable
from .mlp import is_plain_mlp, mlp_forward

KERNELS = ('auto', 'aten', 'onednn', 'reference', 'deploy')

_compiling = getattr(torch.compiler, 'is_compiling', None) or torch._dynamo.is_compiling


class AcceleratedBlock(MetaFormerBlock):
    """A ``MetaFormerBlock`` on the eager kernels; ``gemm`` is ``'onednn'`` or ``'aten'``."""

    gemm = 'aten'

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if is_tracing():
            return super().forward(x)
        branch = self.token_mixer(self.norm1(x))
        # A mixer's fresh result that no backward saved (pooling, random mixing) may take the
        # residual update.
        fresh = isinstance(self.token_mixer, (Pooling, RandomMixing))
        x = fused_residual(x, branch, scale_vector(self.layer_scale1),
                           scale_vector(self.res_scale1), drop_path_factor(self.drop_path1, x),
                           branch_is_temporary=fresh)
        z = self.norm2(x)
        ls2, rs2 = scale_vector(self.layer_scale2), scale_vector(self.res_scale2)
        factor = drop_path_factor(self.drop_path2, x)
        if not is_plain_mlp(self.mlp):
            return fused_residual(x, self.mlp(z), ls2, rs2, factor, branch_is_temporary=False)
        onednn = self.gemm == 'onednn'
        if factor is not None:
            return fused_residual(x, mlp_forward(self.mlp, z, out_scale=ls2, onednn=onednn),
                                  None, rs2, factor, branch_is_temporary=True)
        # Without autograd the result is added in place onto ``x``, a tensor this block made.
        return mlp_forward(self.mlp, z, out_scale=ls2, residual=x, res_scale=rs2, out=x,
                           onednn=onednn)


class FoldedBlocks(nn.Sequential):
    """A stage's blocks in the folded formulation in ``eval()`` without autograd or autocast
    (and in ONNX export); elsewhere the blocks themselves."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (self.training or torch.is_grad_enabled() or ops.autocast_enabled()
                or _compiling()):
            return super().forward(x)
        for block in self:
            x = folded_block(block, x)
        return x


def check_kernels(kernels: str) -> str:
    """``kernels`` itself, or a ValueError naming the allowed values."""
    if kernels not in KERNELS:
        raise ValueError(f'kernels must be one of {list(KERNELS)}, got {kernels!r}')
    if kernels == 'onednn' and not ops.available('onednn_linear'):
        raise ValueError("kernels='onednn': this torch build has no working oneDNN fused "
                         "linear; use 'auto' or 'aten'")
    return kernels


def install(model: MetaFormer, kernels: str) -> None:
    """Puts ``kernels`` into ``model``'s blocks, in place. The operator probes run here, so
    that no forward runs one."""
    check_kernels(kernels)
    for name in ('onednn_linear', 'onednn_linear_bf16', 'aten_gelu'):
        ops.available(name)
    gemm = ops.default_gemm() if kernels in ('auto', 'deploy') else kernels
    for stage in model.stages:
        for block in stage.blocks:
            if type(block) not in (MetaFormerBlock, AcceleratedBlock):
                continue  # a user's own block class keeps its forward
            if kernels == 'reference':
                block.__class__ = MetaFormerBlock
                block.__dict__.pop('gemm', None)
            else:
                block.__class__ = AcceleratedBlock
                block.gemm = gemm
        if type(stage.blocks) in (nn.Sequential, FoldedBlocks):
            fold = kernels == 'deploy' and stage_is_foldable(stage.blocks)
            stage.blocks.__class__ = FoldedBlocks if fold else nn.Sequential
