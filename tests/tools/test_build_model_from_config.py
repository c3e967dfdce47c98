"""metaformer_mm.cli.models.build_model_from_config: the one way the tools build a model."""
import os.path as osp

import pytest
import torch

from metaformer_mm.cli.models import build_model_from_config
from metaformer_mm.models import MetaFormer

TINY = "dict(_delete_=True, base='poolformer_s12', depths=[1, 1, 1, 1], dims=[8, 16, 24, 32])"


def _config(repo_root, tmp_path) -> str:
    path = tmp_path / 'tiny_fpn.py'
    base = osp.join(repo_root, 'configs', 'segmentation', 'fpn_poolformer_s12.py')
    path.write_text(f"_base_ = [{base!r}]\nmodel = dict(backbone=dict(arch={TINY}), "
                    f"neck=dict(in_channels=[8, 16, 24, 32]))\n")
    return str(path)


def test_whole_model_with_checkpoint_and_backbone_part(repo_root, tmp_path):
    config = _config(repo_root, tmp_path)
    model = build_model_from_config(config)
    assert not model.training and model.cfg.default_scope == 'mmseg'
    assert type(model).__name__ == 'EncoderDecoder' and isinstance(model.backbone, MetaFormer)
    state = {k: v + 0.25 for k, v in model.state_dict().items() if v.is_floating_point()}
    ckpt = tmp_path / 'seg.pth'
    torch.save({'state_dict': state, 'meta': {}}, ckpt)
    loaded = build_model_from_config(config, checkpoint=str(ckpt))
    for key, value in loaded.state_dict().items():
        if key in state:
            assert torch.equal(value, state[key]), key
    # The backbone part takes the checkpoint's backbone.* keys and config overrides.
    backbone = build_model_from_config(config, checkpoint=str(ckpt), part='backbone',
                                       backbone_overrides=dict(out_indices=(2, 3)),
                                       cfg_options={'model.backbone.kernels': 'reference'})
    assert isinstance(backbone, MetaFormer) and backbone.out_indices == (2, 3)
    assert backbone.kernels == 'reference'
    assert torch.equal(backbone.stem.conv.weight, state['backbone.stem.conv.weight'])


def test_bad_arguments_name_the_problem(repo_root, tmp_path):
    with pytest.raises(FileNotFoundError, match='config file not found: missing.py'):
        build_model_from_config('missing.py')
    with pytest.raises(ValueError, match="part must be 'model' or 'backbone'"):
        build_model_from_config(_config(repo_root, tmp_path), part='neck')
    with pytest.raises(ValueError, match='kernels must be one of'):
        build_model_from_config(_config(repo_root, tmp_path),
                                cfg_options={'model.backbone.kernels': 'fast'})
