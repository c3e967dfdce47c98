"""Bad data and bad wiring get one message naming the file or the argument.

Each case is a copy of a small shapes dataset (the ``make demo`` generator) broken one way:
a truncated or empty annotation JSON, a zero-byte image, a 2000x1 image, classes that match
none of the file's categories, a test set without annotations; and a backbone giving 4 maps
to a 3-input neck. In-process checks use mmdet's real datasets and the tools' own functions;
the ``slow`` ones run ``tools/train.py`` / ``tools/test.py`` as a user does.
"""
import json
import os.path as osp
import shutil
import subprocess

import cv2
import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import metaformer_mm  # noqa: F401  (registers CheckedCompose)
from metaformer_mm.cli.config import ToolError, check_neck_inputs, error_line
from metaformer_mm.cli.datasets import (check_annotation_files, check_test_metrics,
                                        explain_data_error, name_files_in_errors)
from metaformer_mm.datasets import DataError

DEMO = ('configs', 'detection', 'demo', 'retinanet_poolformer_s12_shapes.py')
TINY = '''
_base_ = [{config!r}]
data_root = {data_root!r}
model = dict(backbone=dict(arch=dict(_delete_=True, base='poolformer_s12', depths=[1, 1, 1, 1],
                                     dims=[8, 16, 24, 32])),
             neck=dict(in_channels=[16, 24, 32]))
train_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                        sampler=dict(shuffle=False), dataset=dict(data_root=data_root))
val_dataloader = dict(batch_size=2, num_workers=0, persistent_workers=False,
                      dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator
train_cfg = dict(max_iters=2)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=2))
'''


@pytest.fixture(scope='module')
def shapes_source(tmp_path_factory) -> str:
    from metaformer_mm.datasets.shapes import make_shapes_dataset
    root = str(tmp_path_factory.mktemp('shapes') / 'data')
    make_shapes_dataset(root, num_train=6, num_val=4, image_size=96, progress=False)
    return root


@pytest.fixture
def shapes(shapes_source, tmp_path) -> str:
    """A fresh copy of the dataset, to be broken by the test."""
    root = str(tmp_path / 'shapes')
    shutil.copytree(shapes_source, root)
    return root + '/'


def _config(repo_root, root) -> Config:
    cfg = Config.fromfile(osp.join(repo_root, *DEMO))
    for split in ('train', 'val', 'test'):
        cfg[f'{split}_dataloader'].dataset.data_root = root
    cfg.test_evaluator.ann_file = root + 'annotations/instances_val.json'
    return cfg


def _ann(root, split) -> str:
    return osp.join(root, 'annotations', f'instances_{split}.json')


def _images(root, split):
    with open(_ann(root, split)) as f:
        return json.load(f)['images']


def _dataset(cfg, split):
    init_default_scope('mmdet')
    from mmdet.registry import DATASETS
    return DATASETS.build(cfg[f'{split}_dataloader'].dataset)


def _index_of(dataset, name: str) -> int:
    return next(i for i in range(len(dataset))
                if osp.basename(dataset.get_data_info(i)['img_path']) == name)


# =========================================================================== annotation files
def test_empty_annotation_file_is_named(repo_root, shapes):
    open(_ann(shapes, 'val'), 'w').close()
    with pytest.raises(DataError, match=rf'annotation file {_ann(shapes, "val")} '
                                        r'\(val_dataloader.dataset\) is empty \(0 bytes\)'):
        check_annotation_files(_config(repo_root, shapes), 'train')


def test_truncated_annotation_file_is_named(repo_root, shapes):
    path = _ann(shapes, 'train')
    with open(path) as f:
        text = f.read()
    with open(path, 'w') as f:
        f.write(text[:len(text) // 2])
    cfg = _config(repo_root, shapes)
    with pytest.raises(json.JSONDecodeError) as err:  # what mmdet raises, without the file
        _dataset(cfg, 'train')
    assert path not in str(err.value)
    why = explain_data_error(cfg, 'train', err.value)
    assert why.startswith(f'annotation file {path} is not valid JSON (')
    assert why.endswith('is it truncated?)')


# =========================================================================== images
@pytest.mark.parametrize('split', ['train', 'test'])
def test_zero_byte_image_is_named(repo_root, shapes, split):
    folder = 'train' if split == 'train' else 'val'
    name = _images(shapes, folder)[1]['file_name']
    open(osp.join(shapes, folder, name), 'wb').close()
    cfg = _config(repo_root, shapes)
    dataset = _dataset(cfg, split)
    with pytest.raises(cv2.error):  # mmcv's loader on its own: no file name
        dataset[_index_of(dataset, name)]
    name_files_in_errors(cfg, 'train' if split == 'train' else 'test')
    dataset = _dataset(cfg, split)
    with pytest.raises(DataError, match=rf'^image file {shapes}{folder}/{name} is empty '
                                        r'\(0 bytes\)$'):
        dataset[_index_of(dataset, name)]
    dataset[_index_of(dataset, _images(shapes, folder)[0]['file_name'])]  # others still load


def test_2000x1_image_is_named_with_its_size(repo_root, shapes):
    path = _ann(shapes, 'val')
    with open(path) as f:
        ann = json.load(f)
    image = ann['images'][1]
    cv2.imwrite(osp.join(shapes, 'val', image['file_name']), np.full((1, 2000, 3), 99, np.uint8))
    image.update(width=2000, height=1)
    with open(path, 'w') as f:
        json.dump(ann, f)
    cfg = _config(repo_root, shapes)
    name_files_in_errors(cfg, 'test')
    dataset = _dataset(cfg, 'test')
    with pytest.raises(DataError, match=rf'^{shapes}val/{image["file_name"]} \(2000x1 pixels\): '
                                        r'Resize failed: cv2.error: '):
        dataset[_index_of(dataset, image['file_name'])]


def test_error_from_a_dataloader_worker_is_one_line(repo_root, shapes):
    name = _images(shapes, 'train')[0]['file_name']
    open(osp.join(shapes, 'train', name), 'wb').close()
    cfg = _config(repo_root, shapes)
    name_files_in_errors(cfg, 'train')
    cfg.train_dataloader.num_workers = 1
    cfg.train_dataloader.persistent_workers = False
    cfg.train_dataloader.sampler.shuffle = False
    init_default_scope('mmdet')
    from mmengine.runner import Runner
    loader = Runner.build_dataloader(cfg.train_dataloader)
    with pytest.raises(DataError) as err:
        next(iter(loader))
    assert 'Original Traceback' in str(err.value)  # torch's re-raise carries the worker's trace
    assert error_line(err.value) == f'image file {shapes}train/{name} is empty (0 bytes)'


# =========================================================================== empty datasets
def test_class_name_mismatch_is_explained(repo_root, shapes):
    cfg = _config(repo_root, shapes)
    cfg.train_dataloader.dataset.metainfo = dict(classes=('cat', 'dog'))
    with pytest.raises(ValueError, match='need at least one array to concatenate') as err:
        _dataset(cfg, 'train')
    why = explain_data_error(cfg, 'train', err.value)
    assert why == (f"a train dataset is empty: train_dataloader.dataset: none of the config's "
                   f"classes ('cat', 'dog') is a category of {_ann(shapes, 'train')} (its "
                   f"categories: ['square', 'circle', 'triangle']); set "
                   f"train_dataloader.dataset.metainfo.classes to the names the file uses")


def test_dataset_without_annotations_is_explained(repo_root, shapes):
    path = _ann(shapes, 'train')
    with open(path) as f:
        ann = json.load(f)
    ann['annotations'] = []
    with open(path, 'w') as f:
        json.dump(ann, f)
    cfg = _config(repo_root, shapes)
    with pytest.raises(ValueError, match='need at least one array to concatenate') as err:
        _dataset(cfg, 'train')
    why = explain_data_error(cfg, 'train', err.value)
    assert why.startswith(f'a train dataset is empty: train_dataloader.dataset: no image of '
                          f'{path} has an annotation of the classes (')


def test_undefined_map_is_an_error(repo_root, shapes):
    cfg = _config(repo_root, shapes)
    # no large objects in the set: that figure alone is undefined, rightly
    check_test_metrics(cfg, {'coco/bbox_mAP': 0.0, 'coco/bbox_mAP_l': -1.0})
    with pytest.raises(DataError, match=rf'coco/bbox_mAP, coco/segm_mAP = -1 \(undefined\): '
                                        rf'the test annotations {_ann(shapes, "val")} hold no '
                                        r"ground truth of the classes \('square', "):
        check_test_metrics(cfg, {'coco/bbox_mAP': -1.0, 'coco/bbox_mAP_50': -1.0,
                                 'coco/segm_mAP': -1.0})


# =========================================================================== model wiring
@pytest.mark.parametrize('config', ['detection/retinanet_poolformer_s12.py',
                                    'segmentation/fpn_poolformer_s12.py'])
def test_four_backbone_outputs_into_a_three_input_neck(repo_root, config):
    cfg = Config.fromfile(osp.join(repo_root, 'configs', config))
    check_neck_inputs(cfg)  # the configs as written agree
    cfg.model.neck.in_channels = [128, 320, 512]
    cfg.model.backbone.out_indices = (0, 1, 2, 3)
    with pytest.raises(ToolError, match=r'model.backbone.out_indices \(0, 1, 2, 3\) gives 4 '
                                        r'feature maps but model.neck.in_channels '
                                        r'\[128, 320, 512\] takes 3'):
        check_neck_inputs(cfg)
    cfg.model.backbone.pop('out_indices')  # the backbone's default: all four stages
    with pytest.raises(ToolError, match=r'out_indices \(0, 1, 2, 3\) gives 4'):
        check_neck_inputs(cfg)


# =========================================================================== the tools
def _tool(repo_root, name, *args) -> subprocess.CompletedProcess:
    """tools/NAME's main(ARGS) in this process: its exit status and output."""
    from in_process import run_main
    return run_main(f'tools/{name}', *args, cwd=repo_root)


def _one_error(proc) -> str:
    assert proc.returncode != 0, proc.stdout[-3000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith('error: ')]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


def _tiny_config(repo_root, shapes, tmp_path) -> str:
    path = tmp_path / 'tiny.py'
    path.write_text(TINY.format(config=osp.join(repo_root, *DEMO), data_root=shapes))
    return str(path)


@pytest.mark.slow
def test_train_py_names_the_bad_file(repo_root, shapes, tmp_path):
    config = _tiny_config(repo_root, shapes, tmp_path)
    name = _images(shapes, 'train')[1]['file_name']
    open(osp.join(shapes, 'train', name), 'wb').close()
    error = _one_error(_tool(repo_root, 'train.py', config, '--work-dir', tmp_path / 'w'))
    assert error == f'error: image file {shapes}train/{name} is empty (0 bytes)'

    error = _one_error(_tool(repo_root, 'train.py', config, '--work-dir', tmp_path / 'w',
                             '--cfg-options', "train_dataloader.dataset.metainfo.classes=[a,b]"))
    assert error.startswith("error: a train dataset is empty: train_dataloader.dataset: none "
                            "of the config's classes ('a', 'b') is a category of")

    error = _one_error(_tool(repo_root, 'train.py', config, '--work-dir', tmp_path / 'w',
                             '--cfg-options', 'model.backbone.out_indices=[0,1,2,3]'))
    assert 'model.backbone.out_indices (0, 1, 2, 3) gives 4 feature maps' in error


@pytest.mark.slow
def test_test_py_refuses_an_undefined_map_and_names_a_zero_byte_image(repo_root, shapes,
                                                                      tmp_path):
    config = _tiny_config(repo_root, shapes, tmp_path)
    cfg = Config.fromfile(config)
    init_default_scope('mmdet')
    from mmdet.registry import MODELS
    model = MODELS.build(cfg.model)
    checkpoint = str(tmp_path / 'tiny.pth')
    torch.save(dict(state_dict=model.state_dict(), meta=dict(iter=0)), checkpoint)

    path = _ann(shapes, 'val')
    with open(path) as f:
        ann = json.load(f)
    with open(path, 'w') as f:
        json.dump(dict(ann, annotations=[]), f)
    error = _one_error(_tool(repo_root, 'test.py', config, checkpoint, '--work-dir',
                             tmp_path / 'w'))
    assert 'coco/bbox_mAP' in error and '= -1 (undefined)' in error and path in error

    with open(path, 'w') as f:
        json.dump(ann, f)
    name = ann['images'][2]['file_name']
    open(osp.join(shapes, 'val', name), 'wb').close()
    error = _one_error(_tool(repo_root, 'test.py', config, checkpoint, '--work-dir',
                             tmp_path / 'w'))
    assert error == f'error: image file {shapes}val/{name} is empty (0 bytes)'
