"""Detection configs: the paper's recipe and no unused parameters (whole-model parameter
counts: configs/test_model_zoo.py, against the README)."""
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import metaformer_mm  # noqa: F401

# ImageNet weights by name (metaformer_mm.zoo.IMAGENET_WEIGHTS holds the URLs).
URL = 'poolformer_{}'
ARCHS = ('s12', 's24', 's36', 'm36', 'm48')
WIDTHS = {'s': [64, 128, 320, 512], 'm': [96, 192, 384, 768]}


def load(repo_root, detector, arch):
    return Config.fromfile(osp.join(repo_root, 'configs', 'detection',
                                    f'{detector}_poolformer_{arch}.py'))


def build(cfg):
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    cfg.model.backbone.init_cfg = None  # no download: counts and wiring only
    return MODELS.build(cfg.model)


@pytest.mark.parametrize('detector', ['retinanet', 'mask_rcnn'])
@pytest.mark.parametrize('arch', ARCHS)
def test_recipe(repo_root, detector, arch):
    cfg = load(repo_root, detector, arch)
    assert cfg.default_scope == 'mmdet'
    assert cfg.custom_imports == dict(imports=['metaformer_mm'], allow_failed_imports=False)

    backbone = cfg.model.backbone
    assert backbone.type == 'PoolFormer' and backbone.arch == arch and backbone.fork_feat
    assert backbone.init_cfg == dict(type='Pretrained', checkpoint=URL.format(arch))
    assert 'depth' not in backbone and 'style' not in backbone  # ResNet's arguments are gone
    widths = WIDTHS[arch[0]]
    neck = cfg.model.neck
    assert (neck.type, neck.out_channels, neck.num_outs) == ('FPN', 256, 5)
    if detector == 'retinanet':
        # stride 8 upwards, from the backbone itself: no unused stride-4 output norm
        assert backbone.out_indices == (1, 2, 3)
        assert neck.in_channels == widths[1:]
        assert (neck.start_level, neck.add_extra_convs) == (0, 'on_input')
        assert cfg.model.bbox_head.anchor_generator.strides == [8, 16, 32, 64, 128]
        lr, metric = 1e-4, 'bbox'
    else:
        assert backbone.out_indices == (0, 1, 2, 3)
        assert neck.in_channels == widths
        lr, metric = 2e-4, ['bbox', 'segm']

    assert cfg.optim_wrapper.type == 'OptimWrapper'
    assert cfg.optim_wrapper.optimizer == dict(type='AdamW', lr=lr, weight_decay=1e-4)
    assert cfg.optim_wrapper.get('clip_grad') is None
    assert cfg.train_cfg.max_epochs == 12
    warmup, step = cfg.param_scheduler
    assert (warmup.type, warmup.start_factor, warmup.by_epoch, warmup.end) == \
        ('LinearLR', 0.001, False, 500)
    assert (step.type, step.milestones, step.gamma, step.by_epoch) == \
        ('MultiStepLR', [8, 11], 0.1, True)
    assert cfg.auto_scale_lr == dict(enable=False, base_batch_size=16)

    train = cfg.train_dataloader
    assert train.batch_size == 2
    steps = {t.type: t for t in train.dataset.pipeline}
    assert steps['Resize'].scale == (1333, 800) and steps['Resize'].keep_ratio
    assert steps['RandomFlip'].prob == 0.5
    assert steps['LoadAnnotations'].get('with_mask', False) == (detector == 'mask_rcnn')
    for loader in (train, cfg.val_dataloader, cfg.test_dataloader):
        assert loader.dataset.type == 'CocoDataset' and loader.dataset.data_root == 'data/coco/'
    assert train.dataset.ann_file == 'annotations/instances_train2017.json'
    assert cfg.val_dataloader.dataset.ann_file == 'annotations/instances_val2017.json'
    for evaluator in (cfg.val_evaluator, cfg.test_evaluator):
        assert evaluator.type == 'CocoMetric' and evaluator.metric == metric
        assert evaluator.ann_file == 'data/coco/annotations/instances_val2017.json'


def _gt_sample(height, width):
    import numpy as np
    from mmdet.structures import DetDataSample
    from mmdet.structures.mask import BitmapMasks
    from mmengine.structures import InstanceData
    sample = DetDataSample(metainfo=dict(img_shape=(height, width), pad_shape=(height, width),
                                         batch_input_shape=(height, width)))
    boxes = torch.tensor([[8., 12., 90., 100.], [100., 30., 180., 120.]])
    masks = np.zeros((2, height, width), np.uint8)
    for mask, (x1, y1, x2, y2) in zip(masks, boxes.int().tolist()):
        mask[y1:y2, x1:x2] = 1
    sample.gt_instances = InstanceData(bboxes=boxes, labels=torch.tensor([2, 0]),
                                       masks=BitmapMasks(masks, height, width))
    return sample


@pytest.mark.parametrize('detector', ['retinanet', 'mask_rcnn'])
def test_every_parameter_gets_a_gradient(repo_root, detector):
    """DDP runs with find_unused_parameters=False: a parameter without a gradient would hang it."""
    cfg = load(repo_root, detector, 's12')
    if detector == 'mask_rcnn':  # a few RoIs suffice
        cfg.model.train_cfg.rpn_proposal.update(nms_pre=200, max_per_img=100)
        cfg.model.train_cfg.rcnn.sampler.num = 64
    torch.manual_seed(0)
    model = build(cfg)
    model.init_weights()
    model.train()
    inputs = torch.randn(1, 3, 128, 192)
    losses = model.loss(inputs, [_gt_sample(128, 192)])
    total = sum(sum(v) if isinstance(v, list) else v for k, v in losses.items() if 'loss' in k)
    total.backward()
    unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not unused, unused
    feats = model.backbone(inputs)
    expected = [(1, 128, 16, 24), (1, 320, 8, 12), (1, 512, 4, 6)]
    if detector == 'mask_rcnn':
        expected.insert(0, (1, 64, 32, 48))
    assert [tuple(f.shape) for f in feats] == expected
