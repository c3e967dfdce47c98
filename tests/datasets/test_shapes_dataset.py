"""The synthetic shapes dataset of `make demo`: deterministic, valid COCO, readable by mmdet."""
import hashlib
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
from pycocotools.coco import COCO

from metaformer_mm.datasets.shapes import CLASSES, make_shapes_dataset

SMALL = dict(num_train=12, num_val=5, image_size=160, seed=3)


def _digest(root: str) -> dict:
    """sha1 of every file under ``root``, by relative path."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = osp.join(dirpath, name)
            with open(path, 'rb') as f:
                out[osp.relpath(path, root)] = hashlib.sha1(f.read()).hexdigest()
    return out


@pytest.fixture(scope='module')
def shapes_root(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp('shapes') / 'data')
    make_shapes_dataset(root, progress=False, **SMALL)
    return root


def test_same_seed_same_bytes_other_seed_other_data(shapes_root, tmp_path):
    again = str(tmp_path / 'again')
    make_shapes_dataset(again, progress=False, **SMALL)
    first, second = _digest(shapes_root), _digest(again)
    assert len(first) == SMALL['num_train'] + SMALL['num_val'] + 2
    assert first == second

    other = str(tmp_path / 'other')
    make_shapes_dataset(other, progress=False, **dict(SMALL, seed=4))
    third = _digest(other)
    assert third.keys() == first.keys()
    assert sum(third[k] != first[k] for k in first) >= len(first) - 1


def test_train_and_val_are_different_images(shapes_root):
    digests = _digest(shapes_root)
    train = {v for k, v in digests.items() if k.startswith('train')}
    val = {v for k, v in digests.items() if k.startswith('val')}
    assert len(train) == SMALL['num_train'] and len(val) == SMALL['num_val']
    assert not train & val


def test_valid_coco_with_boxes_matching_masks_and_pixels(shapes_root):
    import cv2
    for split, count in (('train', SMALL['num_train']), ('val', SMALL['num_val'])):
        coco = COCO(osp.join(shapes_root, 'annotations', f'instances_{split}.json'))
        assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
        assert len(coco.getImgIds()) == count
        for img_id in coco.getImgIds():
            info = coco.loadImgs(img_id)[0]
            image = cv2.imread(osp.join(shapes_root, split, info['file_name']))
            assert image.shape == (160, 160, 3)
            anns = coco.loadAnns(coco.getAnnIds(imgIds=img_id))
            assert 1 <= len(anns) <= 4
            union = np.zeros((160, 160), bool)
            for ann in anns:
                mask = coco.annToMask(ann).astype(bool)
                assert not (mask & union).any(), 'shapes must not overlap'
                union |= mask
                ys, xs = np.nonzero(mask)
                x, y, w, h = ann['bbox']
                # The box is the polygon's extent, and the rasterised mask fills it.
                assert xs.min() >= x - 1 and xs.max() <= x + w + 1
                assert ys.min() >= y - 1 and ys.max() <= y + h + 1
                assert w >= 20 and h >= 20 and ann['iscrowd'] == 0
                # Whole shapes only: no vertex is clipped by the image border.
                assert 2 <= min(ann['segmentation'][0]) and max(ann['segmentation'][0]) <= 157
                assert ann['area'] == pytest.approx(mask.sum(), rel=0.15)
            # The shapes are drawn from their mask polygons: bright inside, dim outside
            # (2 px in from the edge, where JPEG's colour subsampling no longer blurs).
            value = image.max(axis=2)
            inner = np.zeros_like(union)
            for ann in anns:
                inner |= cv2.erode(coco.annToMask(ann), np.ones((5, 5), np.uint8)).astype(bool)
            assert np.percentile(value[inner], 1) >= 150
            assert np.percentile(value[~union], 90) < 130


def test_class_balance_over_a_bigger_split(tmp_path):
    root = str(tmp_path / 'data')
    make_shapes_dataset(root, num_train=60, num_val=1, progress=False)
    with open(osp.join(root, 'annotations', 'instances_train.json')) as f:
        anns = json.load(f)['annotations']
    counts = np.bincount([a['category_id'] for a in anns], minlength=4)[1:]
    assert counts.sum() == len(anns) >= 60
    assert counts.min() >= 0.2 * counts.sum()


def test_existing_dataset_is_kept_and_changed_arguments_regenerate(shapes_root, tmp_path):
    root = str(tmp_path / 'data')
    make_shapes_dataset(root, progress=False, **SMALL)
    ann = osp.join(root, 'annotations', 'instances_train.json')
    before = os.stat(ann).st_mtime_ns
    make_shapes_dataset(root, progress=False, **SMALL)
    assert os.stat(ann).st_mtime_ns == before
    os.remove(osp.join(root, 'val', '000002.jpg'))  # an incomplete copy is rewritten
    make_shapes_dataset(root, progress=False, **SMALL)
    assert osp.isfile(osp.join(root, 'val', '000002.jpg'))
    make_shapes_dataset(root, progress=False, **dict(SMALL, num_train=7))
    with open(ann) as f:
        assert len(json.load(f)['images']) == 7


@pytest.mark.parametrize('kwargs, match', [
    (dict(num_train=0), 'num_train'),
    (dict(size_range=(40, 20)), 'size_range'),
    (dict(size_range=(20, 200)), 'size_range'),
    (dict(max_shapes=0), 'max_shapes'),
])
def test_bad_arguments(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_shapes_dataset(str(tmp_path), progress=False, **kwargs)


def test_mmdet_coco_dataset_reads_it_with_the_demo_pipeline(shapes_root, repo_root):
    """The demo config's real dataset and training pipeline load every image and box."""
    import metaformer_mm  # noqa: F401  (registers the backbones)
    from mmdet.registry import DATASETS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    register_all_modules()
    cfg = Config.fromfile(osp.join(repo_root, 'configs', 'detection', 'demo',
                                   'retinanet_poolformer_s12_shapes.py'))
    ds_cfg = cfg.train_dataloader.dataset
    ds_cfg.data_root = shapes_root + '/'
    dataset = DATASETS.build(ds_cfg)
    assert len(dataset) == SMALL['num_train']
    assert dataset.metainfo['classes'] == CLASSES
    coco = COCO(osp.join(shapes_root, 'annotations', 'instances_train.json'))
    sample = dataset[0]
    inputs, data_sample = sample['inputs'], sample['data_samples']
    assert tuple(inputs.shape) == (3, 160, 160)
    img_id = data_sample.img_id
    assert len(data_sample.gt_instances) == len(coco.getAnnIds(imgIds=img_id))
    assert set(data_sample.gt_instances.labels.tolist()) <= {0, 1, 2}


def test_cli_writes_the_dataset_with_a_progress_bar(repo_root, tmp_path):
    out = tmp_path / 'cli'
    result = subprocess.run(
        [sys.executable, osp.join(repo_root, 'tools', 'demo', 'make_shapes_dataset.py'), str(out),
         '--num-train', '30', '--num-val', '4', '--seed', '3'],
        capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert '34/34' in result.stdout  # the progress bar reached the end
    assert 'shapes dataset ready' in result.stdout
    with open(out / 'annotations' / 'instances_val.json') as f:
        assert len(json.load(f)['images']) == 4
    assert len(os.listdir(out / 'train')) == 30
