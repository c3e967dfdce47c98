"""The CUDA path (skipped without a CUDA device; run by ``tools/ci/gpu_check.sh``).

* CUDA outputs equal the CPU ones within fp32 tolerance (TF32 off), default and deploy paths,
  so no CPU-only kernel is reached with CUDA tensors (it would fail or differ);
* AMP fp16 training of a backbone stays finite (GroupNorm statistics in fp32);
* bf16 inference of a whole Semantic FPN (no mmcv CUDA op needed) and, where mmcv's CUDA ops
  are built, of RetinaNet.
"""
import copy
import os.path as osp

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')

BACKBONES = [('PoolFormer', 's12'), ('PoolFormerV2', 's12'), ('CAFormer', 's18'),
             ('ConvFormer', 's18'), ('SMLPNet', 'tiny')]


@pytest.fixture(autouse=True)
def exact_fp32():
    """cuDNN convolutions default to TF32 on Ampere and later: ~1e-3 relative error."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _backbone(kind: str, arch: str) -> torch.nn.Module:
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    import metaformer_mm  # noqa: F401
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = MODELS.build(dict(type=kind, arch=arch, fork_feat=True, out_indices=(0, 1, 2, 3)))
    model.init_weights()
    with torch.no_grad():  # non-trivial norms and layer scales
        for name, param in model.named_parameters():
            if 'norm' in name or 'scale' in name:
                param.uniform_(0.5, 1.5)
    return model.eval()


def _close(cpu_outs, cuda_outs, rel: float = 1e-4) -> None:
    for a, b in zip(cpu_outs, cuda_outs, strict=True):
        assert b.is_cuda and b.dtype == torch.float32
        span = float(a.max() - a.min())
        assert float((a - b.cpu()).abs().max()) <= rel * span, (a.shape, span)


@pytest.mark.parametrize('kind,arch', BACKBONES)
def test_backbone_cuda_equals_cpu(kind, arch):
    model = _backbone(kind, arch)
    x = torch.randn(2, 3, 224, 288)
    with torch.no_grad():
        ref = model(x)
        gpu = copy.deepcopy(model).cuda()
        _close(ref, gpu(x.cuda()))
        if hasattr(gpu, 'switch_to_deploy'):  # the fused path must work on CUDA tensors too
            _close(ref, gpu.switch_to_deploy()(x.cuda()))


@pytest.mark.parametrize('kind,arch', [('PoolFormer', 's12'), ('CAFormer', 's18')])
def test_amp_fp16_training_is_finite(kind, arch):
    model = _backbone(kind, arch).cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler('cuda')
    # Large inputs: GroupNorm statistics over C*H*W in fp16 would overflow.
    x = torch.randn(4, 3, 256, 256, device='cuda') * 30
    # The output norms compute in fp32 under autocast; the convolutions show fp16 really ran.
    conv_dtypes = set()
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    conv.register_forward_hook(lambda mod, args, out: conv_dtypes.add(out.dtype))
    for _ in range(3):
        with torch.autocast('cuda', dtype=torch.float16):
            outs = model(x)
            assert conv_dtypes == {torch.float16}
            loss = sum(o.float().pow(2).mean() for o in outs)
        assert torch.isfinite(loss)
        opt.zero_grad()
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        scaler.step(opt)
        scaler.update()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_semantic_fpn_bf16_inference_cuda(repo_root):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from metaformer_mm.inference import bf16_state, enable_bf16_inference
    if not torch.cuda.is_bf16_supported():
        pytest.skip('this CUDA device has no bf16')
    cfg = Config.fromfile(osp.join(repo_root, 'configs', 'segmentation', 'fpn_poolformer_s12.py'))
    cfg.model.backbone.init_cfg = None
    init_default_scope('mmseg')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).cuda().eval()
    x = torch.randn(1, 3, 256, 256, device='cuda')
    with torch.no_grad():
        ref = model(x, mode='tensor')
        enable_bf16_inference(model)
        assert bf16_state(model).use_bf16 and bf16_state(model).device_type == 'cuda'
        out = model(x, mode='tensor')
    assert out.dtype == torch.float32  # cls_seg ran in fp32
    assert float((ref - out).abs().max()) < 2e-2 * float(ref.max() - ref.min())


def test_retinanet_bf16_inference_cuda(repo_root):
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    from mmdet.structures import DetDataSample

    from metaformer_mm.inference import enable_bf16_inference
    try:
        from mmcv.ops import nms
        nms(torch.rand(4, 4, device='cuda') * 10, torch.rand(4, device='cuda'), 0.5)
    except (RuntimeError, ImportError) as err:
        pytest.skip(f"mmcv's CUDA ops are not built: {err}")
    cfg = Config.fromfile(osp.join(repo_root, 'configs', 'detection',
                                   'retinanet_poolformer_s12.py'))
    cfg.model.backbone.init_cfg = None
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).cuda().eval()
    enable_bf16_inference(model)
    x = torch.randn(1, 3, 320, 480, device='cuda')
    meta = dict(img_shape=(320, 480), ori_shape=(320, 480), pad_shape=(320, 480),
                batch_input_shape=(320, 480), scale_factor=(1.0, 1.0))
    with torch.no_grad():
        pred = model(x, [DetDataSample(metainfo=meta)], mode='predict')[0].pred_instances
    assert pred.bboxes.dtype == torch.float32 and pred.bboxes.is_cuda
