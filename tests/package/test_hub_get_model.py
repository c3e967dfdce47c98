"""``mmengine.hub.get_model`` / ``get_config`` on this package's configs: every config of the
index builds, ``pretrained=True`` loads the released weights where the index has a direct
URL (served here from 127.0.0.1 through a ``METAFORMER_MM_WEIGHTS`` mirror entry), and a
Google Drive page is refused by name."""
import json
import os.path as osp

import pytest
import torch
from mmengine.hub import get_config, get_model

from metaformer_mm import zoo
from metaformer_mm.checkpoint import url_cache_file


def test_get_model_builds_every_config_of_the_index():
    built = {}
    for name, entry in zoo.model_index().items():
        rel = entry['Config'].split('configs/', 1)[1]
        model = get_model(f'metaformer_mm::{rel}')
        built[name] = (type(model).__name__, type(model.backbone).__name__)
        # nested types (necks, heads) come from the package of the detector or segmentor
        package = {'detection': 'mmdet', 'segmentation': 'mmseg'}[rel.split('/')[0]]
        assert type(model.neck).__module__.split('.')[0] == package, name
        assert type(model.data_preprocessor).__module__.split('.')[0] == package, name
    assert built['retinanet_poolformer_s12'] == ('RetinaNet', 'PoolFormer')
    assert built['mask_rcnn_caformer_s18'] == ('MaskRCNN', 'CAFormer')
    assert built['fpn_poolformer_s12'] == ('EncoderDecoder', 'PoolFormer')
    assert built['fpn_smlpnet_tiny'] == ('EncoderDecoder', 'SMLPNet')
    assert len(built) == len(zoo.model_index())


def test_get_model_pretrained_loads_the_direct_url_of_the_index(http_server, tmp_path,
                                                                 monkeypatch):
    root, base = http_server
    cfg_path = 'metaformer_mm::segmentation/fpn_poolformer_s12.py'
    released = get_model(cfg_path)
    with torch.no_grad():
        for i, p in enumerate(released.parameters()):
            p.copy_(torch.full_like(p, 0.001 * (i + 1)))
    torch.save({'state_dict': released.state_dict(), 'meta': {}}, root / 'fpn.pth')
    url = zoo.model_weights('fpn_poolformer_s12')
    assert get_config(cfg_path, pretrained=True).model_path == url
    mirror = tmp_path / 'mirror.json'
    mirror.write_text(json.dumps({url: f'{base}/fpn.pth'}))
    monkeypatch.setenv(zoo.WEIGHTS_ENV, str(mirror))

    model = get_model(cfg_path, pretrained=True)
    loaded = model.state_dict()
    for key, value in released.state_dict().items():
        assert torch.equal(loaded[key], value), key
    # it came from the mirror, into torch's cache (the test's TORCH_HOME)
    cached = url_cache_file(f'{base}/fpn.pth')
    assert cached.startswith(str(tmp_path / 'torch_home')) and osp.isfile(cached)


def test_get_model_pretrained_refuses_a_google_drive_page():
    page = zoo.model_info('retinanet_poolformer_s12')['Download Page']
    assert zoo.model_weights('retinanet_poolformer_s12') is None
    with pytest.raises(ValueError, match='Google Drive page, not a direct download') as err:
        get_model('metaformer_mm::detection/retinanet_poolformer_s12.py', pretrained=True)
    assert page in str(err.value)
