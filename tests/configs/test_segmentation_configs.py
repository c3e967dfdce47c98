"""Semantic FPN configs (configs/segmentation): the paper's recipe, builds and parameter counts."""
import ast
import copy
import functools
import os.path as osp
from typing import Any, Dict

import pytest
import torch

ARCHS = ['s12', 's24', 's36', 'm36', 'm48']
WIDTHS = {'s12': [64, 128, 320, 512], 's24': [64, 128, 320, 512], 's36': [64, 128, 320, 512],
          'm36': [96, 192, 384, 768], 'm48': [96, 192, 384, 768]}
# ImageNet weights by name (metaformer_mm.zoo.IMAGENET_WEIGHTS holds the URLs).
RELEASE = 'poolformer_{}'
MMSEG_BASES = ['mmseg::_base_/models/fpn_r50.py', 'mmseg::_base_/datasets/ade20k.py',
               'mmseg::_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_40k.py']


def _path(repo_root: str, arch: str) -> str:
    return osp.join(repo_root, 'configs', 'segmentation', f'fpn_poolformer_{arch}.py')


@functools.lru_cache(maxsize=None)
def _parse(path: str):
    from mmengine.config import Config
    return Config.fromfile(path)


def _load(repo_root: str, arch: str):
    """A fresh copy of the parsed config (parsing with ``mmseg::`` bases takes a second)."""
    return copy.deepcopy(_parse(_path(repo_root, arch)))


def _declared_base(path: str) -> Any:
    """The literal ``_base_`` of a config file, read without executing it."""
    for node in ast.parse(open(path).read()).body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], 'id', None) == '_base_':
            return ast.literal_eval(node.value)
    return None


def _plain(obj: Any) -> Any:
    """``obj`` without the ``_scope_`` keys that ``mmseg::`` inheritance adds."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items() if k != '_scope_'}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def _flatten(obj: Any, prefix: str = '') -> Dict[str, Any]:
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            out.update(_flatten(value, f'{prefix}{key}.'))
        return out
    if isinstance(obj, (list, tuple)) and any(isinstance(v, dict) for v in obj):
        out = {}
        for i, value in enumerate(obj):
            out.update(_flatten(value, f'{prefix}{i}.'))
        return out
    return {prefix[:-1]: obj}


def test_s12_inherits_mmseg_bases_and_variants_inherit_s12(repo_root):
    assert _declared_base(_path(repo_root, 's12')) == MMSEG_BASES
    for arch in ARCHS[1:]:
        assert _declared_base(_path(repo_root, arch)) == './fpn_poolformer_s12.py'


@pytest.mark.parametrize('arch', ARCHS[1:])
def test_variants_differ_from_s12_only_in_backbone(repo_root, arch):
    base = _flatten(_load(repo_root, 's12').to_dict())
    variant = _flatten(_load(repo_root, arch).to_dict())
    assert set(base) == set(variant)
    differing = {k for k in base if base[k] != variant[k]}
    expected = {'model.backbone.arch', 'model.backbone.init_cfg.checkpoint'}
    if WIDTHS[arch] != WIDTHS['s12']:
        expected.add('model.neck.in_channels')
    assert differing == expected
    assert variant['model.backbone.arch'] == arch
    assert variant['model.backbone.init_cfg.checkpoint'] == RELEASE.format(arch)
    assert variant['model.neck.in_channels'] == WIDTHS[arch]


def test_s12_recipe(repo_root):
    from mmengine.config import ConfigDict
    cfg = ConfigDict(_plain(_load(repo_root, 's12').to_dict()))
    assert cfg.custom_imports == dict(imports=['metaformer_mm'], allow_failed_imports=False)
    model = cfg.model
    assert model.type == 'EncoderDecoder' and model.pretrained is None
    assert model.data_preprocessor.size == (512, 512)
    assert model.backbone == dict(
        type='PoolFormer', arch='s12', fork_feat=True, out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=RELEASE.format('s12')))
    assert model.neck == dict(type='FPN', in_channels=[64, 128, 320, 512], out_channels=256,
                              num_outs=4)
    head = model.decode_head
    assert head.type == 'FPNHead' and head.num_classes == 150
    assert head.in_channels == [256] * 4 and head.feature_strides == [4, 8, 16, 32]
    # SyncBN stays for multi-GPU training; non-distributed runs revert it (test_seg_train_test).
    assert head.norm_cfg.type == 'SyncBN'

    assert cfg.optim_wrapper.type == 'OptimWrapper' and cfg.optim_wrapper.clip_grad is None
    assert cfg.optim_wrapper.optimizer == dict(type='AdamW', lr=2e-4, weight_decay=1e-4)
    assert cfg.param_scheduler == [dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0,
                                        end=40000, by_epoch=False)]
    assert cfg.train_cfg == dict(type='IterBasedTrainLoop', max_iters=40000, val_interval=4000)
    assert cfg.default_hooks.checkpoint.interval == 4000
    assert not cfg.default_hooks.checkpoint.by_epoch
    # 4 images per GPU on 8 GPUs.
    assert cfg.train_dataloader.batch_size == 4 and cfg.auto_scale_lr.base_batch_size == 32

    train = cfg.train_dataloader.dataset
    assert train.type == 'ADE20KDataset' and train.data_root == 'data/ade/ADEChallengeData2016'
    steps = {t['type']: t for t in train.pipeline}
    assert steps['RandomResize'] == dict(type='RandomResize', scale=(2048, 512),
                                         ratio_range=(0.5, 2.0), keep_ratio=True)
    assert steps['RandomCrop'] == dict(type='RandomCrop', crop_size=(512, 512),
                                       cat_max_ratio=0.75)
    assert steps['RandomFlip']['prob'] == 0.5 and 'PhotoMetricDistortion' in steps
    for loader in (cfg.val_dataloader, cfg.test_dataloader):
        assert loader.dataset.data_root == 'data/ade/ADEChallengeData2016'
        types = [t['type'] for t in loader.dataset.pipeline]
        assert types[:3] == ['LoadImageFromFile', 'Resize', 'ResizeToMultiple']
        assert loader.dataset.pipeline[1] == dict(type='Resize', scale=(2048, 512),
                                                  keep_ratio=True)
        assert loader.dataset.pipeline[2] == dict(type='ResizeToMultiple', size_divisor=32)
    # inference_model() reads the top-level test_pipeline; it must be the same.
    assert cfg.test_pipeline == cfg.test_dataloader.dataset.pipeline
    for evaluator in (cfg.val_evaluator, cfg.test_evaluator):
        assert evaluator == dict(type='IoUMetric', iou_metrics=['mIoU'])


def test_pipelines_on_ade_images(repo_root, data_dir):
    """The recipe's pipelines on a real ADE image: 512x512 training batches, stride-32 tests."""
    from mmengine.registry import init_default_scope
    from mmseg.registry import DATASETS, MODELS
    cfg = _load(repo_root, 's12')
    init_default_scope('mmseg')
    root = osp.join(data_dir, 'ade_mini', 'ADEChallengeData2016')
    preprocessor = MODELS.build(cfg.model.data_preprocessor)

    train_set = DATASETS.build(dict(cfg.train_dataloader.dataset, data_root=root))
    torch.manual_seed(0)
    sample = train_set[0]
    assert max(sample['inputs'].shape[1:]) <= 512
    batch = preprocessor(dict(inputs=[sample['inputs']], data_samples=[sample['data_samples']]),
                         training=True)
    assert batch['inputs'].shape == (1, 3, 512, 512)
    labels = batch['data_samples'][0].gt_sem_seg.data
    assert labels.shape == (1, 512, 512)
    assert set(labels.unique().tolist()) <= set(range(150)) | {255}

    test_set = DATASETS.build(dict(cfg.test_dataloader.dataset, data_root=root))
    sample = test_set[0]  # ADE_val_00000001, 683x512: fits 2048x512, then 704 wide
    assert sample['inputs'].shape == (3, 512, 704)
    assert sample['data_samples'].ori_shape == (512, 683)
    assert sample['data_samples'].gt_sem_seg.data.shape == (1, 512, 683)


@pytest.mark.parametrize('arch', ARCHS)
def test_builds_with_the_family_widths_and_gives_stride_4_logits(repo_root, arch):
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    cfg = _load(repo_root, arch)
    cfg.model.backbone.init_cfg = None  # no download: the count does not depend on weights
    init_default_scope('mmseg')
    model = MODELS.build(cfg.model)
    assert type(model.backbone).__name__ == 'PoolFormer'
    assert model.backbone.dims == WIDTHS[arch]

    model.eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, 64, 96), mode='tensor')
    assert logits.shape == (1, 150, 16, 24)  # decode head output at stride 4
    assert torch.isfinite(logits).all()
