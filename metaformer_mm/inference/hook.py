"""The config-level bf16 switch: :func:`apply_bf16` and the hook it adds.

``apply_bf16(cfg)`` sets mmengine's own switch, ``test_cfg.fp16=True`` (and ``val_cfg``'s),
which on CPU is bf16 autocast (mmengine 0.10.7 ``runner.amp.autocast``: CPU autocast with
``dtype=None`` is bfloat16), around each test/val step, and adds
``dict(type='Bf16InferenceHook')`` to ``custom_hooks``. That autocast alone would reach mmcv's
NMS/RoIAlign with bf16 tensors and crash; the hook applies
:func:`~metaformer_mm.inference.bf16.enable_bf16_inference` to the runner's model before
testing or validating (post-processing in fp32, channels-last, fp32 where the CPU has no bf16
units) and undoes it after validation, so training continues unchanged.
"""
from typing import Any, Dict, Optional, Union

from mmengine.config import Config, ConfigDict
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from ..engine.guard import runner_model
from .bf16 import bf16_state, disable_bf16_inference, enable_bf16_inference

__all__ = ['Bf16InferenceHook', 'apply_bf16']


@HOOKS.register_module()
class Bf16InferenceHook(Hook):
    """Turns bf16 inference on for the runner's model while it tests or validates.

    Args:
        channels_last, fp32_classifier, force: passed to ``enable_bf16_inference``.
    """
    priority = 'VERY_LOW'  # after hooks that may swap weights in before_val (e.g. EMA)

    def __init__(self, channels_last: bool = True, fp32_classifier: bool = True,
                 force: bool = False) -> None:
        self.options = dict(channels_last=channels_last, fp32_classifier=fp32_classifier,
                            force=force)

    def before_test(self, runner: Any) -> None:
        enable_bf16_inference(runner_model(runner), **self.options)

    def before_val(self, runner: Any) -> None:
        enable_bf16_inference(runner_model(runner), **self.options)

    def _finish(self, runner: Any) -> None:
        model = runner_model(runner)
        state = bf16_state(model)
        if state is not None:
            runner.logger.info(f'bf16 inference: {state.calls["bf16"]} steps in bf16, '
                               f'{state.calls["fp32"]} in fp32'
                               + (f' (fell back: {state.failed})' if state.failed else ''))
        disable_bf16_inference(model)

    def after_val(self, runner: Any) -> None:
        self._finish(runner)

    def after_test(self, runner: Any) -> None:
        self._finish(runner)


def apply_bf16(cfg: Union[Config, Dict], force: bool = False,
               hook: Optional[Dict] = None) -> Union[Config, Dict]:
    """Switches a runner config to bf16 inference in place (see the module docstring);
    returns it. ``force`` runs emulated bf16 on CPUs without bf16 units; ``hook`` overrides
    the hook's other arguments. Idempotent."""
    if not isinstance(cfg, (Config, dict)):
        raise TypeError(f'cfg must be an mmengine Config or a dict, got {type(cfg).__name__}')
    for key in ('test_cfg', 'val_cfg'):
        loop = cfg.get(key)
        if loop is None and key == 'val_cfg':
            continue  # no validation configured: nothing to switch
        if loop is None:
            loop = {}
        if not isinstance(loop, dict):
            raise TypeError(f'cfg.{key} must be a dict, got {type(loop).__name__}')
        loop = ConfigDict(loop)
        loop['fp16'] = True  # mmengine's switch: bf16 autocast on CPU, fp16 on CUDA
        cfg[key] = loop
    custom = list(cfg.get('custom_hooks') or [])
    if not any(h.get('type') in ('Bf16InferenceHook', Bf16InferenceHook) for h in custom):
        custom.append(dict(type='Bf16InferenceHook', force=force, **(hook or {})))
    cfg['custom_hooks'] = custom
    return cfg
