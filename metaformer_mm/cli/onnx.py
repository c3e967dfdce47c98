"""ONNX export of a MetaFormer backbone (tools/deploy/export_onnx.py and the benchmark)."""
import inspect
import warnings
from typing import List, Optional, Tuple

import torch
import torch.nn as nn

from ..accel import use_kernels
from ..models.mixers import SMLP
from ..models.random_mixing import RandomMixing


def fixed_size_reason(model: nn.Module) -> Optional[str]:
    """Why an export of ``model`` holds only for its traced size (sMLP and random mixing
    resample weights with Python-side size logic), or None."""
    kinds = sorted({'sMLP axial weights' if isinstance(m, SMLP) else 'random token mixing'
                    for m in model.modules() if isinstance(m, (SMLP, RandomMixing))})
    return None if not kinds else (f'{" and ".join(kinds)} resampled for the traced size; '
                                   f'export once per input size')


def export_onnx(model: nn.Module, path: str, shape: Tuple[int, int] = (224, 224),
                batch: int = 1, opset: int = 17, deploy: bool = False) -> List[str]:
    """Exports a MetaFormer backbone to ONNX, batch, height and width dynamic (height and
    width fixed where ``fixed_size_reason`` says); ``deploy=True`` exports the folded formulation.
    Returns the output names."""
    model.eval()
    x = torch.randn(batch, model.stem.conv.in_channels, *shape)
    names = [f'stage{i}' for i in model.out_indices] if model.fork_feat else ['logits']
    spatial = fixed_size_reason(model) is None
    axes = {'input': {0: 'batch', 2: 'height', 3: 'width'} if spatial else {0: 'batch'}}
    for name in names:
        axes[name] = {0: 'batch', 2: f'{name}_height', 3: f'{name}_width'} \
            if model.fork_feat and spatial else {0: 'batch'}
    # The TorchScript-based exporter: it needs no onnxscript and keeps dynamic axes. The
    # folded weights are computed in the graph from the parameters; the exporter's constant
    # folding mis-orders them when parameters repeat (fresh norms), so onnxruntime folds them
    # when it loads the model instead.
    extra = {'dynamo': False} if 'dynamo' in inspect.signature(torch.onnx.export).parameters \
        else {}
    with use_kernels(model, 'deploy' if deploy else 'auto'), warnings.catch_warnings(), \
            torch.no_grad():
        # The tracer warns about Python-level shape checks; they hold for every input size.
        warnings.simplefilter('ignore')
        torch.onnx.export(model, (x,), path, input_names=['input'], output_names=names,
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=not deploy,
                          **extra)
    return names
