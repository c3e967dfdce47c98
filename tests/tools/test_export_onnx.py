"""tools/deploy/export_onnx.py: ONNX export of a config's backbone, checked with onnxruntime.

The export is traced at one size and run by onnxruntime at two others; its outputs must
equal the plain formulation of the same weights (the model's own forward) within 1e-4
of the output's magnitude.
"""
import os.path as osp
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from metaformer_mm.models import PoolFormer

from kernel_cases import reference_forward

TINY = "dict(_delete_=True, base='poolformer_s12', depths=[1, 1, 2, 1], dims=[16, 32, 48, 64])"


def _tool(repo_root):
    from in_process import script
    return script('tools/deploy/export_onnx.py')


def _tiny_config(repo_root, tmp_path, base: str, out_indices=None) -> str:
    path = tmp_path / 'tiny.py'
    extra = f', out_indices={out_indices!r}' if out_indices else ''
    path.write_text(f"_base_ = [{osp.join(repo_root, 'configs', base)!r}]\n"
                    f"model = dict(backbone=dict(arch={TINY}{extra}))\n")
    return str(path)


def _random_weights(model: torch.nn.Module) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.3 if 'bias' not in name
                        else torch.randn(p.shape, generator=gen) * 0.2)
    return model


def _compare(path: str, model: torch.nn.Module, sizes) -> None:
    session = ort.InferenceSession(path, providers=['CPUExecutionProvider'])
    for batch, h, w in sizes:
        x = torch.randn(batch, 3, h, w)
        with torch.no_grad():
            ref = reference_forward(model.eval(), x)
        outs = session.run(None, {'input': x.numpy()})
        assert len(outs) == len(ref)
        for out, r in zip(outs, ref):
            assert out.shape == tuple(r.shape)
            err = np.abs(out - r.numpy()).max() / np.abs(r.numpy()).max()
            assert err <= 1e-4, (h, w, err)


@pytest.mark.parametrize('deploy', [True, False])
def test_export_tool_with_detector_checkpoint_is_dynamic_and_exact(repo_root, tmp_path, deploy):
    """The README command: CONFIG CHECKPOINT --shape H W [--deploy]."""
    config = _tiny_config(repo_root, tmp_path, 'detection/retinanet_poolformer_s12.py')
    model = _random_weights(PoolFormer(arch=dict(base='poolformer_s12', depths=[1, 1, 2, 1],
                                                 dims=[16, 32, 48, 64]), out_indices=(1, 2, 3)))
    state = {f'backbone.{k}': v for k, v in model.state_dict().items()}
    state['neck.lateral_convs.0.conv.weight'] = torch.zeros(8, 32, 1, 1)  # a detector's keys
    ckpt = tmp_path / 'retinanet_tiny.pth'
    torch.save({'state_dict': state, 'meta': {}}, ckpt)
    out = tmp_path / 'backbone.onnx'
    cmd = [sys.executable, osp.join(repo_root, 'tools', 'deploy', 'export_onnx.py'), config,
           str(ckpt), '--shape', '64', '96', '--out', str(out)] + (['--deploy'] if deploy else [])
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert 'stage1, stage2, stage3' in proc.stdout
    graph = onnx.load(str(out)).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ['batch', 3, 'height', 'width']
    assert [o.name for o in graph.output] == ['stage1', 'stage2', 'stage3']
    # Two sizes other than the traced one, an odd one and a batch of two.
    _compare(str(out), model, [(1, 97, 131), (2, 64, 64)])


def test_export_segmentation_config_in_process_and_verify(repo_root, tmp_path, capsys):
    tool = _tool(repo_root)
    config = _tiny_config(repo_root, tmp_path, 'segmentation/fpn_poolformer_s12.py')
    torch.manual_seed(0)
    out = tool.main([config, '--shape', '64', '64', '--out', str(tmp_path / 'seg.onnx'),
                     '--deploy', '--verify'])
    printed = capsys.readouterr().out
    assert 'stage0, stage1, stage2, stage3' in printed
    errors = [float(line.rsplit(' ', 1)[1]) for line in printed.splitlines()
              if line.startswith('onnxruntime vs torch')]
    assert len(errors) == 2 and max(errors) <= 1e-4
    torch.manual_seed(0)
    model = tool.build_backbone(config)  # the same seed builds the same random weights
    _compare(out, model, [(1, 77, 45)])


def test_export_refuses_a_resnet_backbone(repo_root, tmp_path):
    tool = _tool(repo_root)
    path = tmp_path / 'r50.py'
    path.write_text("_base_ = ['mmdet::retinanet/retinanet_r50_fpn_1x_coco.py']\n")
    with pytest.raises(SystemExit, match='exports MetaFormer backbones'):
        tool.main([str(path), '--shape', '64', '64', '--out', str(tmp_path / 'r.onnx')])


SIZE_BOUND = {
    'retinanet_randformer_s12.py': "dict(_delete_=True, base='randformer_s12', "
                                   "depths=[1, 1, 1, 1], dims=[16, 32, 48, 64])",
    'retinanet_smlpnet_tiny.py': "dict(_delete_=True, base='smlpnet_tiny', depths=[1, 1, 1, 1], "
                                 "dims=[8, 16, 32, 64])",
}


@pytest.mark.parametrize('config', list(SIZE_BOUND))
def test_export_of_size_bound_mixers_says_which_axes_are_fixed_and_verifies(repo_root, tmp_path,
                                                                            capsys, config):
    """RandFormer's token matrix and sMLP's axial weights are resampled per input size: the
    export keeps the batch dynamic and H, W at the traced size, says so, and is exact there."""
    tool = _tool(repo_root)
    path = tmp_path / 'size_bound.py'
    path.write_text(f"_base_ = [{osp.join(repo_root, 'configs', 'detection', config)!r}]\n"
                    f"model = dict(backbone=dict(arch={SIZE_BOUND[config]}, image_size=64))\n")
    torch.manual_seed(0)
    out = tool.main([str(path), '--shape', '96', '128', '--out', str(tmp_path / 'm.onnx'),
                     '--verify'])
    printed = capsys.readouterr().out
    assert 'dynamic N; H, W fixed at 96x128' in printed and 'export once per input size' in printed
    errors = [float(line.rsplit(' ', 1)[1]) for line in printed.splitlines()
              if line.startswith('onnxruntime vs torch')]
    assert len(errors) == 1 and errors[0] <= 1e-4
    dims = onnx.load(out).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ['batch', 3, 96, 128]
    torch.manual_seed(0)
    _compare(out, tool.build_backbone(str(path)), [(2, 96, 128)])  # any batch
