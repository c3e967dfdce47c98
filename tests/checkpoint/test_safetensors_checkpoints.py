"""``.safetensors`` files (timm's weights on the Hugging Face Hub) load wherever a checkpoint is
read: ``init_cfg`` (by path, URL and name), ``load_from``, ``init_detector`` and
``tools/convert_checkpoint.py``, with the layout detection and strictness of ``.pth`` files.

The files are written by ``safetensors.torch.save_file`` from the timm-layout reference
checkpoint (``shared/reference/poolformer_tiny/timm.pth``), whose outputs are known.
"""
import json
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch
from mmengine.config import Config
from safetensors.torch import save_file

from metaformer_mm.checkpoint import CheckpointError, read_checkpoint
from metaformer_mm.models.backbones.metaformer import MetaFormer

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TINY_POOLFORMER = dict(base='poolformer_s12', depths=[1, 1, 2, 1], dims=[16, 32, 48, 64])


def _reference(reference_dir, name):
    return torch.load(osp.join(reference_dir, 'poolformer_tiny', name), weights_only=True)


def _save(state, path) -> str:
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return str(path)


@pytest.fixture
def timm_safetensors(reference_dir, tmp_path) -> str:
    return _save(_reference(reference_dir, 'timm.pth'), tmp_path / 'model.safetensors')


def _assert_reference_features(model, reference_dir):
    x = _reference(reference_dir, 'input.pt')
    with torch.no_grad():
        outputs = model.eval()(x)
    expected = _reference(reference_dir, 'features.pt')
    assert len(outputs) == len(expected) == 4
    for ours, ref in zip(outputs, expected):
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_read_checkpoint_returns_the_tensors_of_a_safetensors_file(reference_dir,
                                                                   timm_safetensors):
    state = _reference(reference_dir, 'timm.pth')
    loaded = read_checkpoint(timm_safetensors)
    assert set(loaded) == set(state)
    assert all(torch.equal(loaded[k], state[k]) for k in state)


def test_init_cfg_safetensors_gives_the_reference_features(reference_dir, timm_safetensors):
    model = MetaFormer(arch=TINY_POOLFORMER,
                       init_cfg=dict(type='Pretrained', checkpoint=timm_safetensors))
    model.init_weights()
    _assert_reference_features(model, reference_dir)


def test_safetensors_without_a_suffix_is_recognised_by_its_header(reference_dir,
                                                                  timm_safetensors, tmp_path):
    renamed = tmp_path / 'weights.bin'
    renamed.write_bytes(open(timm_safetensors, 'rb').read())
    model = MetaFormer(arch=TINY_POOLFORMER, init_cfg=dict(type='Pretrained',
                                                           checkpoint=str(renamed)))
    model.init_weights()
    _assert_reference_features(model, reference_dir)


def test_safetensors_over_http_and_by_name(reference_dir, timm_safetensors, http_server,
                                           tmp_path, monkeypatch):
    root, url = http_server
    (root / 'model.safetensors').write_bytes(open(timm_safetensors, 'rb').read())
    model = MetaFormer(arch=TINY_POOLFORMER, init_cfg=dict(
        type='Pretrained', checkpoint=f'{url}/model.safetensors'))
    model.init_weights()
    _assert_reference_features(model, reference_dir)
    # By name: the zoo's table (here extended by METAFORMER_MM_WEIGHTS) maps it to the URL.
    table = tmp_path / 'weights.json'
    table.write_text(json.dumps({'poolformer_tiny.timm': f'{url}/model.safetensors'}))
    monkeypatch.setenv('METAFORMER_MM_WEIGHTS', str(table))
    model = MetaFormer(arch=TINY_POOLFORMER, init_cfg=dict(type='Pretrained',
                                                           checkpoint='poolformer_tiny.timm'))
    model.init_weights()
    _assert_reference_features(model, reference_dir)


def test_safetensors_missing_a_tensor_is_refused_like_a_pth(reference_dir, tmp_path):
    state = _reference(reference_dir, 'timm.pth')
    del state['stages.2.blocks.0.mlp.fc1.weight']
    pth = str(tmp_path / 'short.pth')
    torch.save(state, pth)
    messages = []
    for path in (_save(state, tmp_path / 'short.safetensors'), pth):
        model = MetaFormer(arch=TINY_POOLFORMER, init_cfg=dict(type='Pretrained',
                                                               checkpoint=path))
        with pytest.raises(CheckpointError) as info:
            model.init_weights()
        message = str(info.value)
        assert message.startswith(f'{path} does not fit the MetaFormer (layout: '), message
        assert "tensors missing (first: ['stages.2.blocks.0.mlp.fc1.weight'])" in message
        messages.append(message.replace(path, 'FILE'))
    assert messages[0] == messages[1]


def test_corrupt_safetensors_is_an_error_naming_the_file(timm_safetensors, tmp_path):
    data = open(timm_safetensors, 'rb').read()
    truncated = tmp_path / 'truncated.safetensors'
    truncated.write_bytes(data[:len(data) // 2])
    text = tmp_path / 'text.safetensors'
    text.write_text('not a checkpoint')
    for path in (truncated, text):
        model = MetaFormer(arch=TINY_POOLFORMER, init_cfg=dict(type='Pretrained',
                                                               checkpoint=str(path)))
        with pytest.raises(CheckpointError, match=re.escape(
                f'cannot load {path}: it is a corrupt or truncated .safetensors file')):
            model.init_weights()


# --------------------------------------------------------------------------- whole models
@pytest.fixture(scope='module')
def retinanet_safetensors(tmp_path_factory):
    """(config, tiny RetinaNet-S12 with distinct weights, its state dict as .safetensors)."""
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(osp.join(ROOT, 'configs', 'detection', 'retinanet_poolformer_s12.py'))
    cfg.model.backbone.arch = dict(base='poolformer_s12', depths=[1, 1, 1, 1])
    cfg.model.backbone.init_cfg = None
    init_default_scope('mmdet')
    source = MODELS.build(cfg.model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in source.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(torch.rand(tensor.shape, generator=gen) * 0.2 + 0.5)
    path = _save(source.state_dict(),
                 tmp_path_factory.mktemp('retinanet') / 'retinanet.safetensors')
    return cfg, source.eval(), path


def _assert_same_model(model, source):
    ours, theirs = model.state_dict(), source.state_dict()
    assert set(ours) == set(theirs)
    assert all(torch.equal(ours[k], v) for k, v in theirs.items())
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for a, b in zip(model.eval()._forward(x)[0], source._forward(x)[0]):
            assert torch.equal(a, b)


def test_init_detector_loads_a_safetensors_model(retinanet_safetensors):
    from mmdet.apis import init_detector
    cfg, source, path = retinanet_safetensors
    _assert_same_model(init_detector(cfg.copy(), path, device='cpu'), source)


def test_runner_load_from_loads_a_safetensors_model(retinanet_safetensors, tmp_path):
    from mmengine.runner import Runner
    cfg, source, path = retinanet_safetensors
    runner = Runner(model=cfg.model.to_dict(), work_dir=str(tmp_path), load_from=path,
                    default_scope='mmdet')
    runner.load_or_resume()
    _assert_same_model(runner.model, source)


def test_convert_checkpoint_reads_safetensors(reference_dir, timm_safetensors, tmp_path):
    dst = str(tmp_path / 'converted.pth')
    # The README's command, as typed.
    result = subprocess.run([sys.executable, 'tools/convert_checkpoint.py', timm_safetensors,
                             dst], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'from timm to the metaformer_mm layout' in result.stdout
    saved = torch.load(dst, weights_only=True)
    model = MetaFormer(arch=TINY_POOLFORMER, fork_feat=False, num_classes=10).eval()
    model.load_state_dict(saved['state_dict'], strict=True)
    with torch.no_grad():
        torch.testing.assert_close(model(_reference(reference_dir, 'input.pt')),
                                   _reference(reference_dir, 'logits.pt'), rtol=1e-4, atol=1e-5)
