"""Bad input gets a clear error, nothing else: configs, checkpoints, images, datasets.

Everything goes through the entry points a user meets: mmdet's/mmseg's model builders on our
configs, a backbone's ``init_cfg``, ``init_detector``, ``tools/test.py`` and
``tools/train.py --resume``, ``inference_detector``/``inference_model`` and the dataset
classes. Backbone argument errors are covered in models/test_argument_errors.py, shape and
depth mismatches and partial files in models/test_poolformer.py; refusal of pickled callables
by ``read_checkpoint``, ``init_weights``, ``load_from`` and ``init_detector`` in
checkpoint/test_weights_only_runner_checkpoints.py.
"""
import os
import os.path as osp
import re
import shutil
import traceback
from pathlib import Path
from typing import Callable, Dict

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import metaformer_mm  # noqa: F401
from metaformer_mm.checkpoint import CheckpointError
from metaformer_mm.models import PoolFormer
from metaformer_mm.cli.datasets import check_dataset

TINY = dict(base='poolformer_s12', depths=[1, 1, 1, 1], dims=[8, 16, 24, 32])
CONFIGS = {
    'retinanet': ('detection/retinanet_poolformer_s12.py', 'mmdet'),
    'mask_rcnn': ('detection/mask_rcnn_poolformer_s12.py', 'mmdet'),
    'fpn': ('segmentation/fpn_poolformer_s12.py', 'mmseg'),
}


def _config(repo_root: str, name: str) -> Config:
    path = osp.join(repo_root, 'configs', CONFIGS[name][0])
    if not osp.isfile(path):
        pytest.fail(f'{path} is missing')
    return Config.fromfile(path)


def _tiny(cfg: Config, init_cfg=None) -> Config:
    """The config with a 1-block-per-stage, narrow PoolFormer (and necks to match)."""
    cfg.model.backbone.arch = dict(TINY)
    cfg.model.backbone.init_cfg = init_cfg
    used = cfg.model.backbone.get('out_indices', (0, 1, 2, 3))
    cfg.model.neck.in_channels = [TINY['dims'][i] for i in used]
    return cfg


def _build(repo_root: str, name: str, **backbone):
    cfg = _config(repo_root, name)
    cfg.model.backbone.init_cfg = None
    cfg.model.backbone.update(backbone)
    scope = CONFIGS[name][1]
    init_default_scope(scope)
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    return MODELS.build(cfg.model)


def _raised_in(err: BaseException) -> str:
    return traceback.extract_tb(err.__traceback__)[-1].filename


# =========================================================================== configs
def test_unknown_backbone_type_names_the_registry(repo_root):
    with pytest.raises(KeyError, match=r'PoolFormerS12 is not in the mmdet::model registry'):
        _build(repo_root, 'retinanet', type='PoolFormerS12')


# =========================================================================== checkpoints
@pytest.fixture(scope='module')
def bad_files(tmp_path_factory, data_dir) -> Dict[str, str]:
    """Files a user might pass as a checkpoint by mistake, and broken checkpoints."""
    root = tmp_path_factory.mktemp('bad_ckpts')
    files = {}

    def put(name: str, write: Callable[[str], None]) -> None:
        files[name] = str(root / name)
        write(files[name])

    good = root / 'good.pth'
    torch.save({'state_dict': PoolFormer(arch=TINY).state_dict()}, good)
    data = good.read_bytes()
    put('empty.pth', lambda p: Path(p).write_bytes(b''))
    put('truncated.pth', lambda p: Path(p).write_bytes(data[:len(data) // 2]))
    put('image.pth', lambda p: shutil.copy(osp.join(data_dir, 'demo', 'demo.jpg'), p))
    put('notes.pth', lambda p: Path(p).write_text('weights are on the shared drive\n'))
    put('other_arch.pth', lambda p: torch.save(
        {'state_dict': PoolFormer(arch=dict(TINY, depths=[2, 1, 1, 1])).state_dict()}, p))
    put('no_match.pth', lambda p: torch.save(
        {'state_dict': {'encoder.layer0.weight': torch.zeros(4, 3, 3, 3),
                        'encoder.layer0.bias': torch.zeros(4)}}, p))
    return files


CHECKPOINT_ERRORS = {
    'missing.pth': (FileNotFoundError, r'checkpoint file not found: .*missing\.pth'),
    'empty.pth': (CheckpointError, r'checkpoint file is empty: .*empty\.pth'),
    'truncated.pth': (CheckpointError, r'cannot load .*truncated\.pth: it is truncated'),
    'image.pth': (CheckpointError, r'cannot load .*image\.pth: it is not a PyTorch checkpoint '
                                   r'but a JPEG image'),
    'notes.pth': (CheckpointError, r'cannot load .*notes\.pth: it is not a PyTorch checkpoint '
                                   r'but a text file'),
    'other_arch.pth': (CheckpointError, r'architecture mismatch loading .*other_arch\.pth: its '
                                        r'stages have \[2, 1, 1, 1\] blocks, the model has '
                                        r'\[1, 1, 1, 1\]'),
    'no_match.pth': (CheckpointError, r"cannot load .*no_match\.pth: unrecognised checkpoint "
                                      r"layout \(first keys: \['encoder\.layer0\.weight'"),
}


def _path(bad_files, name: str) -> str:
    return bad_files.get(name) or osp.join(osp.dirname(bad_files['empty.pth']), name)


@pytest.mark.parametrize('name', sorted(CHECKPOINT_ERRORS))
def test_bad_pretrained_checkpoint_of_a_detector_backbone(repo_root, bad_files, name):
    """``init_cfg=dict(type='Pretrained', checkpoint=...)`` of the backbone in a detector."""
    cfg = _tiny(_config(repo_root, 'retinanet'),
                init_cfg=dict(type='Pretrained', checkpoint=_path(bad_files, name)))
    init_default_scope('mmdet')
    from mmdet.registry import MODELS
    model = MODELS.build(cfg.model)
    error, match = CHECKPOINT_ERRORS[name]
    with pytest.raises(error, match=match):
        model.init_weights()


def test_detector_checkpoint_given_as_backbone_weights_says_prefix(repo_root, tmp_path):
    init_default_scope('mmdet')
    from mmdet.registry import MODELS
    detector = MODELS.build(_tiny(_config(repo_root, 'retinanet')).model)
    path = str(tmp_path / 'retinanet.pth')
    torch.save({'state_dict': detector.state_dict()}, path)
    backbone = PoolFormer(arch=TINY, init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(CheckpointError, match=r'cannot load .*retinanet\.pth: unrecognised .*'
                                              r'give prefix="backbone\."'):
        backbone.init_weights()
    backbone = PoolFormer(arch=TINY, out_indices=(1, 2, 3), init_cfg=dict(
        type='Pretrained', checkpoint=path, prefix='backbone.'))
    backbone.init_weights()  # with the prefix it loads
    torch.testing.assert_close(backbone.stem.conv.weight, detector.backbone.stem.conv.weight)


@pytest.mark.parametrize('name', ['missing.pth', 'empty.pth', 'truncated.pth', 'image.pth',
                                  'notes.pth'])
def test_bad_checkpoint_through_mmengine_loading(repo_root, bad_files, name):
    """``init_detector`` (and ``load_from``/``resume``, the same mmengine loader) names the
    file and the problem instead of the unpickler's ``KeyError: 101`` or ``[Errno 22]``."""
    from mmdet.apis import init_detector
    cfg = _tiny(_config(repo_root, 'retinanet'))
    error, match = CHECKPOINT_ERRORS[name]
    with pytest.raises(error, match=match):
        init_detector(cfg, _path(bad_files, name), device='cpu')


@pytest.mark.slow
def test_tools_report_bad_checkpoints_in_one_line(repo_root, data_dir, bad_files, tmp_path):
    """``tools/test.py CONFIG BAD``, ``tools/train.py --resume BAD`` (also a weights-only
    file), ``tools/train.py`` with a ``Pretrained`` file one tensor short and
    ``demo/image_demo.py`` with a list for a state dict: one ``error:`` line, non-zero exit."""
    config = tmp_path / 'retinanet_tiny.py'
    root = osp.join(data_dir, 'coco_mini') + '/'
    config.write_text(
        f"_base_ = [{osp.join(repo_root, 'configs', CONFIGS['retinanet'][0])!r}]\n"
        f"model = dict(backbone=dict(arch=dict(_delete_=True, **{TINY!r}), init_cfg=None),\n"
        f"             neck=dict(in_channels=[16, 24, 32]))\n"
        f"train_dataloader = dict(num_workers=0, persistent_workers=False,\n"
        f"                        dataset=dict(data_root={root!r}))\n"
        f"val_dataloader = dict(num_workers=0, persistent_workers=False,\n"
        f"                      dataset=dict(data_root={root!r}))\n"
        f"test_dataloader = val_dataloader\n"
        f"val_evaluator = dict(ann_file={root + 'annotations/instances_val2017.json'!r})\n"
        f"test_evaluator = val_evaluator\n")
    other = str(tmp_path / 'other_config.pth')  # a detector with a wider backbone
    wider = PoolFormer(arch=dict(TINY, dims=[32, 48, 64, 96]), out_indices=(1, 2, 3))
    torch.save({'state_dict': {f'backbone.{k}': v for k, v in wider.state_dict().items()}}, other)
    partial = str(tmp_path / 'backbone_only.pth')  # no neck/head, one foreign key
    tiny = PoolFormer(arch=TINY, out_indices=(1, 2, 3))
    state = {f'backbone.{k}': v for k, v in tiny.state_dict().items()}
    torch.save({'state_dict': dict(state, **{'extra.weight': torch.zeros(1)})}, partial)
    missing_one = str(tmp_path / 'backbone_missing_one.pth')  # Pretrained, one tensor short
    torch.save({k: v for k, v in tiny.state_dict().items()
                if k != 'stages.2.blocks.0.mlp.fc1.weight'}, missing_one)
    pretrained = tmp_path / 'retinanet_pretrained.py'
    pretrained.write_text(f"_base_ = [{str(config)!r}]\nmodel = dict(backbone=dict(init_cfg=dict("
                          f"_delete_=True, type='Pretrained', checkpoint={missing_one!r})))\n")
    as_list = str(tmp_path / 'as_list.pth')
    torch.save(list(state.values()), as_list)
    runs = {  # each tool's main() in this process: its exit status and stderr
        'partial': ['tools/test.py', str(config), partial, '--work-dir', str(tmp_path / 'p')],
        'other': ['tools/test.py', str(config), other, '--work-dir', str(tmp_path / 'o')],
        'test': ['tools/test.py', str(config), bad_files['truncated.pth'],
                 '--work-dir', str(tmp_path / 't')],
        'resume': ['tools/train.py', str(config), '--resume', bad_files['notes.pth'],
                   '--work-dir', str(tmp_path / 'r')],
        'resume_weights': ['tools/train.py', str(config), '--resume', partial,
                           '--work-dir', str(tmp_path / 'rw')],
        'pretrained': ['tools/train.py', str(pretrained), '--work-dir', str(tmp_path / 'pt')],
        'demo': ['demo/image_demo.py', osp.join(data_dir, 'demo', 'demo.jpg'), str(config),
                 as_list, '--out-file', str(tmp_path / 'demo.jpg')],
    }
    from in_process import run_main
    procs = {k: run_main(*args, cwd=str(tmp_path)) for k, args in runs.items()}
    outputs = {k: (p.stdout, p.stderr) for k, p in procs.items()}
    expected = {'other': r'.*other_config\.pth does not fit the PoolFormer at \'backbone\.\' '
                         r'.*shapes that do not fit .*backbone\.stem\.conv\.weight: '
                         r'\(32, 3, 7, 7\) in the checkpoint, \(8, 3, 7, 7\) in the model.*'
                         r'Is it a checkpoint of another config\?',
                'partial': r'the checkpoint does not fit the config\'s model: \d+ missing keys '
                           r'\[\'neck\..*\], 1 unexpected keys \[\'extra\.weight\'\]',
                'test': r'cannot load .*truncated\.pth: it is truncated',
                'resume': r'cannot load .*notes\.pth: it is not a PyTorch checkpoint but a text '
                          r'file',
                'resume_weights': r'--resume: .*backbone_only\.pth holds no training state to '
                                  r'resume .*use --cfg-options load_from=',
                'pretrained': r'.*backbone_missing_one\.pth does not fit the PoolFormer .*1 of '
                              r'its \d+ tensors missing \(first: \[\'stages\.2\.blocks\.0\.mlp'
                              r'\.fc1\.weight\'\]\)',
                'demo': r'cannot load .*as_list\.pth: it is a list, not a dict of named '
                        r'tensors'}
    for key, (out, err) in outputs.items():
        assert procs[key].returncode not in (0, None), (key, out[-2000:], err[-2000:])
        assert 'Traceback' not in err, (key, err[-4000:])
        lines = [line for line in err.splitlines() if line.startswith('error:')]
        assert len(lines) == 1, (key, err[-4000:])
        assert re.search(r'error: ' + expected[key], lines[0]), lines[0]


# =========================================================================== images
@pytest.fixture(scope='module')
def images(tmp_path_factory, data_dir) -> Dict[str, str]:
    """The demo image as grayscale, RGBA, 16-bit, tiny, 1:10 and 10:1, and corrupt JPEGs.

    Lossless PNGs where results are compared: a grayscale image must give the same result
    as its 3-channel copy, RGBA as its RGB part, 16-bit as the 8-bit image it was made from.
    """
    root = tmp_path_factory.mktemp('images')
    src = cv2.imread(osp.join(data_dir, 'demo', 'demo.jpg'))
    gray = cv2.cvtColor(src, cv2.COLOR_BGR2GRAY)
    rgba = cv2.cvtColor(src, cv2.COLOR_BGR2BGRA)
    rgba[..., 3] = np.arange(rgba.shape[1], dtype=np.uint8)[None]  # a non-trivial alpha
    made = {
        'rgb.png': src, 'gray.png': gray, 'gray_as_rgb.png': cv2.merge([gray] * 3),
        'rgba.png': rgba, 'rgb16.png': src.astype(np.uint16) * 257,
        'gray16.png': gray.astype(np.uint16) * 257,
        'tiny.png': cv2.resize(src, (20, 20), interpolation=cv2.INTER_AREA),
        'wide.png': cv2.resize(src, (400, 40), interpolation=cv2.INTER_AREA),
        'tall.png': cv2.resize(src, (40, 400), interpolation=cv2.INTER_AREA),
        'very_wide.png': cv2.resize(src, (640, 32), interpolation=cv2.INTER_AREA),
    }
    paths = {}
    for name, image in made.items():
        paths[name] = str(root / name)
        assert cv2.imwrite(paths[name], image)
    data = Path(data_dir, 'demo', 'demo.jpg').read_bytes()
    paths['truncated.jpg'] = str(root / 'truncated.jpg')
    Path(paths['truncated.jpg']).write_bytes(data[:len(data) // 3])
    paths['garbage.jpg'] = str(root / 'garbage.jpg')
    Path(paths['garbage.jpg']).write_bytes(np.random.default_rng(0).bytes(4096))
    return paths


SAME_AS = {'gray.png': 'gray_as_rgb.png', 'gray16.png': 'gray_as_rgb.png', 'rgba.png': 'rgb.png',
           'rgb16.png': 'rgb.png'}
SHAPES = {'tiny.png': (20, 20), 'wide.png': (40, 400), 'tall.png': (400, 40),
          'very_wide.png': (32, 640), 'rgb.png': (427, 640)}


def _small_test_scale(cfg: Config, scale=(320, 192)) -> Config:
    """The configs' test pipeline at a small scale (the 1333x800 / 2048x512 one is slow)."""
    for pipeline in (cfg.test_dataloader.dataset.pipeline, cfg.get('test_pipeline') or []):
        for step in pipeline:
            if step['type'] == 'Resize':
                step['scale'] = scale
    return cfg


@pytest.fixture(scope='module')
def detector(repo_root):
    from mmdet.apis import init_detector
    cfg = _small_test_scale(_tiny(_config(repo_root, 'retinanet')))
    cfg.model.test_cfg.score_thr = 0.0  # random weights: keep the boxes to compare them
    torch.manual_seed(0)
    return init_detector(cfg, None, device='cpu')


@pytest.fixture(scope='module')
def segmentor(repo_root):
    from mmseg.apis import init_model
    cfg = _small_test_scale(_tiny(_config(repo_root, 'fpn')))
    torch.manual_seed(0)
    return init_model(cfg, None, device='cpu')


_RESULTS: Dict = {}  # (api, path) -> result: the reference images are compared repeatedly


def _detect(detector, path: str):
    from mmdet.apis import inference_detector
    if ('det', path) not in _RESULTS:
        init_default_scope('mmdet')
        _RESULTS['det', path] = inference_detector(detector, path)
    return _RESULTS['det', path]


def _segment(segmentor, path: str):
    from mmseg.apis import inference_model
    if ('seg', path) not in _RESULTS:
        init_default_scope('mmseg')
        _RESULTS['seg', path] = inference_model(segmentor, path)
    return _RESULTS['seg', path]


@pytest.mark.parametrize('name', sorted(SAME_AS))
def test_grayscale_rgba_and_16bit_images_give_the_results_of_their_rgb_form(
        detector, segmentor, images, name):
    det, det_ref = _detect(detector, images[name]), _detect(detector, images[SAME_AS[name]])
    assert det.metainfo['ori_shape'] == det_ref.metainfo['ori_shape'] == (427, 640)
    assert len(det.pred_instances) == 100
    torch.testing.assert_close(det.pred_instances.bboxes, det_ref.pred_instances.bboxes)
    torch.testing.assert_close(det.pred_instances.scores, det_ref.pred_instances.scores)
    seg, seg_ref = _segment(segmentor, images[name]), _segment(segmentor, images[SAME_AS[name]])
    assert seg.pred_sem_seg.data.shape == (1, 427, 640)
    assert torch.equal(seg.pred_sem_seg.data, seg_ref.pred_sem_seg.data)


@pytest.mark.parametrize('name', sorted(SHAPES))
def test_small_and_elongated_images_give_results_in_their_frame(detector, segmentor, images,
                                                                 name):
    h, w = SHAPES[name]
    det = _detect(detector, images[name])
    boxes = det.pred_instances.bboxes
    assert det.metainfo['ori_shape'] == (h, w) and len(boxes) == 100
    assert torch.isfinite(boxes).all() and torch.isfinite(det.pred_instances.scores).all()
    assert boxes[:, 0].min() >= 0 and boxes[:, 1].min() >= 0  # clipped to the image
    assert boxes[:, 2].max() <= w and boxes[:, 3].max() <= h
    seg = _segment(segmentor, images[name])
    labels = seg.pred_sem_seg.data
    assert labels.shape == (1, h, w)
    assert 0 <= int(labels.min()) and int(labels.max()) < 150


@pytest.mark.parametrize('name', ['truncated.jpg', 'garbage.jpg'])
def test_corrupt_jpeg_is_a_clear_error_naming_the_file(detector, segmentor, images, name):
    for infer, model in ((_detect, detector), (_segment, segmentor)):
        with pytest.raises(Exception, match=rf'failed to load image: .*{name}') as err:
            infer(model, images[name])
        assert 'metaformer_mm' not in _raised_in(err.value)  # stopped at loading


# =========================================================================== datasets
def _coco_copy(data_dir: str, tmp_path) -> str:
    root = tmp_path / 'coco'
    shutil.copytree(osp.join(data_dir, 'coco_mini'), root)
    return str(root) + '/'


def _point_at(cfg: Config, root: str) -> Config:
    for split in ('train', 'val', 'test'):
        cfg[f'{split}_dataloader'].dataset.data_root = root
        if split != 'train':
            cfg[f'{split}_evaluator'].ann_file = root + 'annotations/instances_val2017.json'
    return cfg


def test_image_listed_in_annotations_but_absent_is_named(repo_root, data_dir, tmp_path):
    root = _coco_copy(data_dir, tmp_path)
    gone = osp.join(root, 'train2017', 'ADE_train_00016900.jpg')
    os.remove(gone)
    cfg = _point_at(_config(repo_root, 'retinanet'), root)
    check_dataset(cfg, 'train')  # the folders are there: this is found when reading
    init_default_scope('mmdet')
    from mmdet.registry import DATASETS
    dataset = DATASETS.build(cfg.train_dataloader.dataset)
    names = [osp.basename(dataset.get_data_info(i)['img_path']) for i in range(len(dataset))]
    index = names.index('ADE_train_00016900.jpg')
    with pytest.raises(FileNotFoundError, match='ADE_train_00016900.jpg'):
        dataset[index]
    dataset[(index + 1) % len(dataset)]  # the others still load
