"""bf16 inference of whole models: network in bf16, post-processing in fp32.

Real mmdet/mmseg models (one-block-per-stage PoolFormer-S12 configs of this project), mmdet's
``inference_detector``, mmseg's ``inference_model`` and mmengine's Runner test loop with
``test_cfg.fp16=True`` on the shared mini datasets. bf16 autocast runs on any CPU (emulated
where the CPU has no bf16 units), so these tests check correctness everywhere (``force=True``).
"""
import copy
import glob
import logging
import os.path as osp

import pytest
import torch
from mmengine.config import Config, ConfigDict
from mmengine.registry import init_default_scope

from metaformer_mm.inference import (apply_bf16, bf16_state, cpu_bf16_flags,
                                     disable_bf16_inference, enable_bf16_inference, to_fp32)

BF16 = dict(device_type='cpu', dtype=torch.bfloat16)
ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def _tiny(cfg: Config) -> Config:
    cfg.model.backbone.arch = dict(base='poolformer_s12', depths=[1, 1, 1, 1])
    cfg.model.backbone.init_cfg = None
    return cfg


def _randomize_backbone(model: torch.nn.Module) -> None:
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith('backbone.') and ('norm' in name or 'layer_scale' in name):
                param.uniform_(0.5, 1.5)


def _detector(repo_root: str, name: str) -> torch.nn.Module:
    """A seeded tiny detector whose classifier is confident enough that its top detections
    are not near-ties (an untrained RetinaNet scores every anchor ~0.01)."""
    from mmdet.registry import MODELS
    cfg = _tiny(Config.fromfile(osp.join(repo_root, 'configs', 'detection', f'{name}.py')))
    cfg.test_dataloader.dataset.pipeline[1].scale = (320, 224)
    if 'roi_head' in cfg.model:
        cfg.model.test_cfg.rpn.update(nms_pre=200, max_per_img=50)
        cfg.model.test_cfg.rcnn.score_thr = 0.0
    else:
        cfg.model.test_cfg.score_thr = 0.0
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    _randomize_backbone(model)
    with torch.no_grad():
        head = model.bbox_head if hasattr(model, 'bbox_head') else model.roi_head.bbox_head
        cls = head.retina_cls if hasattr(head, 'retina_cls') else head.fc_cls
        cls.weight.normal_(0, 0.2 if hasattr(head, 'retina_cls') else 0.05)
        cls.bias.zero_()
    model.cfg = cfg
    return model.eval()


def _iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp(min=0).prod(-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None] - inter)


def _assert_detections_close(ref, out, top: int = 10) -> None:
    """Each of fp32's ``top`` detections has a bf16 twin: same label, IoU > 0.9, score within
    0.03, and the results are fp32 tensors (post-processing ran in fp32)."""
    assert out.bboxes.dtype == out.scores.dtype == torch.float32
    assert len(out) > 0 and abs(len(out) - len(ref)) <= max(2, len(ref) // 10)
    iou = _iou(ref.bboxes[:top], out.bboxes)
    same = ref.labels[:top, None] == out.labels[None]
    close = (ref.scores[:top, None] - out.scores[None]).abs() < 0.03
    assert ((iou > 0.9) & same & close).any(1).all(), (ref[:top], out)


def _record_dtypes(module: torch.nn.Module, seen: list):
    return module.register_forward_hook(
        lambda m, i, o: seen.append(o[0].dtype if isinstance(o, (tuple, list)) else o.dtype))


# --------------------------------------------------------------------------- the problem
def test_mmcv_cpu_ops_have_no_bf16_kernels():
    """Why post-processing must run in fp32: autocast alone reaches these ops with bf16."""
    from mmcv.ops import RoIAlign, nms
    boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 11., 11.]])
    with pytest.raises(RuntimeError, match='BFloat16'):
        nms(boxes.bfloat16(), torch.tensor([0.9, 0.8]).bfloat16(), 0.5)
    with pytest.raises(RuntimeError, match='BFloat16'):
        RoIAlign((2, 2), 1.0, 0)(torch.randn(1, 4, 8, 8).bfloat16(),
                                 torch.tensor([[0., 1., 1., 6., 6.]]).bfloat16())


def test_mmengine_fp16_switch_is_bf16_on_cpu():
    from mmengine.runner.amp import autocast
    with autocast(enabled=True):  # what TestLoop/ValLoop(fp16=True) enter around each step
        assert torch.is_autocast_enabled('cpu')
        assert torch.get_autocast_dtype('cpu') == torch.bfloat16


# --------------------------------------------------------------------------- detectors
@pytest.mark.parametrize('outer_autocast', [True, False])
def test_retinanet_inference_detector_bf16(repo_root, data_dir, outer_autocast):
    from mmdet.apis import inference_detector
    model = _detector(repo_root, 'retinanet_poolformer_s12')
    image = osp.join(data_dir, 'demo', 'demo.jpg')
    ref = inference_detector(model, image).pred_instances
    if outer_autocast:
        with torch.autocast(**BF16), pytest.raises(RuntimeError, match='BFloat16'):
            inference_detector(model, image)  # the crash this module fixes

    enable_bf16_inference(model, force=True)
    state = bf16_state(model)
    assert state.use_bf16 and state.fp32_parts == ['bbox_head.predict_by_feat']
    assert state.channels_last == ['neck', 'bbox_head']
    assert model.neck.fpn_convs[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
    neck, head = [], []
    hooks = [_record_dtypes(model.neck, neck), _record_dtypes(model.bbox_head.retina_cls, head)]
    if outer_autocast:
        with torch.autocast(**BF16):
            out = inference_detector(model, image).pred_instances
    else:  # the mechanism alone turns bf16 on
        out = inference_detector(model, image).pred_instances
    for hook in hooks:
        hook.remove()
    assert neck == [torch.bfloat16] and set(head) == {torch.bfloat16}
    assert state.calls == {'bf16': 1, 'fp32': 0} and state.failed is None
    _assert_detections_close(ref, out)

    disable_bf16_inference(model)
    assert bf16_state(model) is None and 'forward' not in model.__dict__
    assert 'predict_by_feat' not in model.bbox_head.__dict__
    assert model.neck.fpn_convs[0].conv.weight.is_contiguous()
    again = inference_detector(model, image).pred_instances
    assert torch.equal(again.bboxes, ref.bboxes)


def test_mask_rcnn_inference_detector_bf16(repo_root, data_dir):
    from mmdet.apis import inference_detector
    from mmdet.structures.bbox import bbox2roi
    model = _detector(repo_root, 'mask_rcnn_poolformer_s12')
    image = osp.join(data_dir, 'demo', 'demo.jpg')
    ref = inference_detector(model, image).pred_instances
    x = torch.randn(1, 3, 224, 320)
    with torch.no_grad():
        feats = model.extract_feat(x)
        rois = bbox2roi([ref.bboxes[:20] * 0.5])  # fixed RoIs: no NMS near-ties to compare
        ref_bbox = model.roi_head._bbox_forward(feats, rois)
        ref_mask = model.roi_head._mask_forward(feats, rois)['mask_preds']

    enable_bf16_inference(model, force=True)
    assert bf16_state(model).fp32_parts == [
        'rpn_head.predict_by_feat', 'roi_head.bbox_roi_extractor.forward',
        'roi_head.bbox_head.predict_by_feat', 'roi_head.mask_roi_extractor.forward',
        'roi_head.mask_head.predict_by_feat']
    rois_seen, masks_seen = [], []
    hooks = [_record_dtypes(model.roi_head.bbox_roi_extractor, rois_seen),
             _record_dtypes(model.roi_head.mask_head, masks_seen)]
    with torch.autocast(**BF16):
        out = inference_detector(model, image).pred_instances
    for hook in hooks:
        hook.remove()
    assert rois_seen == [torch.float32]  # RoIAlign ran on fp32 features
    assert masks_seen == [torch.bfloat16]  # the mask head's convs ran in bf16
    assert out.bboxes.dtype == out.scores.dtype == torch.float32 and len(out) > 0
    assert out.masks.dtype == torch.bool and out.masks.shape[1:] == (427, 640)

    # An untrained two-stage model's proposals are near-ties, so compare on fixed RoIs.
    with torch.no_grad(), torch.autocast(**BF16):
        feats = model.extract_feat(x)
        bbox = model.roi_head._bbox_forward(feats, rois)
        mask = model.roi_head._mask_forward(feats, rois)['mask_preds']
    for a, b in ((ref_bbox['cls_score'], bbox['cls_score']),
                 (ref_bbox['bbox_pred'], bbox['bbox_pred']), (ref_mask, mask)):
        assert float((a - b.float()).abs().max()) < 3e-2 * float(a.max() - a.min())
    # (channels-last features fed to mmcv's RoIAlign as they are gave errors of ~50% here)
    labels = ref_bbox['cls_score'].argmax(1) == bbox['cls_score'].float().argmax(1)
    assert labels.float().mean() >= 0.9


def test_bf16_failure_falls_back_to_fp32_once():
    """A model part without a bf16 kernel (mmcv's RoIAlign inside the network): logged once,
    fp32 from then on, no crash."""
    from mmcv.ops import RoIAlign
    from mmengine.logging import MMLogger
    from mmengine.model import BaseModel

    class Pooled(BaseModel):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.pool = RoIAlign((2, 2), 1.0, 0)

        def forward(self, inputs, data_samples=None, mode='tensor'):
            rois = torch.tensor([[0., 1., 1., 6., 6.]])
            return self.pool(self.conv(inputs), rois.to(inputs.dtype))

    model = Pooled().eval()
    x = torch.randn(1, 3, 8, 8)
    ref = model(x)
    enable_bf16_inference(model, force=True)
    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = MMLogger.get_current_instance()
    logger.addHandler(handler)
    try:
        first, second = model(x), model(x)
    finally:
        logger.removeHandler(handler)
    assert torch.equal(first, ref) and torch.equal(second, ref)
    state = bf16_state(model)
    assert 'BFloat16' in state.failed and state.calls == {'bf16': 0, 'fp32': 2}
    assert sum('no bf16 kernel' in r.getMessage() for r in records) == 1


def test_no_bf16_units_runs_fp32(repo_root, monkeypatch):
    """Without bf16 units bf16 would be emulated: fp32, even under an outer autocast."""
    import metaformer_mm.inference.bf16 as bf16
    monkeypatch.setattr(bf16, 'cpu_bf16_flags', lambda: ())
    model = _detector(repo_root, 'retinanet_poolformer_s12')
    x = torch.randn(1, 3, 64, 96)
    ref = model(x, mode='tensor')
    enable_bf16_inference(model)
    assert not bf16_state(model).use_bf16
    assert 'without avx512_bf16/amx_bf16' in bf16_state(model).reason
    assert bf16.bf16_units(torch.device('cpu'))[0] is False
    with torch.autocast(**BF16):
        out = model(x, mode='tensor')
    assert out[0][0].dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_cpu_flags_reported():
    flags = cpu_bf16_flags()
    assert set(flags) <= {'amx_bf16', 'avx512_bf16'}
    if osp.exists('/proc/cpuinfo'):
        with open('/proc/cpuinfo') as f:
            words = set(f.read().split())
        assert set(flags) == {'amx_bf16', 'avx512_bf16'} & words


def test_to_fp32_and_deepcopy(repo_root):
    from mmengine.structures import InstanceData
    cfg = ConfigDict(score_thr=0.05)
    inst = InstanceData(bboxes=torch.ones(2, 4, dtype=torch.bfloat16),
                        labels=torch.tensor([1, 2]))
    args = to_fp32((cfg, [torch.ones(1, dtype=torch.float16)], {'x': inst}))
    assert args[0] is cfg  # configs pass through untouched
    assert args[1][0].dtype == torch.float32
    cast = args[2]['x']
    assert cast.bboxes.dtype == torch.float32 and cast.labels.dtype == torch.int64
    assert inst.bboxes.dtype == torch.bfloat16  # the caller's element is not changed
    model = enable_bf16_inference(_detector(repo_root, 'retinanet_poolformer_s12'), force=True)
    clone = copy.deepcopy(model)
    assert clone.forward.model is clone and clone.bbox_head.predict_by_feat.module is \
        clone.bbox_head
    with pytest.raises(TypeError, match='nn.Module'):
        enable_bf16_inference('model')


# --------------------------------------------------------------------------- segmentation
def test_semantic_fpn_inference_model_bf16(repo_root, data_dir):
    from mmseg.apis import inference_model
    from mmseg.registry import MODELS
    cfg = _tiny(Config.fromfile(osp.join(repo_root, 'configs', 'segmentation',
                                         'fpn_poolformer_s12.py')))
    cfg.test_pipeline[1].scale = (512, 256)
    cfg.test_dataloader.dataset.pipeline = cfg.test_pipeline
    init_default_scope('mmseg')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    _randomize_backbone(model)
    model.cfg = cfg
    model.eval()
    images = sorted(glob.glob(osp.join(data_dir, 'ade_mini', 'ADEChallengeData2016', 'images',
                                       'validation', '*.jpg')))
    assert len(images) == 3
    refs = [inference_model(model, image) for image in images]
    enable_bf16_inference(model, force=True)
    assert bf16_state(model).fp32_parts == ['postprocess_result', 'decode_head.predict_by_feat',
                                            'decode_head.cls_seg']
    outs = [inference_model(model, image) for image in images]
    assert bf16_state(model).calls['bf16'] == 3
    for ref, out in zip(refs, outs):
        a, b = ref.seg_logits.data, out.seg_logits.data
        assert b.dtype == torch.float32 and b.shape == a.shape
        span = float(a.max() - a.min())
        err = (a - b).abs()
        assert float(err.max()) < 2e-2 * span
        # A random-init model's logits are flat (median top-2 margin ~2.5% of their range),
        # so overall agreement is ~98%; wherever fp32's decision is clear, bf16 must agree.
        top2 = a.topk(2, dim=0).values
        clear = (top2[0] - top2[1]) > 2 * float(err.max())
        labels_a, labels_b = ref.pred_sem_seg.data[0], out.pred_sem_seg.data[0]
        assert clear.float().mean() > 0.5
        assert torch.equal(labels_a[clear], labels_b[clear])
        assert (labels_a == labels_b).float().mean() > 0.95


# --------------------------------------------------------------------------- Runner (tools/test.py)
def test_apply_bf16_config():
    cfg = Config(dict(test_cfg=dict(type='TestLoop'), val_cfg=None,
                      custom_hooks=[dict(type='EMAHook')]))
    apply_bf16(cfg)
    apply_bf16(cfg)  # idempotent
    assert cfg.test_cfg == dict(type='TestLoop', fp16=True) and cfg.val_cfg is None
    assert [h['type'] for h in cfg.custom_hooks] == ['EMAHook', 'Bf16InferenceHook']
    with pytest.raises(TypeError, match='cfg'):
        apply_bf16(['test_cfg'])


def _run_test(cfg: Config, work_dir: str):
    """Runs the Runner's test loop; returns the model, the neck's outputs of each batch and
    the metrics. The seed is fixed, so two runs of one config build the same weights."""
    from mmengine.runner import Runner
    cfg = cfg.copy()
    cfg.work_dir = work_dir
    cfg.launcher = 'none'
    cfg.randomness = dict(seed=0)
    runner = Runner.from_cfg(cfg)
    model = runner.model
    outputs = []
    hook = model.neck.register_forward_hook(
        lambda module, args, out: outputs.append([o.detach() for o in out]))
    metrics = runner.test()
    hook.remove()
    return model, outputs, metrics


def _assert_maps_close(fp32: list, bf16: list) -> None:
    """The bf16 run's neck maps equal the fp32 run's within 5% of each map's magnitude."""
    assert len(fp32) == len(bf16) > 0
    for batch, (refs, outs) in enumerate(zip(fp32, bf16)):
        for level, (ref, out) in enumerate(zip(refs, outs)):
            err = float((out.float() - ref).abs().max())
            assert err <= 0.05 * float(ref.abs().max()), (batch, level, err)


def test_runner_test_loop_fp16_retinanet(coco_mini_run, tmp_path):
    config, options = coco_mini_run(tmp_path, 'retinanet_poolformer_s12')
    cfg = Config.fromfile(config)
    cfg.merge_from_dict(dict(opt.split('=', 1) for opt in options))
    _tiny(cfg)
    _, fp32_maps, _ = _run_test(cfg, str(tmp_path / 'fp32'))
    apply_bf16(cfg, force=True)
    model, maps, metrics = _run_test(cfg, str(tmp_path / 'w'))
    # the network ran in bf16, and NMS did not crash
    assert [m[0].dtype for m in maps] == [torch.bfloat16]
    _assert_maps_close(fp32_maps, maps)
    assert 'coco/bbox_mAP' in metrics and metrics['coco/bbox_mAP'] >= 0
    assert bf16_state(model) is None  # undone after testing


def test_runner_test_loop_fp16_semantic_fpn(ade_mini_run, tmp_path):
    cfg = _tiny(Config.fromfile(ade_mini_run(tmp_path, 'fpn_poolformer_s12', iters=1)))
    _, fp32_maps, _ = _run_test(cfg, str(tmp_path / 'fp32'))
    apply_bf16(cfg, force=True)
    model, maps, metrics = _run_test(cfg, str(tmp_path / 'w'))
    assert [m[0].dtype for m in maps] == [torch.bfloat16] * 3
    _assert_maps_close(fp32_maps, maps)
    assert 0 <= metrics['mIoU'] <= 100


def test_tools_test_py_bf16_config(repo_root, ade_mini_run, tmp_path):
    """``tools/test.py --bf16``: bf16 where the CPU has bf16 units, else fp32, said once."""
    from mmseg.registry import MODELS
    base = ade_mini_run(tmp_path, 'fpn_poolformer_s12', iters=1)
    config = tmp_path / 'bf16.py'
    config.write_text(
        f'_base_ = [{base!r}]\n'
        "model = dict(backbone=dict(arch=dict(_delete_=True, base='poolformer_s12', "
        "depths=[1, 1, 1, 1])))\n"
        "custom_hooks = []\n")
    init_default_scope('mmseg')
    torch.manual_seed(0)
    model = MODELS.build(Config.fromfile(str(config)).model)
    torch.save({'state_dict': model.state_dict()}, tmp_path / 'seg.pth')
    work = tmp_path / 'work'
    from in_process import run_main  # test.py's main() in this process (this checkout's code)
    proc = run_main('tools/test.py', config, tmp_path / 'seg.pth', '--work-dir', work, '--bf16',
                    cwd=repo_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = open(glob.glob(str(work / '*' / '*.log'))[0]).read()
    if cpu_bf16_flags():
        assert 'network in bf16' in log and "fp32 for ['postprocess_result'" in log
        assert 'bf16 inference: 3 steps in bf16, 0 in fp32' in log
    else:
        assert 'bf16 would be emulated and slower' in log
    assert 'mIoU' in log


@pytest.mark.slow
def test_det_inferencer_bf16(data_dir, tmp_path):
    """mmdet's DetInferencer: ``enable_bf16_inference(inferencer.model)``, nothing else."""
    from mmdet.apis import DetInferencer
    model = _detector(ROOT, 'retinanet_poolformer_s12')
    model.cfg.dump(str(tmp_path / 'tiny.py'))
    torch.save({'state_dict': model.state_dict()}, tmp_path / 'tiny.pth')
    inferencer = DetInferencer(model=str(tmp_path / 'tiny.py'), weights=str(tmp_path / 'tiny.pth'),
                               device='cpu')
    image = osp.join(data_dir, 'demo', 'demo.jpg')
    ref = inferencer(image, no_save_vis=True)['predictions'][0]
    enable_bf16_inference(inferencer.model, force=True)
    out = inferencer(image, no_save_vis=True)['predictions'][0]
    assert bf16_state(inferencer.model).calls == {'bf16': 1, 'fp32': 0}
    assert len(out['bboxes']) == len(ref['bboxes']) > 0
    assert abs(max(out['scores']) - max(ref['scores'])) < 0.03


def test_validation_during_training_bf16(ade_mini_run, tmp_path):
    """``apply_bf16`` on a training config: validation in bf16, training untouched (fp32,
    NCHW weights) before and after it."""
    from mmengine.runner import Runner
    cfg = _tiny(Config.fromfile(ade_mini_run(tmp_path, 'fpn_poolformer_s12', iters=2)))
    cfg.train_cfg.val_interval = 1
    apply_bf16(cfg, force=True)
    assert cfg.val_cfg.fp16 and cfg.test_cfg.fp16
    cfg.work_dir = str(tmp_path / 'w')
    runner = Runner.from_cfg(cfg)
    seen = []
    runner.model.neck.register_forward_hook(
        lambda m, i, o: seen.append((m.training, o[0].dtype,
                                     m.fpn_convs[0].conv.weight.is_contiguous())))
    runner.train()
    train = [(dtype, plain) for training, dtype, plain in seen if training]
    val = [(dtype, plain) for training, dtype, plain in seen if not training]
    assert train == [(torch.float32, True)] * 2
    assert val == [(torch.bfloat16, False)] * 6  # 3 images after each of the 2 iterations
    assert bf16_state(runner.model) is None
