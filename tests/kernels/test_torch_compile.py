"""torch.compile of the backbones, the detectors' and segmentors' train steps, and the tools.

The model's forward is the plain formulation; under ``torch.compile`` the eager kernels step
aside, so dynamo sees one graph per forward with no break. Every family is traced by dynamo
and AOTAutograd (``aot_eager``: the graphs inductor would get, forward and backward, run
eagerly) against the eager default path; Inductor itself compiles PoolFormer (train and
eval, with and without freezing) and RandFormer at a grid other than its native one (the
matrix resampling is part of the graph).
"""
import logging
import os
import subprocess
import sys
import uuid
from typing import List

import pytest
import torch
import torch._dynamo
from mmengine.runner import Runner

import metaformer_mm  # noqa: F401  (registers the hooks)
from kernel_cases import ARCHS, assert_rel, build, reference_forward
from tiny_runner import RandomImages, TinyClassifier


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


class Recorder:
    """A dynamo backend that keeps each graph it is given and runs it as it is."""

    def __init__(self) -> None:
        self.graphs: List[torch.fx.GraphModule] = []

    def __call__(self, gm: torch.fx.GraphModule, example_inputs):
        self.graphs.append(gm)
        return gm.forward


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_grads_close(grads, ref, tol=1e-4):
    """Per parameter, relative to the largest gradient of the model (some are zero in exact
    maths, e.g. PoolFormer's norm1 bias, which pooling minus identity cancels)."""
    assert grads.keys() == ref.keys()
    scale = max(float(g.abs().max()) for g in ref.values())
    for name, g in grads.items():
        err = float((g - ref[name]).abs().max())
        assert err <= tol * float(ref[name].abs().max()) + 1e-6 * scale, (name, err)


@pytest.mark.parametrize('name', list(ARCHS))
def test_every_family_compiles_as_one_graph_of_the_plain_formulation(name):
    model = build(name).eval()
    x = torch.randn(2, 3, 64, 72)
    recorder = Recorder()
    compiled = torch.compile(model, fullgraph=True, backend=recorder)
    with torch.no_grad():
        out = compiled(x)
        ref = model(x)  # the eager default path
        compiled(x)
    assert_rel(out, ref, tol=1e-5, what=name)
    assert_rel(out, reference_forward(model, x, channels_last=True), tol=1e-5, what=name)
    # One graph for the whole forward (no recompilation per stage width) and the paper's
    # operators in it, not the eager kernels' private ones.
    assert len(recorder.graphs) == 1
    code = recorder.graphs[0].code
    assert 'conv2d' in code and 'mkldnn' not in code and 'addcmul' not in code
    assert model.kernels == 'auto'  # compiling changed nothing in the model


@pytest.mark.parametrize('name', list(ARCHS))
def test_every_family_compiled_training_gives_eager_gradients(name):
    """Forward and backward (AOTAutograd) with drop path on: the same masks from the same
    seed, the same outputs and gradients as the eager default path."""
    model = build(name, drop_path_rate=0.3).train()
    x = torch.randn(2, 3, 64, 72)
    weights = [torch.rand(o.shape) for o in reference_forward(model, x)]

    def step(fn):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(11)
        outs = fn(x)
        sum((o * w).sum() for o, w in zip(outs, weights)).backward()
        return outs, _grads(model)

    ref_out, ref_grads = step(model)
    out, grads = step(torch.compile(model, fullgraph=True, backend='aot_eager'))
    assert_rel(out, ref_out, what=name)
    _assert_grads_close(grads, ref_grads)
    torch.manual_seed(12)
    other = torch.compile(model, fullgraph=True, backend='aot_eager')(x)
    assert max(float((a - b).abs().max()) for a, b in zip(other, out)) > 1e-4, 'masks vary'


@pytest.mark.slow
@pytest.mark.parametrize('freezing', [False, True])
def test_inductor_compiles_poolformer_inference(freezing):
    model = build('poolformer').eval()
    x = torch.randn(1, 3, 64, 96)
    compiled = torch.compile(model, fullgraph=True, options={'freezing': freezing})
    with torch.no_grad():
        assert_rel(compiled(x), model(x), tol=1e-5)


@pytest.mark.slow
def test_inductor_compiles_poolformer_training():
    import torch._inductor.config as inductor_config
    model = build('poolformer', drop_path_rate=0.3).train()
    x = torch.randn(2, 3, 64, 64)

    def step(fn):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(3)
        outs = fn(x)
        sum(o.square().mean() for o in outs).backward()
        return outs, _grads(model)

    ref_out, ref_grads = step(model)
    # Inductor's own RNG would draw other drop-path masks than eager's.
    with inductor_config.patch(fallback_random=True):
        out, grads = step(torch.compile(model, fullgraph=True))
    assert_rel(out, ref_out, tol=1e-5)
    _assert_grads_close(grads, ref_grads)


@pytest.mark.slow
def test_inductor_compiles_randformer_at_another_grid_with_the_resampling_in_the_graph():
    model = build('randformer').eval()  # native grid 4x4 / 2x2 (image_size 64)
    x = torch.randn(1, 3, 96, 128)
    mixer = model.stages[2].blocks[0].token_mixer
    with torch.no_grad():
        ref = model(x)
        mixer.clear_cache()
        out = torch.compile(model, fullgraph=True)(x)
    assert_rel(out, ref, tol=1e-5)
    assert not mixer._cache, 'a compiled forward keeps no Python-side state'


# --------------------------------------------------------------------------- mmengine's compile=True
class _GraphBreaks(logging.Handler):
    """Collects dynamo's graph-break and recompilation messages."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: List[str] = []

    def emit(self, record) -> None:
        if '__graph_breaks' in record.name or '__recompiles' in record.name:
            self.messages.append(record.getMessage())

    def __enter__(self):
        torch._logging.set_logs(graph_breaks=True, recompiles=True)
        # The artifact loggers are children of each module's logger, e.g.
        # torch._dynamo.symbolic_convert.__graph_breaks: catch them where they propagate.
        self.loggers = [logging.getLogger('torch._dynamo')]
        for logger in self.loggers:
            logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        for logger in self.loggers:
            logger.removeHandler(self)
        torch._logging.set_logs()


def test_compiled_train_step_has_no_graph_break_from_this_project(tmp_path):
    """``compile=...`` in a config: mmengine compiles ``train_step``. mmengine's own code
    breaks the graph (at the backward), ours nowhere: not in the backbone, not in the
    non-finite guard, which judges gradients outside the compiled region."""
    runner = Runner(
        model=TinyClassifier(), work_dir=str(tmp_path),
        train_dataloader=dict(dataset=RandomImages(), batch_size=4, num_workers=0,
                              sampler=dict(type='DefaultSampler', shuffle=False),
                              collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3)),
        train_cfg=dict(by_epoch=False, max_iters=3),
        custom_hooks=[dict(type='NonFiniteGuardHook')],
        experiment_name=f'compile_{uuid.uuid4().hex[:8]}',
        cfg=dict(compile=dict(backend='eager')))
    with _GraphBreaks() as breaks:
        runner.train()
    assert breaks.messages, 'dynamo traced the train step'
    ours = [m for m in breaks.messages if 'metaformer_mm' in m]
    assert not ours, ours[0]


# --------------------------------------------------------------------------- the tools
TINY_SEG = ("model = dict(backbone=dict(arch=dict(_delete_=True, base='poolformer_s12', "
            "depths=[1, 1, 1, 1], dims=[16, 32, 48, 64])), neck=dict(in_channels=[16, 32, 48, 64]))\n")


def _run_tool(repo_root, *args) -> subprocess.CompletedProcess:
    """Runs a tool with dynamo's graph-break log on (it goes to stderr)."""
    env = {**os.environ, 'PYTHONPATH': repo_root, 'TORCH_LOGS': 'graph_breaks'}
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600,
                          cwd=repo_root, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _our_graph_breaks(stderr: str) -> List[str]:
    return [line for line in stderr.splitlines()
            if 'Graph break' in line and 'metaformer_mm' + os.sep in line]


def test_train_and_test_tools_compile_with_the_config_key(repo_root, ade_mini_run, tmp_path):
    """``tools/train.py --compile`` (mmengine compiles the train step) and ``tools/test.py
    --compile freezing`` (the test step, with Inductor's freezing option) on Semantic FPN;
    dynamo's tracing alone (``compile.backend=eager``) keeps the run short on 2 cores, and
    no graph break is in this project's code."""
    import glob
    config = tmp_path / 'seg.py'
    config.write_text(f'_base_ = [{ade_mini_run(tmp_path, "fpn_poolformer_s12", iters=2)!r}]\n'
                      + TINY_SEG)
    work = tmp_path / 'train'
    proc = _run_tool(repo_root, 'tools/train.py', str(config), '--work-dir', str(work),
                     '--compile', '--cfg-options', 'compile.backend=eager')
    assert 'Graph break' in proc.stderr and not _our_graph_breaks(proc.stderr)
    log = open(glob.glob(str(work / '*' / '*.log'))[0]).read()
    assert 'Model has been "compiled"' in log and 'mIoU' in log
    test_work = tmp_path / 'test'
    proc = _run_tool(repo_root, 'tools/test.py', str(config), str(work / 'iter_2.pth'),
                     '--work-dir', str(test_work), '--compile', 'freezing', '--cfg-options',
                     'compile.backend=eager')
    assert not _our_graph_breaks(proc.stderr)
    log = open(glob.glob(str(test_work / '*' / '*.log'))[0]).read()
    assert "test_step compiled with torch.compile({'backend': 'eager', 'options': " \
           "{'freezing': True}})" in log and 'mIoU' in log


@pytest.mark.slow
def test_a_detector_train_step_compiles_with_no_graph_break_in_the_backbone(repo_root,
                                                                           coco_mini_run,
                                                                           tmp_path):
    """RetinaNet under ``tools/train.py --compile``: mmdet's head and losses break the graph
    where they do, the backbone and this project's hooks nowhere."""
    config, options = coco_mini_run(tmp_path, 'retinanet_poolformer_s12', scale=(128, 96))
    proc = _run_tool(repo_root, 'tools/train.py', config, '--work-dir', str(tmp_path / 'work'),
                     '--compile', '--cfg-options', 'compile.backend=eager',
                     "model.backbone.depths=[1,1,1,1]", *options)
    assert 'Graph break' in proc.stderr
    assert not _our_graph_breaks(proc.stderr), _our_graph_breaks(proc.stderr)[:3]


def test_compile_option_keeps_the_configs_own_options():
    from mmengine.config import Config

    from metaformer_mm.cli.options import enable_compile
    from metaformer_mm.engine import compiles
    cfg = Config(dict())
    assert not compiles(cfg)
    enable_compile(cfg)
    assert cfg.compile is True and compiles(cfg)
    cfg = Config(dict(compile=dict(mode='max-autotune')))
    enable_compile(cfg, freezing=True)
    assert cfg.compile.to_dict() == dict(mode='max-autotune', options=dict(freezing=True))
    assert compiles(Config(dict(compile={}))) and not compiles(Config(dict(compile=False)))
