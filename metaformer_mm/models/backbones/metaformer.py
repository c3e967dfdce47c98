"""The MetaFormer backbone: one class for PoolFormer, the baselines family and sMLPNet.

A stem, four stages (downsampling, then blocks) and either four output norms (``fork_feat``)
or the classifier. Each block is

    x = res_scale1(x) + drop_path(layer_scale1(token_mixer(norm1(x))))
    x = res_scale2(x) + drop_path(layer_scale2(mlp(norm2(x))))

Members differ only in their presets (``presets.py``). State-dict keys follow timm's
``metaformer.py``, plus ``out_norms.N``."""
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.utils.checkpoint as cp
from mmengine.model import BaseModule
from torch.nn.modules.batchnorm import _BatchNorm

from ...registry import register_backbone
from ..layers import DropPath, Downsample, Mlp, Scale, build_act
from ..mixers import SMLP, build_mixer
from ..norms import build_norm
from .arch import MIXER_OPTIONS, NUM_STAGES, check_arguments, resolve_arch
from .presets import ARCH_SETTINGS


def _per_stage(value, name: str) -> List:
    """A single value for all four stages, or a checked list of four."""
    if isinstance(value, (list, tuple)):
        if len(value) != NUM_STAGES:
            raise ValueError(f'{name} must have {NUM_STAGES} entries (one per stage) or be a '
                             f'single value, got {len(value)}: {value!r}')
        return list(value)
    return [value] * NUM_STAGES


class MetaFormerBlock(nn.Module):
    """Token mixing and channel MLP, each in a scaled residual branch."""

    def __init__(self, dim: int, token_mixer: nn.Module, mlp: nn.Module, norm_cfg: Dict,
                 drop_path: float = 0.0, layer_scale_init_value: Optional[float] = None,
                 res_scale_init_value: Optional[float] = None,
                 norm1_cfg: Union[Dict, None, str] = 'same') -> None:
        super().__init__()
        self.norm1 = build_norm(norm_cfg if norm1_cfg == 'same' else norm1_cfg, dim)
        self.token_mixer = token_mixer
        self.drop_path1 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale1 = self._scale(dim, layer_scale_init_value)
        self.res_scale1 = self._scale(dim, res_scale_init_value)
        self.norm2 = build_norm(norm_cfg, dim)
        self.mlp = mlp
        self.drop_path2 = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.layer_scale2 = self._scale(dim, layer_scale_init_value)
        self.res_scale2 = self._scale(dim, res_scale_init_value)

    @staticmethod
    def _scale(dim: int, init_value: Optional[float]) -> nn.Module:
        return Scale(dim, init_value) if init_value is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.res_scale1(x) + self.drop_path1(self.layer_scale1(self.token_mixer(self.norm1(x))))
        x = self.res_scale2(x) + self.drop_path2(self.layer_scale2(self.mlp(self.norm2(x))))
        return x


class MetaFormerStage(nn.Module):
    """Downsampling (identity in stage 0: the stem is outside) and blocks."""

    def __init__(self, downsample: nn.Module, blocks: List[nn.Module]) -> None:
        super().__init__()
        self.downsample = downsample
        self.blocks = nn.Sequential(*blocks)


class MlpHead(nn.Module):
    """The baselines' MLP classifier: fc, SquaredReLU, LayerNorm, fc."""

    def __init__(self, dim: int, num_classes: int, mlp_ratio: float = 4) -> None:
        super().__init__()
        hidden = int(mlp_ratio * dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = build_act(dict(type='SquaredReLU'))
        self.norm = nn.LayerNorm(hidden)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(self.act(self.fc1(x))))


class ClassifierHead(nn.Module):
    """Final norm, global average pooling and classifier (only without ``fork_feat``);
    PoolFormer and sMLPNet normalize before pooling, the baselines after."""

    def __init__(self, dim: int, num_classes: int, norm_cfg: Dict, pool_first: bool,
                 mlp: bool) -> None:
        super().__init__()
        self.pool_first = pool_first
        self.norm = build_norm(norm_cfg, dim)
        self.fc = MlpHead(dim, num_classes) if mlp else nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(x.mean((2, 3))) if self.pool_first else self.norm(x).mean((2, 3))
        return self.fc(x)


@register_backbone
class MetaFormer(BaseModule):
    """MetaFormer backbone for mmdet/mmseg (``fork_feat=True``) or classification.

    ``arch`` is a preset name or a dict of ``ARCH_KEYS`` (optionally ``base=PRESET``); the other
    arguments are mmpretrain's (README "Use a backbone"). ``kernels``: ``'reference'`` (the plain
    forward), ``'auto'``, ``'aten'``, ``'onednn'`` or ``'deploy'`` (``metaformer_mm.accel``; plain
    under ``torch.compile`` and ONNX export). ``strict_load=False`` allows partial loads.
    ``arch_overrides``: ``ARCH_KEYS`` and ``MIXER_OPTIONS`` (one no mixer takes is refused)."""

    # A family class (``families.py``) builds its table's presets only, and resolves short
    # names such as 's12' to f'{arch_prefix}s12'.
    arch_prefix, default_arch = '', 'poolformer_s12'
    arch_settings: Dict[str, Dict] = ARCH_SETTINGS
    # Installs a ``kernels`` choice on a model: registered by the acceleration layer
    # (``metaformer_mm.accel``, imported with the package), which imports this module; the
    # model itself only has its plain forward.
    kernel_installer: Optional[Callable[['MetaFormer', str], None]] = None

    def __init__(self, arch: Union[str, Dict, None] = None, in_channels: int = 3,
                 fork_feat: bool = True, out_indices: Sequence[int] = (0, 1, 2, 3),
                 frozen_stages: int = -1, norm_eval: bool = False, with_cp: bool = False,
                 drop_path_rate: float = 0.0, num_classes: int = 1000, kernels: str = 'auto',
                 strict_load: bool = True,
                 init_cfg: Optional[Union[Dict, List[Dict]]] = None, **arch_overrides) -> None:
        super().__init__(init_cfg=init_cfg)
        self.strict_load = strict_load
        settings = resolve_arch(type(self), self.default_arch if arch is None else arch,
                                arch_overrides)
        self.out_indices = check_arguments(
            type(self), settings, in_channels=in_channels, fork_feat=fork_feat,
            out_indices=out_indices, frozen_stages=frozen_stages, norm_eval=norm_eval,
            with_cp=with_cp, drop_path_rate=drop_path_rate, num_classes=num_classes,
            strict_load=strict_load, init_cfg=init_cfg)
        depths, dims = list(settings['depths']), list(settings['dims'])
        self.depths, self.dims = depths, dims
        self.fork_feat = fork_feat
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp

        mixers = _per_stage(settings['token_mixers'], 'token_mixers')
        mlp_ratios = _per_stage(settings['mlp_ratios'], 'mlp_ratios')
        res_scales = _per_stage(settings.get('res_scale_init_values'), 'res_scale_init_values')
        ls_init = settings.get('layer_scale_init_value')

        self.stem = Downsample(in_channels, dims[0], **settings['stem'])
        strides = [settings['stem']['stride'] * 2 ** i for i in range(NUM_STAGES)]
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        stages, cursor = [], 0
        for i in range(NUM_STAGES):
            down = (Downsample(dims[i - 1], dims[i], **settings['downsample'])
                    if i > 0 else nn.Identity())
            mixer_cfg = mixers[i] if isinstance(mixers[i], dict) else dict(type=mixers[i])
            mixer_cfg = dict(mixer_cfg, **{
                key: settings[key] for key, types in MIXER_OPTIONS.items()
                if settings.get(key) is not None and mixer_cfg.get('type') in types})
            blocks = [
                MetaFormerBlock(
                    dims[i],
                    token_mixer=build_mixer(mixer_cfg, dims[i], strides[i]),
                    mlp=Mlp(dims[i], mlp_ratios[i], settings['act_cfg'], settings['mlp_bias']),
                    norm_cfg=settings['norm_cfg'], drop_path=dpr[cursor + j],
                    layer_scale_init_value=ls_init, res_scale_init_value=res_scales[i],
                    norm1_cfg=settings.get('norm1_cfg', 'same'))
                for j in range(depths[i])
            ]
            cursor += depths[i]
            stages.append(MetaFormerStage(down, blocks))
        self.stages = nn.ModuleList(stages)
        # The activations' layout: channels-last makes each 1x1 conv one GEMM on the
        # (N*H*W, C) view; a mixer working along H and W (sMLP) keeps NCHW.
        self.memory_format = (torch.contiguous_format
                              if any(isinstance(m, SMLP) for m in self.stages.modules())
                              else torch.channels_last)

        if fork_feat:
            self.out_norms = nn.ModuleDict({
                str(i): build_norm(settings['out_norm_cfg'], dims[i]) for i in self.out_indices})
        else:
            self.head = ClassifierHead(dims[-1], num_classes, **settings['head'])
        self._freeze_stages()
        self.set_kernels(kernels)

    def _check_input(self, x: torch.Tensor) -> None:
        in_channels = self.stem.conv.in_channels
        if x.dim() != 4 or x.shape[1] != in_channels:
            raise ValueError(f'expected an input of shape (N, {in_channels}, H, W), '
                             f'got {tuple(x.shape)}')

    def forward_stages(self, x: torch.Tensor, last: int = NUM_STAGES - 1) -> List[torch.Tensor]:
        """The raw (un-normalized) outputs of stages 0..``last``."""
        self._check_input(x)
        x = self.stem(x.contiguous(memory_format=self.memory_format))
        outs = []
        for stage in self.stages[:last + 1]:
            x = stage.downsample(x)
            if self.with_cp and self.training and torch.is_grad_enabled():
                for block in stage.blocks:
                    x = cp.checkpoint(block, x, use_reentrant=False)
            else:
                x = stage.blocks(x)
            outs.append(x)
        return outs

    def forward(self, x: torch.Tensor) -> Union[Tuple[torch.Tensor, ...], torch.Tensor]:
        if not self.fork_feat:
            return self.head(self.forward_stages(x)[-1])
        stage_outs = self.forward_stages(x, last=max(self.out_indices))
        # The maps leave in the usual contiguous NCHW layout, whatever the necks expect.
        return tuple(self.out_norms[str(i)](stage_outs[i]).contiguous()
                     for i in self.out_indices)

    def set_kernels(self, kernels: str) -> 'MetaFormer':
        """Chooses how blocks are computed (see ``kernels``); returns self."""
        if self.kernel_installer is not None:
            type(self).kernel_installer(self, kernels)
        elif kernels != 'reference':
            raise RuntimeError(f'kernels={kernels!r} needs the acceleration layer: '
                               f'import metaformer_mm (or use kernels="reference")')
        self.kernels = kernels
        return self

    def switch_to_deploy(self, enable: bool = True) -> 'MetaFormer':
        """``set_kernels('deploy')`` (``'auto'`` with ``enable=False``), for mmcv-style code."""
        return self.set_kernels('deploy' if enable else 'auto')

    def _frozen_modules(self) -> List[nn.Module]:
        if self.frozen_stages < 0:
            return []
        modules = [self.stem]
        for i in range(self.frozen_stages):
            modules.append(self.stages[i])
            if self.fork_feat and str(i) in self.out_norms:
                modules.append(self.out_norms[str(i)])
        return modules

    def _freeze_stages(self) -> None:
        for module in self._frozen_modules():
            module.eval()
            for param in module.parameters():
                param.requires_grad = False

    def train(self, mode: bool = True) -> 'MetaFormer':
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for module in self.modules():
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def init_weights(self) -> None:
        """Loads ``init_cfg`` weights in any layout, or initialises like the originals."""
        if isinstance(self.init_cfg, dict) and self.init_cfg.get('type') == 'Pretrained':
            from ...checkpoint import load_pretrained
            load_pretrained(self, self.init_cfg['checkpoint'],
                            prefix=self.init_cfg.get('prefix'),
                            map_location=self.init_cfg.get('map_location', 'cpu'))
            self._is_init = True
            return
        if self.init_cfg is None:
            for module in self.modules():
                if isinstance(module, (nn.Linear, nn.Conv2d)):
                    nn.init.trunc_normal_(module.weight, std=0.02)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
            self._is_init = True
            return
        super().init_weights()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        """Converts foreign layouts and refuses misfits in every load."""
        from ...checkpoint import convert_backbone_keys
        convert_backbone_keys(self, state_dict, prefix, strict=strict)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

