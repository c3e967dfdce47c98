"""``CPUAmpOptimWrapper``: mixed precision training on CPU (what ``tools/train.py --amp``
selects on a machine without CUDA). Registered in mmengine's ``OPTIM_WRAPPERS`` by
``import metaformer_mm``, so a config dumped by an ``--amp`` run builds anywhere."""
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn as nn
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS


@OPTIM_WRAPPERS.register_module()
class CPUAmpOptimWrapper(OptimWrapper):
    """Mixed precision on CPU: bfloat16 autocast in the forward pass.

    mmengine's ``AmpOptimWrapper`` needs a GPU (its fp16 loss scaling is CUDA-only);
    bfloat16 has float32's exponent range, so no loss scaling is needed.
    """

    def __init__(self, dtype: str = 'bfloat16', **kwargs) -> None:
        super().__init__(**kwargs)
        self.cast_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype

    @contextmanager
    def optim_context(self, model: nn.Module) -> Iterator[None]:
        with super().optim_context(model), torch.autocast('cpu', dtype=self.cast_dtype):
            yield
