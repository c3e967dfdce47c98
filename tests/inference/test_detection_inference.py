"""mmdet's inference API with our configs, and converting sail-sg (mmdet 2.x) checkpoints."""
import json
import os.path as osp
import pickle
from collections import OrderedDict

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from legacy_layouts import to_legacy
from metaformer_mm.checkpoint import (CheckpointError, convert_detector_checkpoint,
                                      detector_backbone_layout, save_converted)

def coco_classes():
    from mmdet.datasets import CocoDataset
    return tuple(CocoDataset.METAINFO['classes'])


def config_path(repo_root, name):
    return osp.join(repo_root, 'configs', 'detection', f'{name}.py')


def build_detector(cfg, seed=0):
    """The config's model with random weights everywhere (norms and layer scales included)."""
    from mmdet.registry import MODELS
    init_default_scope('mmdet')
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)
    model.init_weights()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith('backbone.') and ('norm' in name or 'layer_scale' in name):
                param.uniform_(0.5, 1.5)
    return model.eval()


# --------------------------------------------------------------------------- inference API
@pytest.fixture(scope='module')
def retinanet_checkpoint(repo_root, tmp_path_factory):
    """A freshly built RetinaNet-S12 saved in mmengine's format, with a classifier bias that
    makes an untrained model score its anchors near 0.5 (so it returns boxes)."""
    model = build_detector(Config.fromfile(config_path(repo_root, 'retinanet_poolformer_s12')))
    with torch.no_grad():
        model.bbox_head.retina_cls.bias.zero_()
    path = tmp_path_factory.mktemp('ckpt') / 'retinanet_s12.pth'
    torch.save({'state_dict': model.state_dict(),
                'meta': {'dataset_meta': {'classes': coco_classes()}}}, path)
    return str(path)


def test_init_detector_and_inference_detector(repo_root, data_dir, retinanet_checkpoint):
    from mmdet.apis import inference_detector, init_detector
    config = config_path(repo_root, 'retinanet_poolformer_s12')
    # Loading must not trigger the backbone's init_cfg: point it at a file that does not
    # exist, which init_weights() would fail on. cfg_options also keeps init_detector from
    # clearing init_cfg itself; a smaller test scale keeps CPU inference short.
    model = init_detector(config, retinanet_checkpoint, device='cpu', cfg_options={
        'model.backbone.init_cfg.checkpoint': '/nonexistent/poolformer_s12.pth.tar',
        'test_dataloader.dataset.pipeline.1.scale': (512, 352)})
    assert model.cfg.model.backbone.init_cfg.checkpoint.startswith('/nonexistent')
    assert not model.backbone.is_init  # init_weights() never ran
    reference = torch.load(retinanet_checkpoint)['state_dict']
    assert torch.equal(model.state_dict()['backbone.stem.conv.weight'],
                       reference['backbone.stem.conv.weight'])
    assert model.dataset_meta['classes'] == coco_classes()

    result = inference_detector(model, osp.join(data_dir, 'demo', 'demo.jpg'))
    pred = result.pred_instances
    assert result.ori_shape == (427, 640)
    assert pred.bboxes.shape[1] == 4 and 0 < len(pred.bboxes) <= 100
    assert float(pred.scores.min()) >= 0.05  # the config's score threshold
    assert float(pred.bboxes[:, 2].max()) <= 640 + 1e-3
    assert float(pred.bboxes[:, 3].max()) <= 427 + 1e-3
    assert int(pred.labels.max()) < 80


@pytest.mark.slow
def test_det_inferencer_saves_visualization(repo_root, data_dir, retinanet_checkpoint,
                                            tmp_path):
    from mmdet.apis import DetInferencer
    inferencer = DetInferencer(model=config_path(repo_root, 'retinanet_poolformer_s12'),
                               weights=retinanet_checkpoint, device='cpu')
    assert not inferencer.model.backbone.is_init
    out = inferencer(osp.join(data_dir, 'demo', 'demo.jpg'), out_dir=str(tmp_path),
                     no_save_pred=False, pred_score_thr=0.3)
    pred = out['predictions'][0]
    assert len(pred['bboxes']) == len(pred['scores']) == len(pred['labels']) > 0
    assert all(len(box) == 4 for box in pred['bboxes'])
    assert (tmp_path / 'vis' / 'demo.jpg').is_file()
    with open(tmp_path / 'preds' / 'demo.json') as f:
        assert json.load(f)['bboxes'] == pred['bboxes']


# --------------------------------------------------------------------------- conversion
def tiny(cfg):
    """The config with a one-block-per-stage PoolFormer: same key layout, a fraction of the cost."""
    cfg.model.backbone.arch = dict(base='poolformer_s12', depths=[1, 1, 1, 1])
    return cfg


@pytest.mark.parametrize('detector', ['retinanet', 'mask_rcnn'])
def test_convert_mmdet2_checkpoint(repo_root, detector):
    cfg = tiny(Config.fromfile(config_path(repo_root, f'{detector}_poolformer_s12')))
    model = build_detector(cfg, seed=1)
    ours = model.state_dict()
    legacy = to_legacy(ours)
    assert 'backbone.network.0.0.layer_scale_1' in legacy
    assert 'backbone.network.1.proj.weight' in legacy and 'backbone.norm6.weight' in legacy
    # RetinaNet releases have no norm0 (FORK_LAST3=1); Mask R-CNN ones have all four.
    assert ('backbone.norm0.weight' in legacy) == (detector == 'mask_rcnn')
    assert detector_backbone_layout(legacy) == 'official_v1'

    converted = convert_detector_checkpoint(legacy, 'mmdet2')
    assert list(converted) == list(ours)
    fresh = build_detector(tiny(Config.fromfile(config_path(repo_root,
                                                            f'{detector}_poolformer_s12'))),
                           seed=2)
    fresh.load_state_dict(converted, strict=True)
    from mmdet.structures import DetDataSample
    inputs = torch.randn(1, 3, 96, 128)
    samples = [DetDataSample(metainfo=dict(img_shape=(96, 128), pad_shape=(96, 128),
                                           batch_input_shape=(96, 128)))]
    with torch.no_grad():
        expected, actual = model._forward(inputs, samples), fresh._forward(inputs, samples)
    def flat(x):
        return [t for v in x for t in (flat(v) if isinstance(v, (list, tuple)) else [v])]
    for a, b in zip(flat(expected), flat(actual), strict=True):
        assert torch.equal(a, b)
    # Already converted: unchanged.
    again = convert_detector_checkpoint(converted, 'mmdet2')
    assert list(again) == list(converted)
    assert all(torch.equal(again[k], converted[k]) for k in converted)


def test_convert_mmseg0_and_errors():
    state = OrderedDict([
        ('backbone.patch_embed.proj.weight', torch.randn(8, 3, 7, 7)),
        ('backbone.network.0.0.norm1.weight', torch.randn(8)),
        ('backbone.norm0.weight', torch.randn(8)),
        ('neck.lateral_convs.0.conv.weight', torch.randn(4, 8, 1, 1)),
        ('decode_head.scale_heads.0.0.conv.weight', torch.randn(4, 4, 3, 3)),
        ('decode_head.conv_seg.weight', torch.randn(150, 4, 1, 1)),
    ])
    out = convert_detector_checkpoint(state, 'mmseg0')
    assert list(out) == ['backbone.stem.conv.weight', 'backbone.stages.0.blocks.0.norm1.weight',
                         'backbone.out_norms.0.weight', 'neck.lateral_convs.0.conv.weight',
                         'decode_head.scale_heads.0.0.conv.weight', 'decode_head.conv_seg.weight']
    assert torch.equal(out['decode_head.conv_seg.weight'], state['decode_head.conv_seg.weight'])
    with pytest.raises(ValueError, match='mmdet2'):
        convert_detector_checkpoint(state, 'mmdet1')
    with pytest.raises(CheckpointError, match='backbone'):
        convert_detector_checkpoint({'neck.x': torch.zeros(1)}, 'mmdet2')
    assert detector_backbone_layout({'backbone.conv1.weight': torch.zeros(1)}) is None


def test_convert_detector_file_keeps_classes(repo_root, tmp_path):
    from mmdet.apis import init_detector
    cfg = tiny(Config.fromfile(config_path(repo_root, 'retinanet_poolformer_s12')))
    model = build_detector(cfg)
    src, dst = tmp_path / 'released.pth', tmp_path / 'converted.pth'
    classes = tuple(f'class{i}' for i in range(80))
    # mmdet 2.x checkpoints: upper-case CLASSES in meta, next to the optimizer state.
    torch.save({'meta': {'CLASSES': classes, 'mmdet_version': '2.19.0', 'epoch': 12},
                'state_dict': to_legacy(model.state_dict()),
                'optimizer': {'state': {}, 'param_groups': []}}, src)
    converted_from, count = save_converted(str(src), str(dst), 'mmdet2')
    assert (converted_from, count) == ('mmdet2/official_v1', len(model.state_dict()))
    saved = torch.load(dst)
    assert saved['meta']['dataset_meta'] == {'classes': classes}
    cfg.dump(str(tmp_path / 'tiny.py'))
    loaded = init_detector(str(tmp_path / 'tiny.py'), str(dst), device='cpu')
    assert loaded.dataset_meta['classes'] == classes
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())


@pytest.mark.slow
def test_test_py_predicts_the_same_from_a_released_and_a_converted_file(repo_root, coco_mini_run,
                                                                       tmp_path):
    """tools/test.py on an mmdet 2.x-layout file predicts exactly what the converted file does."""
    model = build_detector(Config.fromfile(config_path(repo_root, 'retinanet_poolformer_s12')))
    with torch.no_grad():
        model.bbox_head.retina_cls.bias.zero_()
    released, converted = tmp_path / 'released.pth', tmp_path / 'converted.pth'
    torch.save({'meta': {'CLASSES': coco_classes()},
                'state_dict': to_legacy(model.state_dict())}, released)
    save_converted(str(released), str(converted), 'mmdet2')

    from in_process import run_main
    config, options = coco_mini_run(tmp_path, 'retinanet_poolformer_s12')
    preds = {}
    for name in ('released', 'converted'):
        out = tmp_path / f'{name}.pkl'
        proc = run_main('tools/test.py', config, tmp_path / f'{name}.pth',  # in this process
                        '--work-dir', tmp_path / name, '--out', out, '--cfg-options', *options,
                        cwd=repo_root)
        assert proc.returncode == 0, proc.stderr[-5000:]
        with open(out, 'rb') as f:
            preds[name] = pickle.load(f)[0]['pred_instances']
    assert len(preds['released']['bboxes']) > 0
    for key in ('bboxes', 'scores', 'labels'):
        assert torch.equal(preds['released'][key], preds['converted'][key])
