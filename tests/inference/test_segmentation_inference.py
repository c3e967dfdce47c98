"""mmseg's inference APIs on the Semantic FPN configs, and released (mmseg 0.x) checkpoints.

The checkpoints are built here: a Semantic FPN S12 with seeded random weights, saved as an
mmseg 1.x training checkpoint, and the same weights in the mmseg 0.19 layout of the sail-sg
releases (backbone keys ``patch_embed.proj``, ``network.N``, ``norm{0,2,4,6}``). Released files
through the init APIs and inferencers are tested in checkpoint/test_loading_through_entry_points.py,
through ``tools/test.py`` in inference/test_detection_inference.py.
"""
import os.path as osp
from typing import Dict

import pytest
import torch

from legacy_layouts import to_legacy

ORIGINAL_SIZE = (512, 683)  # ade_demo.jpg, H x W
NUM_CLASSES = 150


def _config(repo_root: str) -> str:
    return osp.join(repo_root, 'configs', 'segmentation', 'fpn_poolformer_s12.py')


def _image(data_dir: str) -> str:
    return osp.join(data_dir, 'demo', 'ade_demo.jpg')


def _randomize(model: torch.nn.Module, seed: int = 0) -> None:
    """Distinct values in every tensor, so that any mis-mapped key changes the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if not tensor.is_floating_point():
                continue
            noise = torch.rand(tensor.shape, generator=gen)
            # Positive variances; small weights keep activations in range through 12 blocks.
            tensor.copy_(noise + 0.5 if name.endswith('running_var') else (noise - 0.5) * 0.2)


def _build_s12(repo_root: str) -> torch.nn.Module:
    from mmengine.config import Config
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    cfg = Config.fromfile(_config(repo_root))
    cfg.model.backbone.init_cfg = None
    init_default_scope('mmseg')
    model = MODELS.build(cfg.model)
    _randomize(model)
    return model.eval()


@pytest.fixture(scope='module')
def reference_model(repo_root) -> torch.nn.Module:
    return _build_s12(repo_root)


@pytest.fixture(scope='module')
def checkpoint(reference_model, tmp_path_factory) -> str:
    """An mmseg 1.x checkpoint of ``reference_model``, with ADE20K's dataset meta."""
    from mmseg.datasets import ADE20KDataset
    path = str(tmp_path_factory.mktemp('seg_ckpt') / 'fpn_poolformer_s12.pth')
    torch.save({'meta': {'dataset_meta': dict(ADE20KDataset.METAINFO)},
                'state_dict': reference_model.state_dict()}, path)
    return path


def _refuse_downloads(patch: pytest.MonkeyPatch) -> None:
    """Fails any attempt to fetch weights (the config's backbone init_cfg is a release URL)."""
    import mmengine.utils.dl_utils as dl_utils

    def refuse(url, *args, **kwargs):
        raise AssertionError(f'inference tried to download {url}')
    patch.setattr(dl_utils, 'load_url', refuse)
    patch.setattr(torch.hub, 'load_state_dict_from_url', refuse)
    patch.setattr(torch.hub, 'download_url_to_file', refuse)


@pytest.fixture
def no_download(monkeypatch):
    _refuse_downloads(monkeypatch)


def _assert_same_weights(model: torch.nn.Module, expected: Dict[str, torch.Tensor]) -> None:
    state = model.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value), f'{key} differs from the checkpoint'


def _assert_label_map(labels: torch.Tensor) -> None:
    assert tuple(labels.shape) == ORIGINAL_SIZE
    assert labels.min() >= 0 and labels.max() < NUM_CLASSES


@pytest.fixture(scope='module')
def api_result(repo_root, data_dir, checkpoint):
    """``init_model`` + ``inference_model`` on the ADE demo image (once for the module)."""
    from mmseg.apis import inference_model, init_model
    with pytest.MonkeyPatch.context() as patch:
        _refuse_downloads(patch)
        model = init_model(_config(repo_root), checkpoint, device='cpu')
        result = inference_model(model, _image(data_dir))
    return model, result


def test_init_model_and_inference_model(api_result, reference_model):
    model, result = api_result
    _assert_same_weights(model, reference_model.state_dict())
    assert model.dataset_meta['classes'][0] == 'wall'
    labels = result.pred_sem_seg.data[0]
    _assert_label_map(labels)
    logits = result.seg_logits.data
    assert tuple(logits.shape) == (NUM_CLASSES, *ORIGINAL_SIZE)
    assert torch.equal(logits.argmax(0), labels)
    assert labels.unique().numel() > 1  # random weights still separate regions


def test_show_result_writes_visualization(api_result, data_dir, tmp_path):
    import mmcv
    from mmseg.apis import show_result_pyplot
    model, result = api_result
    out_file = tmp_path / 'vis.jpg'
    drawn = show_result_pyplot(model, _image(data_dir), result, show=False,
                               out_file=str(out_file))
    assert out_file.is_file()
    assert mmcv.imread(str(out_file)).shape == (*ORIGINAL_SIZE, 3)
    assert drawn.shape == (*ORIGINAL_SIZE, 3)


def test_mmseg_inferencer(repo_root, data_dir, checkpoint, api_result, no_download, tmp_path):
    from mmseg.apis import MMSegInferencer
    inferencer = MMSegInferencer(model=_config(repo_root), weights=checkpoint, device='cpu')
    out = inferencer(_image(data_dir), out_dir=str(tmp_path))
    labels = torch.as_tensor(out['predictions'])
    _assert_label_map(labels)
    # Same weights and the same test pipeline as init_model: the same label map.
    assert torch.equal(labels, api_result[1].pred_sem_seg.data[0].to(labels.dtype))
    assert (tmp_path / 'vis' / 'ade_demo.jpg').is_file()
    assert len(list((tmp_path / 'pred').glob('*.png'))) == 1


# --------------------------------------------------------------------------- mmseg 0.x files
def _official_keys(reference_dir: str) -> Dict[str, list]:
    path = osp.join(reference_dir, 'keys', 'poolformer_s12.txt')
    keys = {}
    for line in open(path):
        if line.strip() and not line.startswith('#'):
            name, shape = line.split(' ', 1)
            keys[name] = [int(d) for d in shape.strip('[]\n ').split(',') if d.strip()]
    return keys


def test_mmseg0_layout_matches_official_backbone(reference_model, reference_dir):
    """The 0.x file built here has the released backbone's keys and shapes (+ output norms)."""
    official = _official_keys(reference_dir)
    expected = {k: v for k, v in official.items() if not k.startswith(('norm.', 'head.'))}
    for i, width in zip((0, 2, 4, 6), (64, 128, 320, 512)):
        expected.update({f'norm{i}.weight': [width], f'norm{i}.bias': [width]})
    built = {k[len('backbone.'):]: list(v.shape)
             for k, v in to_legacy(reference_model.state_dict()).items()
             if k.startswith('backbone.')}
    assert built == expected


def test_mmseg0_release_converts_to_exactly_our_keys(reference_model, repo_root, tmp_path):
    """Unconverted, no backbone tensor of a 0.19 file matches a key of ours (mmengine would
    load them silently as missing keys) and the neck and head names are those of mmseg 1.x;
    ``convert_detector_checkpoint(kind='mmseg0')`` gives exactly our keys, which load strictly
    into a fresh model to the reference outputs. Loading such a file through mmseg's entry
    points is tested in checkpoint/test_loading_through_entry_points.py."""
    from mmseg.datasets import ADE20KDataset
    from metaformer_mm.checkpoint import (convert_detector_checkpoint, extract_state_dict,
                                          read_checkpoint)
    expected = reference_model.state_dict()
    released = tmp_path / 'fpn_poolformer_s12_mmseg019.pth'
    meta = {'mmseg_version': '0.19.0', 'CLASSES': ADE20KDataset.METAINFO['classes'],
            'PALETTE': ADE20KDataset.METAINFO['palette']}
    torch.save({'meta': meta, 'state_dict': to_legacy(expected)}, released)

    raw = extract_state_dict(read_checkpoint(str(released)), str(released))
    assert not {k for k in raw if k.startswith('backbone.')} & set(expected)
    assert {k for k in raw if not k.startswith('backbone.')} == \
        {k for k in expected if not k.startswith('backbone.')}

    converted = convert_detector_checkpoint(raw, kind='mmseg0')
    assert set(converted) == set(expected)
    fresh = _build_s12(repo_root)
    _randomize(fresh, seed=1)
    fresh.load_state_dict(converted, strict=True)
    _assert_same_weights(fresh, expected)
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(fresh(image, mode='tensor'), reference_model(image, mode='tensor'))
