"""``NonFiniteGuardHook``: a training run stops at its first non-finite loss or gradient.

Without it a diverging run trains on ``nan``, exits 0 and, with ``max_keep_ckpts``, rotates
its last good checkpoint away. Before every optimizer step (a step pre-hook) non-finite
gradients are dropped, so the step changes nothing; under ``compile=True`` each gradient is
judged where autograd accumulates it (a post-accumulate-grad hook, run eagerly), so the guard
reads no tensor inside the compiled region. After every iteration, before ``CheckpointHook``,
losses and parameters are checked and the first bad iteration raises :class:`NonFiniteError`
(``max_skips=N`` skips up to N bad steps first)."""
import math
from typing import Any, Dict, List, Optional

import torch
from mmengine.hooks import Hook
from mmengine.logging import MMLogger
from mmengine.model import is_model_wrapper
from mmengine.optim import OptimWrapperDict
from mmengine.registry import HOOKS


def runner_model(runner: Any) -> torch.nn.Module:
    """The Runner's model without its DDP/FSDP wrapper."""
    return runner.model.module if is_model_wrapper(runner.model) else runner.model


def compiles(cfg) -> bool:
    """Whether a runner config compiles its train step: mmengine does for any ``compile``
    value but None and False."""
    value = cfg.get('compile') if cfg is not None else None
    return value is not None and value is not False


class NonFiniteError(FloatingPointError):
    """Training produced a non-finite loss, gradient or parameter."""


def non_finite_tensors(named: Dict[str, torch.Tensor]) -> List[str]:
    """Names of the floating-point tensors of ``named`` that hold a nan or an inf."""
    return [name for name, t in named.items()
            if torch.is_tensor(t) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def _grad_norm(params: List[torch.Tensor]) -> float:
    """The L2 norm of all gradients together (nan or inf when any of them is non-finite)."""
    norms = [torch.linalg.vector_norm(p.grad.detach().float()) for p in params]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def _wrappers(runner) -> List[Any]:
    wrapper = runner.optim_wrapper
    return list(wrapper.values()) if isinstance(wrapper, OptimWrapperDict) else [wrapper]


@HOOKS.register_module()
class NonFiniteGuardHook(Hook):
    """Stops training at the first non-finite loss or gradient norm (see the module doc).
    ``check_params``: also check the parameters after each step (a huge learning rate can
    overflow them from finite gradients)."""

    # Before CheckpointHook (VERY_LOW) and ParamSchedulerHook (LOW) in after_train_iter.
    priority = 'NORMAL'

    def __init__(self, max_skips: int = 0, check_params: bool = True) -> None:
        if not isinstance(max_skips, int) or max_skips < 0:
            raise ValueError(f'NonFiniteGuardHook: max_skips must be an integer >= 0, '
                             f'got {max_skips!r}')
        self.max_skips = max_skips
        self.check_params = check_params
        self.skipped = 0
        self._bad_grad_norm: Optional[float] = None
        self._handles: List[Any] = []

    def before_train(self, runner) -> None:
        compiled = compiles(runner.cfg)
        for w in _wrappers(runner):
            if compiled:
                self._handles.append(w.optimizer.register_step_pre_hook(self._drop_bad_step))
                self._handles += [p.register_post_accumulate_grad_hook(self._judge_gradient)
                                  for group in w.optimizer.param_groups
                                  for p in group['params'] if p.requires_grad]
            else:
                self._handles.append(w.optimizer.register_step_pre_hook(self._check_gradients))

    def after_train(self, runner) -> None:
        self._remove_hooks()

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _check_gradients(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        params = [p for group in optimizer.param_groups for p in group['params']
                  if p.grad is not None]
        norm = _grad_norm(params)
        if math.isfinite(norm):
            return
        self._bad_grad_norm = norm
        # Parameters without a gradient are left alone by every torch optimizer: no step.
        for p in params:
            p.grad = None

    # Called by the autograd engine, as a frame of its own: dynamo would otherwise compile
    # it (a frame started inside a compiled train step); disabled, it just runs eagerly.
    @torch.compiler.disable
    def _judge_gradient(self, param: torch.Tensor) -> None:
        if self._bad_grad_norm is None and not bool(torch.isfinite(param.grad).all()):
            self._bad_grad_norm = float(torch.linalg.vector_norm(param.grad.detach().float()))

    def _drop_bad_step(self, optimizer: torch.optim.Optimizer, args, kwargs) -> None:
        if self._bad_grad_norm is None:
            return
        for group in optimizer.param_groups:
            for p in group['params']:
                p.grad = None

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        self._bad_grad_norm = None

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs: Optional[dict] = None) -> None:
        problems = []
        # (the summed 'loss' still carries its graph: detach before reading it)
        losses = {k: float(v.detach() if torch.is_tensor(v) else v)
                  for k, v in (outputs or {}).items() if 'loss' in k}
        bad_losses = {k: v for k, v in losses.items() if not math.isfinite(v)}
        if bad_losses:
            problems.append('non-finite loss ('
                            + ', '.join(f'{k}={v}' for k, v in bad_losses.items()) + ')')
        if self._bad_grad_norm is not None:
            problems.append(f'non-finite gradient norm ({self._bad_grad_norm}); '
                            f'the optimizer step was skipped')
        if self.check_params and not problems:
            bad = non_finite_tensors(dict(runner_model(runner).named_parameters()))
            if bad:  # the step itself overflowed: nothing to skip, stop now
                self._remove_hooks()
                raise NonFiniteError(self._message(runner, [
                    f'{len(bad)} parameters non-finite after the optimizer step '
                    f'(first: {bad[0]})']))
        if not problems:
            return
        if self.skipped < self.max_skips:
            self.skipped += 1
            # Gradients still accumulating for a later step (accumulative_counts) go too.
            runner.optim_wrapper.zero_grad()
            MMLogger.get_current_instance().warning(
                f'iteration {runner.iter + 1}: {"; ".join(problems)} '
                f'(skip {self.skipped} of max_skips={self.max_skips})')
            return
        self._remove_hooks()
        raise NonFiniteError(self._message(runner, problems))

    def _message(self, runner, problems: List[str]) -> str:
        last = runner.message_hub.get_info('last_ckpt')
        kept = (f'the last checkpoint, {last}, is kept' if last
                else 'no checkpoint was written')
        skipped = f' after {self.skipped} skipped steps' if self.max_skips else ''
        clipped = any(getattr(w, 'clip_grad_kwargs', None) for w in _wrappers(runner))
        hint = 'lower the learning rate' + ('' if clipped else
                                            ', or clip gradients (optim_wrapper.clip_grad)')
        return (f'training stopped at iteration {runner.iter + 1}{skipped}: '
                f'{"; ".join(problems)}; {kept} ({hint})')
