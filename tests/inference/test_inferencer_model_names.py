"""mmdet's and mmseg's inferencers take this project's model names with ``scope='metaformer_mm'``:
mmengine looks a name up in the model index of the package named by ``scope`` and builds
under that scope (``metaformer_mm.registry``). Weights: a file given by the test, or the
index's, served by a local HTTP server through ``METAFORMER_MM_WEIGHTS``.
"""
import json
import os.path as osp
import re

import numpy as np
import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

from metaformer_mm.zoo import model_info, resolve_config

SCOPE = 'metaformer_mm'


def _image(tmp_path) -> str:
    import mmcv
    path = str(tmp_path / 'tiny.jpg')
    mmcv.imwrite(np.random.RandomState(0).randint(0, 255, (40, 56, 3), dtype=np.uint8), path)
    return path


def _checkpoint(name: str, scope: str, path: str) -> dict:
    """A whole-model checkpoint of ``name``'s config with seeded random weights."""
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    cfg = Config.fromfile(resolve_config(name))
    cfg.model.backbone.init_cfg = None
    init_default_scope(scope)
    torch.manual_seed(0)
    state = registry.build(cfg.model).state_dict()
    torch.save({'state_dict': state}, path)
    return state


def _assert_loaded(model, state):
    ours = model.state_dict()
    assert set(ours) == set(state)
    assert all(torch.equal(ours[k].cpu(), v) for k, v in state.items())


@pytest.mark.parametrize('name', ['retinanet_poolformer_s12',
                                  'retinanet_poolformer_s12_fpn_1x_coco'])
def test_det_inferencer_takes_a_model_name(name, tmp_path):
    from mmdet.apis import DetInferencer
    weights = str(tmp_path / 'retinanet.pth')
    state = _checkpoint('retinanet_poolformer_s12', 'mmdet', weights)
    inferencer = DetInferencer(model=name, scope=SCOPE, weights=weights, device='cpu')
    assert type(inferencer.model).__name__ == 'RetinaNet'
    assert type(inferencer.model.neck).__module__.startswith('mmdet.')
    assert osp.samefile(inferencer.cfg.filename, resolve_config(name))
    _assert_loaded(inferencer.model, state)
    result = inferencer(_image(tmp_path), return_datasamples=True)
    assert result['predictions'][0].pred_instances.bboxes.shape[1] == 4


def test_det_inferencer_name_without_a_direct_download_says_so():
    from mmdet.apis import DetInferencer
    page = model_info('retinanet_poolformer_s12')['Download Page']
    with pytest.raises(ValueError, match=re.escape(page) + ' is a Google Drive page, not a '
                                         'direct download'):
        DetInferencer(model='retinanet_poolformer_s12', scope=SCOPE, device='cpu')


def test_mmseg_inferencer_takes_a_model_name_with_the_index_weights(tmp_path, http_server,
                                                                    monkeypatch):
    from mmseg.apis import MMSegInferencer
    root, url = http_server
    state = _checkpoint('fpn_poolformer_s12', 'mmseg', str(root / 'fpn.pth'))
    # The index's URL (mmseg's download server), served locally.
    table = tmp_path / 'mirror.json'
    table.write_text(json.dumps({model_info('fpn_poolformer_s12')['Weights']: f'{url}/fpn.pth'}))
    monkeypatch.setenv('METAFORMER_MM_WEIGHTS', str(table))
    inferencer = MMSegInferencer(model='fpn_poolformer_s12', scope=SCOPE, device='cpu')
    assert type(inferencer.model).__name__ == 'EncoderDecoder'
    assert type(inferencer.model.neck).__module__.startswith('mmseg.')
    _assert_loaded(inferencer.model, state)
    labels = inferencer(_image(tmp_path))['predictions']
    assert labels.shape == (40, 56) and labels.max() < 150


def test_unknown_model_name_is_an_error_naming_the_scope():
    from mmdet.apis import DetInferencer
    with pytest.raises(ValueError, match='Cannot find model: retinanet_poolformer_s13 in '
                                         'metaformer_mm'):
        DetInferencer(model='retinanet_poolformer_s13', scope=SCOPE, device='cpu')


def test_list_models_lists_the_index():
    from mmdet.apis import DetInferencer
    from metaformer_mm.zoo import model_index
    names = DetInferencer.list_models(SCOPE)
    assert set(model_index()) <= set(names)
    assert 'retinanet_poolformer_s12_fpn_1x_coco' in names  # aliases too
