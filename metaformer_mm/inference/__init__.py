"""bf16 inference for mmdet/mmseg models: ``enable_bf16_inference(model)`` for a built model,
``apply_bf16(cfg)`` for a runner config (``tools/test.py --bf16``)."""
from .bf16 import (Bf16State, bf16_state, bf16_units, cpu_bf16_flags, disable_bf16_inference,
                   enable_bf16_inference, to_fp32)
from .hook import Bf16InferenceHook, apply_bf16

__all__ = ['Bf16InferenceHook', 'Bf16State', 'apply_bf16', 'bf16_state', 'bf16_units',
           'cpu_bf16_flags', 'disable_bf16_inference', 'enable_bf16_inference', 'to_fp32']
