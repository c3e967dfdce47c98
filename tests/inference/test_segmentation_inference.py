"""mmseg's inference APIs on the Semantic FPN configs, and released (mmseg 0.x) checkpoints.

The checkpoints are built here: a Semantic FPN S12 with seeded random weights, saved as an
mmseg 1.x training checkpoint, and the same weights in the mmseg 0.19 layout of the sail-sg
releases (backbone keys ``patch_embed.proj``, ``network.N``, ``norm{0,2,4,6}``).
"""
import os
import os.path as osp
import pickle
import subprocess
import sys
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


def test_converted_mmseg0_checkpoint_loads(reference_model, repo_root, data_dir, tmp_path,
                                           no_download):
    from mmengine.runner import load_checkpoint
    from mmseg.apis import init_model
    from mmseg.datasets import ADE20KDataset
    from metaformer_mm.checkpoint import (convert_detector_checkpoint, extract_state_dict,
                                          read_checkpoint)
    expected = reference_model.state_dict()
    released = tmp_path / 'fpn_poolformer_s12_mmseg019.pth'
    meta = {'mmseg_version': '0.19.0', 'CLASSES': ADE20KDataset.METAINFO['classes'],
            'PALETTE': ADE20KDataset.METAINFO['palette']}
    torch.save({'meta': meta, 'state_dict': to_legacy(expected)}, released)

    # Unconverted, no backbone tensor matches a key of ours (mmengine would load them silently
    # as missing keys); the neck and head names are the same in mmseg 0.x and 1.x.
    raw = extract_state_dict(read_checkpoint(str(released)), str(released))
    assert not {k for k in raw if k.startswith('backbone.')} & set(expected)
    assert {k for k in raw if not k.startswith('backbone.')} == \
        {k for k in expected if not k.startswith('backbone.')}

    converted = convert_detector_checkpoint(raw, kind='mmseg0')
    assert set(converted) == set(expected)
    converted_path = tmp_path / 'fpn_poolformer_s12_converted.pth'
    torch.save({'meta': meta, 'state_dict': converted}, converted_path)

    model = init_model(_config(repo_root), str(converted_path), device='cpu')
    _assert_same_weights(model, expected)
    assert model.dataset_meta['classes'] == ADE20KDataset.METAINFO['classes']
    image = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(model(image, mode='tensor'), reference_model(image, mode='tensor'))

    # And as a training run's starting point (load_from / --resume read it the same way).
    fresh = _build_s12(repo_root)
    _randomize(fresh, seed=1)
    load_checkpoint(fresh, str(converted_path), map_location='cpu', strict=True)
    _assert_same_weights(fresh, expected)


@pytest.mark.slow
def test_tools_test_converts_mmseg0_checkpoint(repo_root, data_dir, reference_model,
                                               api_result, tmp_path):
    """tools/test.py on a file in the released layout, with the recipe's test pipeline."""
    from mmseg.datasets import ADE20KDataset
    tool = osp.join(repo_root, 'tools', 'test.py')
    if not osp.isfile(tool):
        pytest.fail(f'{tool} is missing')
    released = tmp_path / 'fpn_poolformer_s12_mmseg019.pth'
    torch.save({'meta': {'CLASSES': ADE20KDataset.METAINFO['classes'],
                         'PALETTE': ADE20KDataset.METAINFO['palette']},
                'state_dict': to_legacy(reference_model.state_dict())}, released)
    out = tmp_path / 'preds.pkl'
    root = osp.join(data_dir, 'ade_mini', 'ADEChallengeData2016')
    result = subprocess.run(
        [sys.executable, tool, _config(repo_root), str(released), '--work-dir',
         str(tmp_path / 'work'), '--out', str(out), '--cfg-options',
         f'test_dataloader.dataset.data_root={root}', 'test_dataloader.num_workers=0',
         'test_dataloader.persistent_workers=False'],
        cwd=str(tmp_path), capture_output=True, text=True, timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS='2', PYTHONWARNINGS='ignore'))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    assert 'mIoU' in result.stdout + result.stderr
    with open(out, 'rb') as f:
        predictions = {osp.basename(p['img_path']): torch.as_tensor(p['pred_sem_seg']['data'])
                       for p in pickle.load(f)}
    assert len(predictions) == 3
    # ADE_val_00000001.jpg is the demo image: the converted file predicts what the 1.x
    # checkpoint of the same weights does through inference_model.
    expected = api_result[1].pred_sem_seg.data[0]
    got = predictions['ADE_val_00000001.jpg'][0].long()
    assert got.shape == expected.shape
    assert (got == expected).float().mean() > 0.999
