"""COCO annotation files of the wrong shape, checked before mmdet or pycocotools read them.

Each case is a copy of a small shapes dataset with one field of its annotation JSON of the
wrong type (a string ``bbox``, a string ``width``, ``images`` as a dict, ``annotations: null``
...), classes that are not all categories of the file, or boxes that mmdet drops. In-process
checks call the tools' own check (``check_annotation_files``, what ``tools/train.py`` and
``tools/test.py`` run first); the tool runs show the one ``error:`` line a user gets.
"""
import json
import logging
import os.path as osp
import shutil
import subprocess

import pytest
import torch
from mmengine.config import Config
from mmengine.logging import MMLogger

import metaformer_mm  # noqa: F401
from metaformer_mm.cli.datasets import check_annotation_files
from metaformer_mm.datasets import DataError

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO = osp.join(ROOT, 'configs', 'detection', 'demo', 'retinanet_poolformer_s12_shapes.py')
TINY = '''
_base_ = [{config!r}]
data_root = {data_root!r}
model = dict(backbone=dict(arch=dict(_delete_=True, base='poolformer_s12', depths=[1, 1, 1, 1],
                                     dims=[8, 16, 24, 32])),
             neck=dict(in_channels=[16, 24, 32], out_channels=16),
             bbox_head=dict(in_channels=16, feat_channels=16, stacked_convs=1))
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        dataset=dict(data_root=data_root))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
train_cfg = dict(max_iters=1)
'''


@pytest.fixture(scope='module')
def shapes_source(tmp_path_factory) -> str:
    from metaformer_mm.datasets.shapes import make_shapes_dataset
    root = str(tmp_path_factory.mktemp('shapes') / 'data')
    make_shapes_dataset(root, num_train=3, num_val=2, image_size=64, size_range=(12, 32),
                        progress=False)
    return root


@pytest.fixture
def shapes(shapes_source, tmp_path) -> str:
    root = str(tmp_path / 'shapes')
    shutil.copytree(shapes_source, root)
    return root + '/'


def _ann(root: str, split: str) -> str:
    return osp.join(root, 'annotations', f'instances_{split}.json')


def _edit(root: str, split: str, change) -> str:
    path = _ann(root, split)
    with open(path) as f:
        data = json.load(f)
    change(data)
    with open(path, 'w') as f:
        json.dump(data, f)
    return path


def _config(shapes: str, tmp_path) -> str:
    path = tmp_path / 'tiny.py'
    path.write_text(TINY.format(config=DEMO, data_root=shapes))
    return str(path)


def _tool(script: str, *args) -> subprocess.CompletedProcess:
    """The script's main(ARGS) in this process: its exit status and output."""
    from in_process import run_main
    return run_main(script, *args, cwd=ROOT)


def _one_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def _set(field, index, key, value):
    def change(data):
        data[field][index][key] = value
    return change


BAD_TYPES = {
    'string bbox': (_set('annotations', 1, 'bbox', '1 2 3 4'),
                    r'annotations\[1\] \(id \d+\): "bbox" must be a list of 4 numbers '
                    r"\[x, y, width, height\], got str '1 2 3 4'"),
    'bbox of 3': (_set('annotations', 0, 'bbox', [1, 2, 3]), r'annotations\[0\] .*"bbox" must'),
    'bbox with a string': (_set('annotations', 0, 'bbox', [1, 2, '3', 4]),
                           r'annotations\[0\] .*"bbox" must'),
    'string width': (_set('images', 0, 'width', '64'),
                     r'images\[0\] \(id \d+\): "width" must be a positive number of pixels, '
                     r"got str '64'"),
    'zero height': (_set('images', 1, 'height', 0), r'images\[1\] .*"height" must be'),
    'images as a dict': (lambda d: d.update(images={'0': d['images'][0]}),
                         r'"images" must be a list, got dict'),
    'annotations null': (lambda d: d.update(annotations=None),
                         r'"annotations" must be a list, got NoneType None'),
    'string category_id': (_set('annotations', 0, 'category_id', 'square'),
                           r'annotations\[0\] .*"category_id" must be an integer, got str'),
    'missing area': (lambda d: d['annotations'][0].pop('area'),
                     r'annotations\[0\] .*"area" must be a number'),
    'category without a name': (lambda d: d['categories'][0].pop('name'),
                                r'categories\[0\] \(id \d+\): "name" must be a string'),
    'an image as a list': (lambda d: d['images'].__setitem__(0, [1, 2]),
                           r'images\[0\]: must be a dict, got list'),
}


@pytest.mark.parametrize('phase,split', [('train', 'train'), ('test', 'val')])
@pytest.mark.parametrize('case', sorted(BAD_TYPES))
def test_annotation_field_of_a_wrong_type_is_named(shapes, tmp_path, case, phase, split):
    change, match = BAD_TYPES[case]
    path = _edit(shapes, split, change)
    cfg = Config.fromfile(_config(shapes, tmp_path))
    with pytest.raises(DataError, match=rf'^annotation file {path} \(\w+\.\w+\): {match}'):
        check_annotation_files(cfg, phase)


def test_not_a_coco_file_at_all(shapes, tmp_path):
    path = _ann(shapes, 'train')
    with open(path, 'w') as f:
        json.dump([1, 2, 3], f)
    cfg = Config.fromfile(_config(shapes, tmp_path))
    with pytest.raises(DataError, match=rf'^annotation file {path} .*the top level is a list'):
        check_annotation_files(cfg, 'train')


def test_train_and_test_tools_name_the_file_and_the_entry(shapes, tmp_path):
    config = _config(shapes, tmp_path)
    path = _edit(shapes, 'train', _set('annotations', 2, 'bbox', 'oops'))
    error = _one_error(_tool('tools/train.py', config, '--work-dir', tmp_path / 'w'))
    assert error.startswith(f'error: annotation file {path} (train_dataloader.dataset): '
                            f'annotations[2] (id ')
    assert '"bbox" must be a list of 4 numbers' in error

    path = _edit(shapes, 'val', lambda d: d.update(annotations=None))
    error = _one_error(_tool('tools/test.py', config, tmp_path / 'none.pth',
                             '--work-dir', tmp_path / 'w'))
    assert error == (f'error: annotation file {path} (test_dataloader.dataset): '
                     f'"annotations" must be a list, got NoneType None')


# =========================================================================== classes
def test_classes_missing_from_the_file_are_refused_naming_both_lists(shapes, tmp_path):
    cfg = Config.fromfile(_config(shapes, tmp_path))
    cfg.test_dataloader.dataset.metainfo = dict(classes=('square', 'circle', 'hexagon'))
    with pytest.raises(DataError, match=(
            r"^test_dataloader.dataset: the config's classes \('square', 'circle', 'hexagon'\) "
            rf"are not all categories of {_ann(shapes, 'val')}: \['hexagon'\] are not \(its "
            r"categories: \['square', 'circle', 'triangle'\]\); set "
            r'test_dataloader.dataset.metainfo.classes to the names the file uses$')):
        check_annotation_files(cfg, 'test')
    cfg.test_dataloader.dataset.metainfo = dict(classes=('cat', 'dog'))
    with pytest.raises(DataError, match=r"^test_dataloader.dataset: none of the config's "
                                        r"classes \('cat', 'dog'\) is a category of"):
        check_annotation_files(cfg, 'test')
    cfg.test_dataloader.dataset.metainfo = dict(classes=('triangle', 'square'))
    check_annotation_files(cfg, 'test')  # a subset, in any order, is what mmdet evaluates


def test_test_py_refuses_mismatched_classes_before_inference(shapes, tmp_path):
    """Without the check this ran the whole inference, then failed with an IndexError in
    CocoMetric; now nothing is built, so not even the checkpoint is read."""
    config = _config(shapes, tmp_path)
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    from mmdet.registry import MODELS
    checkpoint = tmp_path / 'tiny.pth'
    torch.save(dict(state_dict=MODELS.build(Config.fromfile(config).model).state_dict()),
               checkpoint)
    proc = _tool('tools/test.py', config, checkpoint, '--work-dir', tmp_path / 'w',
                 '--cfg-options', 'test_dataloader.dataset.metainfo.classes=[square,hexagon]')
    error = _one_error(proc)
    assert error.startswith("error: test_dataloader.dataset: the config's classes ('square', "
                            "'hexagon') are not all categories of")
    assert "['hexagon'] are not (its categories: ['square', 'circle', 'triangle'])" in error
    assert 'Epoch(test)' not in proc.stdout  # no inference ran


# =========================================================================== dropped boxes
def test_boxes_mmdet_drops_are_counted_once(shapes, tmp_path):
    def change(data):
        anns = data['annotations']
        anns[0]['bbox'] = [float('nan'), 3, 10, 10]
        anns[1]['bbox'] = [3, 3, -5, 10]
        anns[2]['bbox'] = [500, 500, 10, 10]
    path = _edit(shapes, 'train', change)
    cfg = Config.fromfile(_config(shapes, tmp_path))
    logger = MMLogger.get_current_instance()
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger.addHandler(handler)
    try:
        check_annotation_files(cfg, 'train')
    finally:
        logger.removeHandler(handler)
    warned = [r for r in records if path in r]
    assert len(warned) == 1, records
    total = len(json.load(open(path))['annotations'])
    assert warned[0].startswith(f"annotation file {path}: 3 of {total} boxes are skipped by "
                                f"mmdet's CocoDataset: 1 with a nan/inf coordinate, 1 with a "
                                f"negative or under 1 px width/height, 1 with no overlap "
                                f"with its image (first: annotations id ")
