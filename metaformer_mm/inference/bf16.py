"""bf16 inference for whole mmdet/mmseg models: the network in bf16, post-processing in fp32.

bf16 autocast around a whole predict step (``test_cfg.fp16=True`` on CPU) reaches mmcv's CPU
NMS and RoIAlign, which have no bf16 kernels. :func:`enable_bf16_inference` changes a built
model instance (no library code is patched): its predict ``forward`` runs under bf16
autocast with channels-last neck and head weights; every ``predict_by_feat``, the RoI
extractors (fp32 NCHW inputs), mmseg's ``postprocess_result`` and optionally ``cls_seg`` run
in fp32; a bf16 failure elsewhere is logged once and the model falls back to fp32 for good.
Without bf16 units it runs fp32 (``force=True`` emulates bf16 anyway)."""
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from mmengine.logging import MMLogger
from torch import nn

#: Methods that run in fp32, looked up on every submodule of the model.
FP32_METHODS = ('predict_by_feat', 'postprocess_result')
_STATE = '_bf16_inference_state'
_SAID: set = set()  # (reason, force) already reported


def cpu_bf16_flags() -> Tuple[str, ...]:
    """The CPU's bf16 unit flags (``amx_bf16``, ``avx512_bf16``), empty if none."""
    flags = []
    checks = (('amx_bf16', '_is_amx_tile_supported'), ('avx512_bf16', '_is_avx512_bf16_supported'))
    try:
        with open('/proc/cpuinfo') as f:
            words = set(f.read().split())
        flags = [name for name, _ in checks if name in words]
    except OSError:  # not Linux: ask torch's own CPU probe
        flags = [name for name, probe in checks if getattr(torch.cpu, probe, lambda: False)()]
    return tuple(flags)


def bf16_units(device: torch.device) -> Tuple[bool, str]:
    """Whether ``device`` computes bf16 natively, and a short reason."""
    if device.type == 'cuda':
        ok = torch.cuda.is_bf16_supported()
        return ok, f'{torch.cuda.get_device_name(device)} ({"" if ok else "no "}bf16)'
    if device.type == 'cpu':
        flags = cpu_bf16_flags()
        return bool(flags), f'CPU flags {"+".join(flags)}' if flags else \
            'CPU without avx512_bf16/amx_bf16'
    return False, f'device {device.type}'


def to_fp32(obj: Any, contiguous: bool = False) -> Any:
    """``obj`` with every bf16/fp16 tensor cast to float32 (containers and mmengine data
    elements walked); ``contiguous=True`` also makes each tensor NCHW-contiguous."""
    if isinstance(obj, torch.Tensor):
        if obj.dtype in (torch.bfloat16, torch.float16):
            obj = obj.float()
        return obj.contiguous() if contiguous else obj
    if isinstance(obj, (list, tuple)):
        items = [to_fp32(v, contiguous) for v in obj]
        if all(a is b for a, b in zip(items, obj)):
            return obj
        if isinstance(obj, tuple) and hasattr(obj, '_fields'):  # namedtuple
            return type(obj)(*items)
        return type(obj)(items)
    if isinstance(obj, dict):  # configs (ConfigDict) come back as they are
        cast = {k: to_fp32(v, contiguous) for k, v in obj.items()}
        if all(cast[k] is v for k, v in obj.items()):
            return obj
        return cast if type(obj) is dict else type(obj)(cast)
    if hasattr(obj, 'all_items') and hasattr(obj, 'new'):  # mmengine BaseDataElement
        cast = {k: to_fp32(v) for k, v in obj.items()}
        changed = {k: v for k, v in cast.items() if v is not obj.get(k)}
        if not changed:
            return obj
        new = obj.new()  # shallow copy: the caller's element keeps its own fields
        for key, value in changed.items():
            setattr(new, key, value)
        return new
    return obj


def _device_type(module: nn.Module) -> str:
    param = next(module.parameters(), None)
    return param.device.type if param is not None else 'cpu'


class Fp32Call:
    """Replaces ``module.<name>``: the original with autocast off and float32 inputs. A class,
    not a closure, so that ``deepcopy``/pickling keeps it bound to the copy."""

    def __init__(self, module: nn.Module, name: str, original: Optional[Callable],
                 contiguous: bool = False) -> None:
        self.module, self.name, self.original = module, name, original
        self.contiguous = contiguous

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        func = self.original or getattr(type(self.module), self.name).__get__(self.module)
        with torch.autocast(_device_type(self.module), enabled=False):
            return func(*to_fp32(args, self.contiguous), **to_fp32(kwargs, self.contiguous))


@dataclass
class Bf16State:
    """What :func:`enable_bf16_inference` did to a model (kept on it)."""
    device_type: str
    use_bf16: bool
    reason: str
    channels_last: List[str] = field(default_factory=list)
    fp32_parts: List[str] = field(default_factory=list)
    failed: Optional[str] = None  # the bf16 error that switched the model to fp32
    patched: List[Tuple[nn.Module, str, Any]] = field(default_factory=list, repr=False)
    calls: Dict[str, int] = field(default_factory=lambda: {'bf16': 0, 'fp32': 0})


class Bf16Forward:
    """The model's ``forward`` while bf16 inference is on."""

    def __init__(self, model: nn.Module, original: Optional[Callable]) -> None:
        self.model, self.original = model, original

    def _call(self, args: tuple, kwargs: dict) -> Any:
        func = self.original or type(self.model).forward.__get__(self.model)
        return func(*args, **kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        state: Bf16State = getattr(self.model, _STATE)
        if self.model.training or kwargs.get('mode') == 'loss':
            return self._call(args, kwargs)  # training keeps whatever precision it runs in
        if state.use_bf16 and state.failed is None:
            try:
                with torch.autocast(state.device_type, dtype=torch.bfloat16):
                    out = self._call(args, kwargs)
                state.calls['bf16'] += 1
                return out
            except (RuntimeError, NotImplementedError) as err:
                text = str(err)
                if not any(s in text for s in ('BFloat16', 'bfloat16', 'Half', 'scalar type')):
                    raise
                state.failed = text.splitlines()[0][:300]
                MMLogger.get_current_instance().warning(
                    f'bf16 inference: a part of {type(self.model).__name__} has no bf16 kernel '
                    f'({state.failed}); this model runs in fp32 from now on')
        with torch.autocast(state.device_type, enabled=False):
            out = self._call(args, kwargs)
        state.calls['fp32'] += 1
        return out


def _fp32_targets(model: nn.Module, classifier: bool) -> List[Tuple[str, nn.Module, str]]:
    """(qualified name, module, method) of every fp32 island in ``model``."""
    targets = []
    for name, module in model.named_modules():
        for method in FP32_METHODS:
            if callable(getattr(module, method, None)):
                targets.append((name, module, method))
        # mmdet's BaseRoIExtractor (duck-typed: mmseg-only installs have no mmdet). mmcv's
        # RoIAlign has no bf16 CPU kernel and reads its input as NCHW whatever its strides
        # (channels-last features give wrong values), hence fp32 and contiguous.
        if _is_roi_extractor(module):
            targets.append((name, module, 'forward'))
        if classifier and callable(getattr(module, 'cls_seg', None)):
            targets.append((name, module, 'cls_seg'))
    return targets


def _is_roi_extractor(module: nn.Module) -> bool:
    return hasattr(module, 'roi_layers') and hasattr(module, 'featmap_strides')


def _raw_layout_ops(module: nn.Module) -> List[str]:
    """mmcv ops fed by the network (RoI extractors, given contiguous inputs, excepted):
    they index raw NCHW memory, so channels-last input breaks them."""
    found, skip = [], set()
    for name, sub in module.named_modules():
        if any(name.startswith(prefix) for prefix in skip):
            continue
        if _is_roi_extractor(sub):
            skip.add(name + '.' if name else '')
        elif type(sub).__module__.startswith('mmcv.ops'):
            found.append(f'{name}:{type(sub).__name__}')
    return found


def _wrap(state: Bf16State, module: nn.Module, method: str, wrapper: Any) -> None:
    previous = module.__dict__.get(method)  # an instance attribute set by someone else
    state.patched.append((module, method, previous))
    setattr(module, method, wrapper)


def enable_bf16_inference(model: nn.Module, channels_last: bool = True,
                          fp32_classifier: bool = True, force: bool = False) -> nn.Module:
    """Makes ``model`` (a built detector or segmentor) infer in bf16 with fp32
    post-processing; returns it. Idempotent; undone by :func:`disable_bf16_inference`.

    ``channels_last``: the neck's and heads' 4-D weights channels-last (our backbones choose
    their own layout). ``fp32_classifier``: mmseg's ``cls_seg`` in fp32 (keeps the label map
    closest to fp32). ``force``: bf16 even where it is emulated."""
    if not isinstance(model, nn.Module):
        raise TypeError(f'model must be an nn.Module, got {type(model).__name__}')
    if hasattr(model, _STATE):
        return model
    device_type = _device_type(model)
    units, reason = bf16_units(torch.device(device_type))
    state = Bf16State(device_type, units or force, reason)
    logger = MMLogger.get_current_instance()
    if not units and (reason, force) not in _SAID:  # once per process, not per validation
        _SAID.add((reason, force))
        logger.log(logging.INFO if force else logging.WARNING,
                   f'bf16 inference: {reason}; ' + ('bf16 is emulated (slow), as forced' if force
                                                    else 'bf16 would be emulated and slower, '
                                                    'running fp32'))
    raw = _raw_layout_ops(model) if channels_last else []
    if raw:  # a layout mismatch would give wrong numbers, not an error: stay NCHW
        logger.info(f'bf16 inference: weights kept NCHW: mmcv ops {raw} read their input as '
                    'NCHW whatever its strides')
    elif channels_last:
        for name, child in model.named_children():
            # Our backbones choose their activation layout themselves (``memory_format``).
            if name == 'data_preprocessor' or hasattr(child, 'memory_format'):
                continue
            if any(p.dim() == 4 for p in child.parameters()):
                child.to(memory_format=torch.channels_last)
                state.channels_last.append(name)
    for name, module, method in _fp32_targets(model, fp32_classifier):
        _wrap(state, module, method, Fp32Call(module, method, module.__dict__.get(method),
                                              contiguous=method == 'forward'))
        state.fp32_parts.append(f'{name}.{method}' if name else method)
    setattr(model, _STATE, state)
    _wrap(state, model, 'forward', Bf16Forward(model, model.__dict__.get('forward')))
    if state.use_bf16:
        logger.info(f'bf16 inference ({reason}): network in bf16, channels-last in '
                    f'{state.channels_last or "none"}; fp32 for {state.fp32_parts}')
    return model


def disable_bf16_inference(model: nn.Module) -> nn.Module:
    """Undoes :func:`enable_bf16_inference`; returns ``model``."""
    state: Optional[Bf16State] = getattr(model, _STATE, None)
    if state is None:
        return model
    for module, method, previous in reversed(state.patched):
        if previous is None:
            module.__dict__.pop(method, None)
        else:
            setattr(module, method, previous)
    for name in state.channels_last:
        getattr(model, name).to(memory_format=torch.contiguous_format)
    delattr(model, _STATE)
    return model


def bf16_state(model: nn.Module) -> Optional[Bf16State]:
    """The :class:`Bf16State` of a model with bf16 inference on, else None."""
    return getattr(model, _STATE, None)

