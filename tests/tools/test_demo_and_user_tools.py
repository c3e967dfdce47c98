"""`make demo` (short) and the user tools: get_flops, convert_checkpoint, image_demo,
visualize_features, plot_logs. Every tool runs with the command line a user types: `make demo`
(it starts the tools itself) and the peak-memory check as processes, the rest through the
tools' main() in this process."""
import json
import os
import os.path as osp
import re
import subprocess
import sys
from collections import OrderedDict

import pytest
import torch

from metaformer_mm.models.backbones.metaformer import MetaFormer
from metaformer_mm.models.backbones import SMLPNet

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO_CONFIG = osp.join(ROOT, 'configs', 'detection', 'demo', 'retinanet_poolformer_s12_shapes.py')
RETINA_S12 = osp.join(ROOT, 'configs', 'detection', 'retinanet_poolformer_s12.py')


def run_process(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs a repo script with this interpreter; fails the test with its output if it fails."""
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f'{args[0]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}'
    return result


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    """A repo script's main(ARGS) in this process, as the command would run it; fails the test
    with its output if it fails."""
    from in_process import run_main
    result = run_main(script, *args, cwd=ROOT)
    assert result.returncode == 0, f'{script} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}'
    return result


def run_fails(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode != 0
    assert 'Traceback' not in result.stderr, result.stderr[-2000:]
    return result


def tool(relpath: str):
    """A repo script (tools/..., demo/...) as a module, to call its main() in-process."""
    from in_process import script
    return script(relpath)


def exits_with(func, *args) -> str:
    """Calls a tool's main(); returns the message it exits with (never a traceback)."""
    with pytest.raises(SystemExit) as info:
        func(*args)
    assert info.value.code not in (0, None)
    return str(info.value.code)


def _png_size(path: str):
    import cv2
    image = cv2.imread(path)
    assert image is not None, f'{path} is not an image'
    return image.shape[:2]


# =========================================================================== make demo (short)
@pytest.fixture(scope='module')
def short_demo(tmp_path_factory):
    """tools/demo/run_demo.py through its whole code path: 6 iterations on a few images.

    The untrained model scores below the config's 0.05 threshold, and CocoMetric reports
    nothing for an empty result; ``score_thr=0`` keeps its (near-zero) mAP in the log.
    """
    base = tmp_path_factory.mktemp('demo')
    data_root, work_dir = str(base / 'data'), str(base / 'work')
    result = run_process(osp.join('tools', 'demo', 'run_demo.py'), '--iters', '6', '--num-train', '16',
                 '--num-val', '4', '--data-root', data_root, '--work-dir', work_dir,
                 '--cfg-options', 'model.test_cfg.score_thr=0.0',
                 'train_dataloader.batch_size=4', 'default_hooks.logger.interval=2', timeout=900)
    with open(osp.join(work_dir, 'demo_summary.json')) as f:
        summary = json.load(f)
    return dict(stdout=result.stdout, summary=summary, data_root=data_root, work_dir=work_dir)


@pytest.mark.slow
def test_demo_runs_end_to_end(short_demo):
    out, summary, work_dir = short_demo['stdout'], short_demo['summary'], short_demo['work_dir']
    # The training went through tools/train.py and mmengine's logger, with ETA.
    assert re.search(r'Iter\(train\) \[6/6\].*eta', out)
    for key in ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75'):
        assert 0.0 <= summary['metrics'][key] <= 1.0
    assert re.search(r'bbox mAP@\[0\.5:0\.95\] = \d\.\d{3}', out)
    assert summary['iters'] == 6 and summary['num_val'] == 4
    assert set(summary['seconds']) == {'dataset', 'train+val', 'inference', 'plot', 'total'}
    # Files written where the demo says.
    assert osp.basename(summary['checkpoint']) == 'iter_6.pth' and osp.isfile(summary['checkpoint'])
    assert summary['prediction'] == osp.join(work_dir, 'prediction.jpg')
    # ground truth | prediction, each drawn 3x (160 px is too small to read), under a title strip
    assert _png_size(summary['prediction']) == (24 + 480, 2 * 480)
    assert f'prediction written to {summary["prediction"]}' in out
    h, w = _png_size(summary['curves'])
    assert w > 2 * h
    # The schedule was scaled to the short run: warm-up and cosine decay within 6 iterations.
    dumped = osp.join(work_dir, osp.basename(DEMO_CONFIG))
    from mmengine.config import Config
    cfg = Config.fromfile(dumped)
    assert cfg.train_cfg.max_iters == 6 and cfg.param_scheduler[1].end == 6
    assert cfg.train_dataloader.dataset.data_root.rstrip('/') == short_demo['data_root']


@pytest.mark.slow
def test_demo_dataset_is_the_seeded_one(short_demo):
    from metaformer_mm.datasets.shapes import dataset_info
    with open(osp.join(short_demo['data_root'], 'annotations', 'instances_val.json')) as f:
        info = json.load(f)['info']
    expected = dataset_info(16, 4, 160, 0, 4, (24, 64))
    assert info == dict(expected, split='val')


def test_demo_config_changes_only_data_scale_and_schedule(repo_root):
    """The demo config inherits the real RetinaNet + PoolFormer-S12 config; only data, scale
    and schedule (and the 3 classes, random init) differ."""
    from mmengine.config import Config
    demo, real = Config.fromfile(DEMO_CONFIG), Config.fromfile(RETINA_S12)
    assert demo.model.backbone.init_cfg is None
    assert demo.model.bbox_head.num_classes == 3
    backbone = dict(demo.model.backbone, init_cfg=real.model.backbone.init_cfg)
    assert backbone == real.model.backbone
    assert demo.model.neck == real.model.neck
    assert demo.optim_wrapper.optimizer.type == 'AdamW'
    assert demo.optim_wrapper.optimizer.lr == 5e-4
    assert demo.optim_wrapper.optimizer.weight_decay == real.optim_wrapper.optimizer.weight_decay
    assert demo.train_dataloader.batch_size == 8
    assert demo.train_cfg.max_iters == 350
    assert [s.type for s in demo.param_scheduler] == ['LinearLR', 'CosineAnnealingLR']
    assert demo.val_evaluator.type == 'CocoMetric'
    scales = [t.scale for t in demo.train_pipeline + demo.test_pipeline if t.type == 'Resize']
    assert scales == [(160, 160), (160, 160)]


# =========================================================================== image_demo
@pytest.mark.slow
def test_image_demo_detection_with_the_demo_checkpoint(short_demo, tmp_path):
    summary = short_demo['summary']
    image = osp.join(short_demo['data_root'], 'val', '000000.jpg')
    config = osp.join(short_demo['work_dir'], osp.basename(DEMO_CONFIG))
    out_file = str(tmp_path / 'pred.jpg')
    result = run(osp.join('demo', 'image_demo.py'), image, config, summary['checkpoint'],
                 '--out-file', out_file, '--score-thr', '0.0', '--device', 'cpu')
    assert _png_size(out_file) == (480, 480)  # small images are drawn enlarged
    # score_thr 0: all 100 kept detections are listed, with the dataset's class names.
    found = re.search(r'(\d+) objects with score >= 0.0: (.*)', result.stdout)
    assert found and int(found.group(1)) == 100
    assert set(re.findall(r'(square|circle|triangle) \d\.\d\d', found.group(2)))
    assert f'prediction written to {out_file}' in result.stdout


def test_image_demo_segmentation_in_fp32_and_bf16(tmp_path, data_dir):
    """mmseg's API for a segmentation config (random-weight Semantic FPN + PoolFormer-S12), in
    fp32 and with ``--bf16``: on a CPU with bf16 units the network runs in bf16 and labels the
    image as fp32 does; without them a warning says so and the run is fp32's exactly."""
    import metaformer_mm  # noqa: F401
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS

    from metaformer_mm.inference.bf16 import cpu_bf16_flags
    config = osp.join(ROOT, 'configs', 'segmentation', 'fpn_poolformer_s12.py')
    cfg = Config.fromfile(config)
    init_default_scope('mmseg')
    cfg.model.backbone.init_cfg = None
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    classes = tuple(f'class{i}' for i in range(150))
    palette = [[i, 255 - i, (7 * i) % 256] for i in range(150)]
    ckpt = str(tmp_path / 'fpn.pth')
    torch.save({'state_dict': model.state_dict(),
                'meta': {'dataset_meta': {'classes': classes, 'palette': palette}}}, ckpt)
    image = osp.join(data_dir, 'demo', 'ade_demo.jpg')
    summaries = {}
    for precision in ('fp32', 'bf16'):
        out_file = str(tmp_path / f'seg_{precision}.jpg')
        extra = ['--bf16'] if precision == 'bf16' else []
        result = run(osp.join('demo', 'image_demo.py'), image, config, ckpt, '--out-file',
                     out_file, *extra)
        assert _png_size(out_file) == (512, 683)
        found = re.search(r'\d+ classes in the image; largest: (class\d+) (\d+)%', result.stdout)
        assert found, result.stdout
        summaries[precision] = (found.group(0), found.group(1), int(found.group(2)),
                                result.stdout + result.stderr)
    emulated = 'bf16 would be emulated and slower, running fp32'
    assert emulated not in summaries['fp32'][3]
    if cpu_bf16_flags():
        assert emulated not in summaries['bf16'][3]
        assert summaries['bf16'][1] == summaries['fp32'][1]  # the same largest class
        assert abs(summaries['bf16'][2] - summaries['fp32'][2]) <= 5
    else:
        assert emulated in summaries['bf16'][3]
        assert summaries['bf16'][0] == summaries['fp32'][0]


def test_image_demo_reports_missing_files(tmp_path):
    message = exits_with(tool('demo/image_demo.py').main,
                         [str(tmp_path / 'none.jpg'), RETINA_S12, str(tmp_path / 'none.pth')])
    assert 'image file not found' in message
    empty = tmp_path / 'empty.jpg'
    empty.write_bytes(b'')
    text = tmp_path / 'notes.jpg'
    text.write_text('not an image')
    for bad in (empty, text):
        message = exits_with(tool('demo/image_demo.py').main, [str(bad), RETINA_S12, 'x.pth'])
        assert f'cannot read image {bad}' in message


def test_image_demo_names_and_unknown_names(tmp_path, data_dir):
    main = tool('demo/image_demo.py').main
    image = osp.join(data_dir, 'demo', 'demo.jpg')
    message = exits_with(main, [image, 'retinanet_poolformer_s13', str(tmp_path / 'x.pth')])
    assert 'closest' in message and 'retinanet_poolformer_s12' in message
    # A name without a checkpoint: the index has only a Google Drive page for this one.
    message = exits_with(main, [image, 'retinanet_poolformer_s12'])
    assert 'download it by hand from https://drive.google.com/' in message
    message = exits_with(main, [image, 'retinanet_poolformer_s12', str(tmp_path / 'none.pth')])
    assert 'checkpoint file not found' in message


@pytest.fixture(scope='module')
def random_demo_detector(tmp_path_factory):
    """A random-weight checkpoint of the demo config (3 shape classes), saved as training
    would: with the dataset's class names."""
    import metaformer_mm  # noqa: F401
    from mmdet.registry import MODELS
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(DEMO_CONFIG)
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    path = str(tmp_path_factory.mktemp('random_detector') / 'retina_random.pth')
    torch.save({'state_dict': model.state_dict(),
                'meta': {'dataset_meta': {'classes': ('square', 'circle', 'triangle')}}}, path)
    return path


def test_image_demo_draws_a_large_image_at_a_bounded_size(random_demo_detector, tmp_path):
    """A 6000x4000 photo: inference on the full image, the picture at --max-side pixels, and
    the process's peak memory far below what drawing at full size takes (measured: 0.9 GB at
    the default 2048 px, 3.5 GB at --max-side 6000)."""
    import cv2
    import numpy as np
    image = str(tmp_path / 'large.jpg')
    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (400, 600, 3), dtype=np.uint8)
    cv2.imwrite(image, cv2.resize(small, (6000, 4000), interpolation=cv2.INTER_NEAREST))
    out_file = str(tmp_path / 'large_pred.jpg')
    script = ('import runpy, sys\n'
              f'sys.argv = {["image_demo.py", image, DEMO_CONFIG, random_demo_detector, "--out-file", out_file, "--score-thr", "0"]!r}\n'
              "runpy.run_path('demo/image_demo.py', run_name='__main__')\n"
              "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
              "print('peak_kb', hwm.split()[1])\n")
    # VmHWM, not ru_maxrss: Linux carries the parent's peak into ru_maxrss across fork and
    # exec, so inside a long pytest process it reported pytest's own 3 GB, not the demo's.
    result = subprocess.run([sys.executable, '-c', script], cwd=ROOT, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert _png_size(out_file) == (1365, 2048)  # the default --max-side
    assert re.search(r'100 objects with score >= 0.0', result.stdout)
    peak_mb = int(re.search(r'peak_kb (\d+)', result.stdout).group(1)) / 1024
    # 0.9 GB measured; drawing at full size (--max-side 6000) takes 3.5 GB
    assert peak_mb < 2000, f'image_demo peaked at {peak_mb:.0f} MB'


def test_image_demo_ground_truth_beside_predictions(random_demo_detector, tmp_path):
    """--gt-ann: the annotated boxes in a left panel, the predictions (highest score last,
    i.e. on top) in the right one, each titled; the summary lists the highest score first."""
    import numpy as np
    from metaformer_mm.datasets.shapes import make_shapes_dataset
    root = str(tmp_path / 'shapes')
    make_shapes_dataset(root, num_train=1, num_val=2, seed=0)
    image = osp.join(root, 'val', '000000.jpg')
    ann = osp.join(root, 'annotations', 'instances_val.json')
    out_file = str(tmp_path / 'gt_pred.jpg')
    result = run(osp.join('demo', 'image_demo.py'), image, DEMO_CONFIG, random_demo_detector,
                 '--out-file', out_file, '--score-thr', '0.0', '--gt-ann', ann)
    assert _png_size(out_file) == (24 + 480, 2 * 480)
    scores = [float(x) for x in re.findall(r'(?:square|circle|triangle) (\d\.\d\d)',
                                           result.stdout)]
    assert len(scores) == 100 and scores == sorted(scores, reverse=True)
    import cv2
    picture = cv2.imread(out_file)
    # the title strip is white with dark text; the left (ground-truth) panel has boxes drawn
    assert picture[:24].mean() > 200 and (picture[:24] < 100).any()
    plain = cv2.resize(cv2.imread(image), (480, 480), interpolation=cv2.INTER_CUBIC)
    assert np.abs(picture[24:, :480].astype(int) - plain.astype(int)).mean() > 1
    other = str(tmp_path / 'other.jpg')  # an image the annotation file does not hold
    cv2.imwrite(other, cv2.imread(image))
    message = exits_with(tool('demo/image_demo.py').main,
                         [other, DEMO_CONFIG, random_demo_detector, '--gt-ann', ann,
                          '--out-file', str(tmp_path / 'x.jpg')])
    assert 'instances_val.json: no image named other.jpg' in message


# =========================================================================== get_flops
def _flops():
    return tool('tools/analysis/get_flops.py')


def test_get_flops_retinanet_s12_paper_counts():
    result = run(osp.join('tools', 'analysis', 'get_flops.py'), RETINA_S12, '--shape', '128', '160',
                 '--paper')
    out = result.stdout
    assert 'input 1x3x128x160' in out
    whole = re.search(r'\| whole model \| ([\d.]+)M \| ([\d.]+) \|', out)
    backbone = re.search(r'\| backbone \| ([\d.]+)M \| ([\d.]+) \|', out)
    # The paper's RetinaNet with PoolFormer-S12 has 21.65M parameters.
    assert float(whole.group(1)) == pytest.approx(21.65, abs=0.01)
    # Stages 1..3 only (RetinaNet): no stride-4 output norm.
    assert float(backbone.group(1)) == pytest.approx(11.40, abs=0.01)
    assert 0 < float(backbone.group(2)) < float(whole.group(2))
    # The paper's S12: 12M params (11.92M exactly) and 1.8 GMACs at 224x224.
    assert re.search(r'ImageNet classifier, params \| 11\.92M \| 12\.0M', out)
    assert re.search(r'GMACs at 224x224 \| 1\.8\d \| 1\.8', out)
    assert re.search(r'whole RetinaNet, params \| 21\.65M \| 21\.65M', out)


def test_get_flops_counts_scale_with_the_input_and_attention_is_counted():
    get_flops = _flops()
    small = get_flops.analyse(RETINA_S12, (96, 96))
    large = get_flops.analyse(RETINA_S12, (192, 192))
    assert small['params'] == large['params']
    # Convolutions dominate: MACs grow with the pixel count (4x), up to the fixed-size parts.
    assert 3.6 < large['backbone_macs'] / small['backbone_macs'] < 4.4
    caformer = get_flops.analyse(
        osp.join(ROOT, 'configs', 'segmentation', 'fpn_caformer_s18.py'), (96, 96), paper=True)
    # CAFormer-S18: 26M / 4.1 GMACs in the paper; without the attention products it is 3.9.
    assert caformer['paper_backbone'] == (26, 4.1)
    assert caformer['classifier_macs'] / 1e9 == pytest.approx(4.1, abs=0.05)
    assert caformer['classifier_params'] / 1e6 == pytest.approx(26, abs=0.5)


def test_get_flops_segmentation_and_two_stage_detector():
    get_flops = _flops()
    seg = get_flops.analyse(osp.join(ROOT, 'configs', 'segmentation', 'fpn_poolformer_s12.py'),
                       (128, 128), paper=True)
    assert seg['family'] == 'Semantic FPN'
    assert seg['params'] / 1e6 == pytest.approx(15.67, abs=0.01) and seg['paper_model'] == 15.67
    mask = get_flops.analyse(osp.join(ROOT, 'configs', 'detection', 'mask_rcnn_poolformer_s12.py'),
                        (128, 128), paper=True)
    assert mask['family'] == 'Mask R-CNN'
    assert mask['params'] / 1e6 == pytest.approx(31.57, abs=0.01)
    assert mask['macs'] > mask['backbone_macs'] > 0


# =========================================================================== convert_checkpoint
TINY_POOLFORMER = dict(base='poolformer_s12', depths=[1, 1, 2, 1], dims=[16, 32, 48, 64])
CONVERSIONS = [
    # (reference folder, file, --from, model builder, expected layout)
    ('poolformer_tiny', 'official.pth', 'official',
     lambda: MetaFormer(arch=TINY_POOLFORMER, fork_feat=False, num_classes=10), 'official_v1'),
    ('poolformer_tiny', 'timm.pth', 'timm',
     lambda: MetaFormer(arch=TINY_POOLFORMER, fork_feat=False, num_classes=10), 'timm'),
    ('poolformer_tiny', 'mmpretrain.pth', 'mmpretrain',
     lambda: MetaFormer(arch=TINY_POOLFORMER, fork_feat=False, num_classes=10), 'mmpretrain'),
    ('smlpnet_tiny', 'official.pth', 'spach',
     lambda: SMLPNet(arch=dict(base='smlpnet_tiny', dims=[8, 16, 32, 64], depths=[1, 1, 2, 1]),
                     image_size=64, fork_feat=False, num_classes=10), 'spach'),
    ('caformer_tiny', 'official.pth', 'official',
     lambda: MetaFormer(arch=dict(base='caformer_s18', depths=[1, 1, 2, 1], dims=[16, 32, 64, 64]),
                        fork_feat=False, num_classes=10), 'official_v2'),
    ('poolformerv2_tiny', 'official.pth', 'auto',
     lambda: MetaFormer(arch=dict(base='poolformerv2_s12', depths=[1, 1, 2, 1],
                                  dims=[16, 32, 48, 64]), fork_feat=False, num_classes=10),
     'official_v2'),
]


@pytest.mark.parametrize('folder, name, source, build, layout', CONVERSIONS,
                         ids=[f'{c[0]}-{c[2]}' for c in CONVERSIONS])
def test_convert_checkpoint_loads_strictly_and_reproduces_the_original(
        reference_dir, tmp_path, capsys, folder, name, source, build, layout):
    dst = str(tmp_path / 'converted.pth')
    tool('tools/convert_checkpoint.py').main([osp.join(reference_dir, folder, name), dst,
                                              '--from', source])
    assert f'from {layout} to the metaformer_mm layout' in capsys.readouterr().out
    saved = torch.load(dst, weights_only=True)
    assert saved['meta']['converted_from'] == layout
    model = build().eval()
    model.load_state_dict(saved['state_dict'], strict=True)
    x = torch.load(osp.join(reference_dir, folder, 'input.pt'), weights_only=True)
    expected = torch.load(osp.join(reference_dir, folder, 'logits.pt'), weights_only=True)
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, rtol=1e-4, atol=1e-5)


def test_converted_file_as_init_cfg_gives_the_reference_features(reference_dir, tmp_path):
    dst = str(tmp_path / 'poolformer_tiny.pth')
    # The README's command, as typed.
    run('tools/convert_checkpoint.py', osp.join(reference_dir, 'poolformer_tiny', 'timm.pth'), dst)
    model = MetaFormer(arch=TINY_POOLFORMER, init_cfg=dict(type='Pretrained', checkpoint=dst))
    model.init_weights()
    x = torch.load(osp.join(reference_dir, 'poolformer_tiny', 'input.pt'), weights_only=True)
    expected = torch.load(osp.join(reference_dir, 'poolformer_tiny', 'features.pt'),
                          weights_only=True)
    with torch.no_grad():
        for ours, ref in zip(model.eval()(x), expected):
            torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def _mmdet2_retinanet_file(reference_dir: str, path: str):
    """A RetinaNet checkpoint in the sail-sg mmdet 2.x layout, with the tiny reference backbone.

    Backbone: the original's keys (``network.N``, output norms ``norm2/4/6``, no ``norm0``);
    neck and head: mmdet's names, which 3.x kept from 2.x. Returns the 3.x model it fits.
    """
    import metaformer_mm  # noqa: F401
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmdet.registry import MODELS
    cfg = Config.fromfile(RETINA_S12)
    cfg.model.backbone.arch = dict(TINY_POOLFORMER)
    cfg.model.backbone.init_cfg = None
    cfg.model.neck.in_channels = [32, 48, 64]
    init_default_scope('mmdet')
    torch.manual_seed(0)
    model = MODELS.build(cfg.model).eval()
    official = torch.load(osp.join(reference_dir, 'poolformer_tiny', 'official.pth'),
                          weights_only=True)
    state = OrderedDict(('backbone.' + k, v) for k, v in official.items()
                        if not k.startswith(('head.', 'norm.')))
    for i, dim in zip((2, 4, 6), (32, 48, 64)):
        state[f'backbone.norm{i}.weight'] = torch.ones(dim)
        state[f'backbone.norm{i}.bias'] = torch.zeros(dim)
    state.update((k, v) for k, v in model.state_dict().items() if not k.startswith('backbone.'))
    torch.save({'state_dict': state, 'meta': {'CLASSES': ('a', 'b'), 'mmdet_version': '2.19.0'}},
               path)
    return model


@pytest.mark.parametrize('source', ['mmdet2', 'auto'])
def test_convert_checkpoint_mmdet2_release_layout(reference_dir, tmp_path, capsys, source):
    src, dst = str(tmp_path / 'retina_2x.pth'), str(tmp_path / 'retina_3x.pth')
    model = _mmdet2_retinanet_file(reference_dir, src)
    tool('tools/convert_checkpoint.py').main([src, dst, '--from', source])
    assert 'mmdet2 (backbone: official_v1)' in capsys.readouterr().out
    saved = torch.load(dst, weights_only=True)
    assert saved['meta']['dataset_meta']['classes'] == ('a', 'b')
    model.load_state_dict(saved['state_dict'], strict=True)
    x = torch.load(osp.join(reference_dir, 'poolformer_tiny', 'input.pt'), weights_only=True)
    expected = torch.load(osp.join(reference_dir, 'poolformer_tiny', 'features.pt'),
                          weights_only=True)
    with torch.no_grad():
        for ours, ref in zip(model.backbone(x), expected[1:]):
            torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5)


def test_convert_checkpoint_refuses_wrong_source_and_overwrites_only_with_force(
        reference_dir, tmp_path):
    main = tool('tools/convert_checkpoint.py').main
    src = osp.join(reference_dir, 'poolformer_tiny', 'official.pth')
    dst = tmp_path / 'out.pth'
    message = exits_with(main, [src, str(dst), '--from', 'spach'])
    assert 'official_v1 layout, not --from spach' in message and not dst.exists()
    dst.write_bytes(b'keep me')
    assert 'exists' in exits_with(main, [src, str(dst)]) and dst.read_bytes() == b'keep me'
    main([src, str(dst), '--force'])
    assert 'state_dict' in torch.load(str(dst), weights_only=True)
    bad = tmp_path / 'bad.pth'
    torch.save({'state_dict': {'foo.weight': torch.zeros(1)}}, str(bad))
    assert 'unrecognised checkpoint layout' in exits_with(main, [str(bad), str(tmp_path / 'x.pth')])
    # Errors from the command line are one line, not a traceback.
    result = run_fails('tools/convert_checkpoint.py', str(bad), str(tmp_path / 'x.pth'))
    assert result.stderr.startswith('error: ')


# =========================================================================== visualize_features
@pytest.mark.slow
def test_visualize_features_with_the_demo_checkpoint(short_demo, tmp_path, data_dir):
    out_file = str(tmp_path / 'features.png')
    image = osp.join(data_dir, 'demo', 'demo.jpg')  # 640x427
    result = run(osp.join('tools', 'analysis', 'visualize_features.py'), image, RETINA_S12,
                 short_demo['summary']['checkpoint'], '--out-file', out_file, '--size', '256')
    # 256x170 -> 256x160 (multiples of 32); all four stages although RetinaNet uses 1..3.
    assert ('feature maps (C, H, W): [(64, 40, 64), (128, 20, 32), (320, 10, 16), '
            '(512, 5, 8)]') in result.stdout
    assert 'random weights' not in result.stdout
    h, w = _png_size(out_file)
    assert 0.5 < h / w < 1.2


def test_visualize_features_loads_whole_model_weights(tmp_path, data_dir):
    """The backbone part of a detector checkpoint is what the tool draws with."""
    visualize_features = tool('tools/analysis/visualize_features.py')
    random_backbone, _, report = visualize_features.build_backbone(RETINA_S12, None)
    assert report is None
    state = OrderedDict(('backbone.' + k, v + 0.5) for k, v in random_backbone.state_dict().items()
                        if not k.startswith('out_norms.0'))
    state['bbox_head.retina_cls.weight'] = torch.zeros(1)
    ckpt = str(tmp_path / 'det.pth')
    torch.save({'state_dict': state}, ckpt)
    loaded, _, report = visualize_features.build_backbone(RETINA_S12, ckpt)
    assert report['missing'] == ['out_norms.0.weight', 'out_norms.0.bias']
    for key, value in loaded.state_dict().items():
        if not key.startswith('out_norms.0'):
            assert torch.equal(value, state['backbone.' + key])

    out_file = str(tmp_path / 'random.png')
    result = visualize_features.main([osp.join(data_dir, 'demo', 'demo.jpg'), RETINA_S12,
                                      '--out-file', out_file, '--size', '128', '--reduce', 'l2'])
    assert result['report'] is None and osp.isfile(out_file)
    assert result['shapes'][0] == (64, 24, 32)  # 640x427 -> 128x96 (multiples of 32)


# =========================================================================== plot_logs
@pytest.mark.slow
def test_plot_logs_of_the_demo_run(short_demo, tmp_path):
    out_file = str(tmp_path / 'curves.png')
    result = run(osp.join('tools', 'analysis', 'plot_logs.py'), short_demo['work_dir'],
                 '--keys', 'loss', 'bbox_mAP', '--out-file', out_file)
    # Train scalars every 2 iterations; validation 5 times per run (every 2 of 6 iterations).
    assert re.search(r'loss: 3 points, last [\d.]+ at iteration 6', result.stdout)
    assert re.search(r'coco/bbox_mAP: 3 points, last [\d.e-]+ at iteration 6', result.stdout)
    h, w = _png_size(out_file)
    assert w > 1.5 * h


def test_plot_logs_epoch_based_log_and_errors(tmp_path, capsys):
    run_dir = tmp_path / 'work' / '20250101_000000' / 'vis_data'
    run_dir.mkdir(parents=True)
    records = [dict(lr=0.01, loss=2.0 - 0.1 * i, epoch=1 + i // 5, iter=10 * (i + 1),
                    step=10 * (i + 1)) for i in range(10)]
    records += [{'mIoU': 10.0, 'step': 1}, {'mIoU': 20.0, 'step': 2}]
    (run_dir / 'scalars.json').write_text('\n'.join(json.dumps(r) for r in records) + '\n')
    out_file = str(tmp_path / 'seg.png')
    main = tool('tools/analysis/plot_logs.py').main
    main([str(tmp_path / 'work'), '--keys', 'loss', 'mIoU', '--out-file', out_file])
    out = capsys.readouterr().out
    assert 'loss: 10 points, last 1.1 at iteration 100' in out
    assert 'mIoU: 2 points, last 20 at epoch 2' in out
    assert _png_size(out_file)[1] > 1.5 * _png_size(out_file)[0]
    message = exits_with(main, [str(tmp_path / 'work'), '--keys', 'bbox_mAP', '--out-file', out_file])
    assert "no logged scalar matches 'bbox_mAP'" in message and "'mIoU'" in message
    assert 'no mmengine scalars log' in exits_with(main, [str(tmp_path / 'empty'),
                                                          '--out-file', out_file])
