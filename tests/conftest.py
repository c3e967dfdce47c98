"""Shared fixtures: paths of the reference data and small models."""
import os
import os.path as osp
import sys

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SHARED = os.environ.get('METAFORMER_SHARED', osp.join(ROOT, '..', 'shared'))
REFERENCE = osp.join(SHARED, 'reference')
DATA = osp.join(SHARED, 'data')

# Test modules in every folder import the shared helpers in tests/support/ (tiny_runner,
# kernel_cases, legacy_layouts) by name; pytest's importlib mode puts no test folder on sys.path.
sys.path.insert(0, osp.join(osp.dirname(osp.abspath(__file__)), 'support'))

# The suite runs on 2 cores; more threads than cores only adds contention.
torch.set_num_threads(min(2, torch.get_num_threads()))


def _need(path: str) -> str:
    if not osp.exists(path):
        pytest.fail(f'test data missing: {path} (set METAFORMER_SHARED to the shared/ folder)')
    return path


@pytest.fixture(scope='session')
def reference_dir() -> str:
    return _need(REFERENCE)


@pytest.fixture(scope='session')
def data_dir() -> str:
    return _need(DATA)


@pytest.fixture(scope='session')
def repo_root() -> str:
    return ROOT


@pytest.fixture(scope='session')
def key_shapes(reference_dir):
    """Returns a loader: name -> {tensor name: shape} of a full-size original state dict
    listed in reference/keys/NAME.txt (e.g. 'poolformer_s12')."""

    def load(name: str):
        shapes = {}
        with open(osp.join(reference_dir, 'keys', f'{name}.txt')) as f:
            for line in f:
                if line.startswith('#') or not line.strip():
                    continue
                key, shape = line.split(' ', 1)
                shapes[key] = tuple(int(d) for d in shape.strip().strip('[]').split(',') if d.strip())
        return shapes

    return load


# --------------------------------------------------------------------------- downloads
@pytest.fixture
def http_requests() -> list:
    """The paths ``http_server`` was asked for, in order (to count downloads)."""
    return []


@pytest.fixture
def http_server(tmp_path, monkeypatch, http_requests):
    """Serves ``tmp_path / 'www'`` on 127.0.0.1; downloads go to a fresh TORCH_HOME.
    Yields ``(folder, base URL)``; each request's path is appended to ``http_requests``."""
    import http.server
    import threading
    root = tmp_path / 'www'
    root.mkdir()
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(root), **kwargs)

        def log_message(self, fmt, *args):
            http_requests.append(self.path)

    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f'http://127.0.0.1:{server.server_address[1]}'
    finally:
        server.shutdown()
        server.server_close()


# --------------------------------------------------------------------------- small detection runs
@pytest.fixture(scope='session')
def coco_mini_run(data_dir, repo_root):
    """Returns ``make(out_dir, name, scale=(256, 160), batch_size=3) -> (config, cfg_options)``.

    ``config`` is a derived config written to ``out_dir``: it inherits
    ``configs/detection/NAME.py`` and only shrinks the run (image scale, no pretrained
    download, no dataloader workers, one epoch without validation, fewer proposals, score
    threshold 0 so an untrained model still returns boxes); coco_mini's train split has 3
    images, so a batch of 3 makes the epoch one iteration. ``cfg_options`` are the
    ``--cfg-options`` that point the datasets and the CocoMetric at ``coco_mini``.
    """
    from mmengine.config import Config

    root = osp.join(data_dir, 'coco_mini') + '/'
    ann = root + 'annotations/instances_val2017.json'
    options = [f'{split}_dataloader.dataset.data_root={root}'
               for split in ('train', 'val', 'test')]
    options += [f'{split}_evaluator.ann_file={ann}' for split in ('val', 'test')]

    def make(out_dir, name, scale=(256, 160), batch_size=3):
        src = osp.join(repo_root, 'configs', 'detection', f'{name}.py')
        cfg = Config.fromfile(src).to_dict()

        def loader(split, **kwargs):
            pipeline = [dict(t, scale=scale) if t['type'] == 'Resize' else t
                        for t in cfg[f'{split}_dataloader']['dataset']['pipeline']]
            return dict(num_workers=0, persistent_workers=False, dataset=dict(pipeline=pipeline),
                        **kwargs)

        model = dict(backbone=dict(init_cfg=None), test_cfg=dict(score_thr=0.0))
        if 'roi_head' in cfg['model']:  # two-stage: fewer proposals and RoIs keep CPU runs short
            model.update(
                train_cfg=dict(rpn_proposal=dict(nms_pre=200, max_per_img=100),
                               rcnn=dict(sampler=dict(num=64))),
                test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=100),
                              rcnn=dict(score_thr=0.0)))
        overrides = dict(
            model=model,
            train_dataloader=loader('train', batch_size=batch_size),
            val_dataloader=loader('val'),
            test_dataloader=loader('test'),
            train_cfg=dict(max_epochs=1, val_begin=2),
            default_hooks=dict(logger=dict(interval=1)))
        path = osp.join(str(out_dir), f'{name}_mini.py')
        with open(path, 'w') as f:
            f.write(f'_base_ = [{src!r}]\n')
            f.writelines(f'{key} = {value!r}\n' for key, value in overrides.items())
        return path, list(options)

    return make


# --------------------------------------------------------------------------- small segmentation runs
# A Semantic FPN config shrunk for CPU runs on ade_mini: 128x128 crops, batch 2, no workers,
# no pretrained download, ``iters`` iterations then one validation and a checkpoint.
ADE_MINI_RUN = '''
_base_ = [{config!r}]
data_root = {data_root!r}
crop_size = (128, 128)
model = dict(data_preprocessor=dict(size=crop_size), backbone=dict(init_cfg=None))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=(256, 128), ratio_range=(0.5, 2.0), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PhotoMetricDistortion'),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(256, 128), keep_ratio=True),
    dict(type='ResizeToMultiple', size_divisor=32),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
train_cfg = dict(max_iters={iters}, val_interval={iters})
param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0, end={iters}, by_epoch=False)]
default_hooks = dict(checkpoint=dict(interval={iters}), logger=dict(interval=1))
randomness = dict(seed=0)
'''


@pytest.fixture(scope='session')
def ade_mini_run(data_dir, repo_root):
    """Returns ``make(out_dir, name, iters) -> config``: a derived config of
    ``configs/segmentation/NAME.py`` (see ``ADE_MINI_RUN``) that reads ade_mini."""

    def make(out_dir, name: str, iters: int) -> str:
        path = osp.join(str(out_dir), f'{name}_mini.py')
        with open(path, 'w') as f:
            f.write(ADE_MINI_RUN.format(
                config=osp.join(repo_root, 'configs', 'segmentation', f'{name}.py'),
                data_root=osp.join(data_dir, 'ade_mini', 'ADEChallengeData2016'), iters=iters))
        return path

    return make
