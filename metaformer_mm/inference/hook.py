"""The config-level bf16 switch: :func:`apply_bf16` and ``Bf16InferenceHook``, which applies
``enable_bf16_inference`` while the runner tests or validates (autocast alone would crash mmcv's
NMS/RoIAlign) and undoes it after, so training continues unchanged."""
from typing import Any, Dict, Optional, Union

from mmengine.config import Config, ConfigDict
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ..engine.guard import runner_model
from .bf16 import bf16_state, disable_bf16_inference, enable_bf16_inference


@HOOKS.register_module()
class Bf16InferenceHook(Hook):
    """bf16 inference for the runner's model while it tests or validates (arguments:
    ``enable_bf16_inference``'s)."""
    priority = 'VERY_LOW'  # after hooks that may swap weights in before_val (e.g. EMA)

    def __init__(self, channels_last: bool = True, fp32_classifier: bool = True,
                 force: bool = False) -> None:
        self.options = dict(channels_last=channels_last, fp32_classifier=fp32_classifier,
                            force=force)

    def before_test(self, runner: Any) -> None:
        enable_bf16_inference(runner_model(runner), **self.options)

    before_val = before_test

    def after_test(self, runner: Any) -> None:
        model = runner_model(runner)
        state = bf16_state(model)
        if state is not None:
            runner.logger.info(f'bf16 inference: {state.calls["bf16"]} steps in bf16, '
                               f'{state.calls["fp32"]} in fp32'
                               + (f' (fell back: {state.failed})' if state.failed else ''))
        disable_bf16_inference(model)

    after_val = after_test


def apply_bf16(cfg: Union[Config, Dict], force: bool = False,
               hook: Optional[Dict] = None) -> Union[Config, Dict]:
    """Switches a runner config to bf16 inference in place; returns it. ``force``: emulated
    bf16 without bf16 units; ``hook``: the hook's other arguments. Idempotent."""
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
