"""Checkpoints refused with one error naming the file, through the entry points users call.

Embedded configs that would import, read files or substitute (``DetInferencer`` /
``MMSegInferencer(model=None)``), the size cap on what is parsed, ``Pretrained`` as strict as
every other load, architectures named by the file, the download cache, state dicts of the
wrong shape, non-finite weights, ``--resume`` inputs and the paths of the weights table.
"""
import os
import os.path as osp
import re
import sys
import tracemalloc
from collections import OrderedDict

import pytest
import torch
from mmengine.config import Config
from mmengine.registry import init_default_scope

import metaformer_mm  # noqa: F401
from metaformer_mm.checkpoint import CheckpointError, read_checkpoint, url_cache_file
from metaformer_mm.models import IdentityFormer, PoolFormer, PoolFormerV2

SMALL = dict(depths=[1, 1, 1, 1], dims=[8, 16, 24, 32])
TINY = dict(SMALL, base='poolformer_s12')


def _det_config(repo_root, backbone=None) -> Config:
    cfg = Config.fromfile(osp.join(repo_root, 'configs', 'detection',
                                   'retinanet_poolformer_s12.py'))
    cfg.model.backbone = dict(backbone or dict(type='PoolFormer', arch=dict(TINY)),
                              out_indices=(1, 2, 3), init_cfg=None)
    cfg.model.neck.in_channels = [16, 24, 32]
    return cfg


def _seg_config(repo_root) -> Config:
    cfg = Config.fromfile(osp.join(repo_root, 'configs', 'segmentation',
                                   'fpn_poolformer_s12.py'))
    cfg.model.backbone.arch = dict(TINY)
    cfg.model.backbone.init_cfg = None
    cfg.model.neck.in_channels = [8, 16, 24, 32]
    return cfg


def _build(cfg: Config, scope: str):
    init_default_scope(scope)
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    return MODELS.build(cfg.model)


@pytest.fixture(scope='module')
def detector_file(repo_root, tmp_path_factory):
    """(config, path) of a tiny RetinaNet's checkpoint, as mmengine's Runner saves it."""
    cfg = _det_config(repo_root)
    path = str(tmp_path_factory.mktemp('det') / 'retinanet_tiny.pth')
    torch.save({'state_dict': _build(cfg, 'mmdet').state_dict(),
                'meta': {'dataset_meta': {'classes': ('a',) * 80}}}, path)
    return cfg, path


# --------------------------------------------------------------------------- embedded configs
EVIL_MODULE = "open({marker!r}, 'w').write('ran')\n"
# Each is literal Python that Config.fromstring would turn into an import, a file read or
# an environment substitution.
ACTIVE_CONFIGS = {
    'custom_imports of a module beside the working directory':
        ("custom_imports = dict(imports=['evil_mod'], allow_failed_imports=False)\n",
         "'custom_imports' at line 1, which makes mmengine import ['evil_mod']"),
    'custom_imports of the standard library':
        ("custom_imports = dict(imports=['this'])\n", "import ['this']"),
    '_base_ file': ("_base_ = ['evil_base.py']\n", "'_base_' at line 1"),
    '_base_ variant': ("_base_x = 1\n_base_ = 'evil_base.py'\n", "'_base_x' at line 1"),
    'deprecation notice': ("_deprecation_ = dict(expected='x.py')\n", "'_deprecation_'"),
    'scope of a local module': ("default_scope = 'evil_mod'\n", "scope 'evil_mod'"),
    'scoped type': ("model = dict(type='evil_mod.Detector')\n", "scope 'evil_mod'"),
    'environment placeholder': ("data_root = '{{$HOME:/data}}'\n", 'placeholder at line 1'),
    'base-variable placeholder': ("a = 1\nb = '{{ _base_.a }}'\n", 'placeholder at line 2'),
}


@pytest.mark.parametrize('name', sorted(ACTIVE_CONFIGS))
@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
def test_inferencer_refuses_embedded_config_that_imports_or_reads(
        detector_file, tmp_path, monkeypatch, name, scope):
    from mmdet.apis import DetInferencer
    from mmseg.apis import MMSegInferencer
    marker = tmp_path / 'ran'
    (tmp_path / 'evil_mod.py').write_text(EVIL_MODULE.format(marker=str(marker)))
    (tmp_path / 'evil_base.py').write_text(
        f"import os\nos.system('touch {marker}')\nmodel = dict(type='RetinaNet')\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    had_this = 'this' in sys.modules
    text, problem = ACTIVE_CONFIGS[name]
    path = str(tmp_path / 'active_cfg.pth')
    torch.save(dict(read_checkpoint(detector_file[1]), meta={'cfg': text}), path)
    inferencer = DetInferencer if scope == 'mmdet' else MMSegInferencer
    with pytest.raises(CheckpointError) as info:
        inferencer(model=None, weights=path, device='cpu')
    message = str(info.value)
    assert path in message and problem in message, message
    assert 'may only give data' in message and 'model=CONFIG' in message
    assert not marker.exists() and 'evil_mod' not in sys.modules
    assert had_this or 'this' not in sys.modules


def test_large_embedded_config_is_never_parsed_under_an_explicit_config(
        repo_root, detector_file, tmp_path, monkeypatch):
    """8 MB of literals in meta.cfg: init_detector(CONFIG, F) leaves it unread; without a
    config it is refused unparsed (ast would need several GB for it)."""
    import ast
    from mmdet.apis import DetInferencer, init_detector
    cfg, source = detector_file
    text = 'x = [' + '1, ' * ((8 << 20) // 3) + ']\n'
    assert len(text) > 8_000_000
    path = str(tmp_path / 'big_cfg.pth')
    torch.save(dict(read_checkpoint(source), meta={'cfg': text, 'dataset_meta': {
        'classes': ('a',) * 80}}), path)
    del text
    parsed = []
    real_parse = ast.parse
    monkeypatch.setattr(ast, 'parse', lambda source, *a, **k: (
        parsed.append(len(source)), real_parse(source, *a, **k))[1])
    tracemalloc.start()
    try:
        model = init_detector(cfg.copy(), path, device='cpu')
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert model.dataset_meta['classes'][0] == 'a'
    assert not [n for n in parsed if n > 1 << 20]
    assert peak < 100 << 20, f'{peak / 2**20:.0f} MiB traced'
    with pytest.raises(CheckpointError, match=r'characters long, more than the \d+ an '
                                              r'embedded config is checked up to'):
        DetInferencer(model=None, weights=path, device='cpu')
    assert not [n for n in parsed if n > 1 << 20]


# --------------------------------------------------------------------------- strictness
def _backbone_file(tmp_path, name, drop=lambda key: False, backbone=None):
    source = backbone or PoolFormer(arch=TINY)
    state = OrderedDict((k, v) for k, v in source.state_dict().items() if not drop(k))
    path = str(tmp_path / name)
    torch.save({'state_dict': state}, path)
    return source, path


@pytest.mark.parametrize('drop, first', [
    (lambda k: k == 'stages.2.blocks.0.mlp.fc1.weight', 'stages.2.blocks.0.mlp.fc1.weight'),
    (lambda k: k.startswith('stages.3.'), 'stages.3.downsample.conv.weight'),
    # 40 % of the file gone, the stem with it: the loader says what is missing
    (lambda k: k.startswith(('stem.', 'stages.0.', 'stages.1.')), 'stem.conv.weight'),
], ids=['one tensor', 'stage 3', 'stem and two stages'])
def test_pretrained_dict_form_refuses_a_partial_file(tmp_path, http_server, drop, first):
    _, path = _backbone_file(tmp_path, 'partial.pth', drop)
    root, base = http_server
    os.link(path, root / 'partial.pth')
    for where in (path, f'{base}/partial.pth'):
        model = PoolFormer(arch=TINY, init_cfg=dict(type='Pretrained', checkpoint=where))
        with pytest.raises(CheckpointError) as info:
            model.init_weights()
        message = str(info.value)
        assert message.startswith(f'{where} does not fit the PoolFormer'), message
        assert re.search(r'\d+ of its \d+ tensors missing \(first: \[' + re.escape(repr(first)),
                         message), message
        assert 'strict_load=False' in message


def test_pretrained_partial_load_on_purpose_is_a_warning(tmp_path, caplog):
    source, path = _backbone_file(tmp_path, 'partial.pth', lambda k: k.startswith('stages.3.'))
    model = PoolFormer(arch=TINY, strict_load=False,
                       init_cfg=dict(type='Pretrained', checkpoint=path))
    from mmengine.logging import MMLogger
    records = []
    handler = __import__('logging').Handler()
    handler.emit = records.append
    MMLogger.get_current_instance().addHandler(handler)
    try:
        model.init_weights()
    finally:
        MMLogger.get_current_instance().removeHandler(handler)
    warnings = [r.getMessage() for r in records if r.levelname == 'WARNING']
    assert any('partial load (allowed)' in w and 'stages.3.' in w for w in warnings), warnings
    assert torch.equal(model.stem.conv.weight, source.stem.conv.weight)


def test_tools_backbone_weights_are_as_strict_as_init_cfg(repo_root, tmp_path):
    """export_onnx.py / visualize_features / the benchmark load backbones through
    cli.models, the same strict loader."""
    from metaformer_mm.cli.models import build_model_from_config
    cfg = _det_config(repo_root)
    _, path = _backbone_file(tmp_path, 'no_stage3.pth', lambda k: k.startswith('stages.3.'))
    with pytest.raises(CheckpointError, match=re.escape(path) + ' does not fit the PoolFormer'):
        build_model_from_config(cfg, path, part='backbone')
    from in_process import script
    tool = script('tools/deploy/export_onnx.py')
    config = str(tmp_path / 'tiny.py')
    cfg.dump(config)
    with pytest.raises((CheckpointError, SystemExit), match=re.escape(path) + ' does not fit'):
        tool.main([config, path, '--shape', '64', '64', '--out', str(tmp_path / 'x.onnx')])
    assert not osp.exists(tmp_path / 'x.onnx')


# --------------------------------------------------------------------------- architectures
def test_weights_of_another_family_with_the_same_layout_are_refused(repo_root, tmp_path):
    """IdentityFormer and PoolFormerV2 share every tensor name and shape."""
    from mmdet.apis import init_detector
    source = IdentityFormer(arch=dict(SMALL, base='identityformer_s12'))
    _, released = _backbone_file(tmp_path, 'identityformer_s12.pth', backbone=source)
    target = PoolFormerV2(arch=dict(SMALL, base='poolformerv2_s12'))
    assert set(target.state_dict()) == set(source.state_dict())
    target.init_cfg = dict(type='Pretrained', checkpoint=released)
    with pytest.raises(CheckpointError, match=r"identityformer_s12\.pth holds weights of "
                                              r"another architecture: its file name .* names "
                                              r"identityformer .*the model is a PoolFormerV2"):
        target.init_weights()
    PoolFormerV2(arch=dict(SMALL, base='poolformerv2_s12'), strict_load=False,
                 init_cfg=dict(type='Pretrained', checkpoint=released)).init_weights()

    # A checkpoint of this project names its backbone in meta.cfg.
    identity = _det_config(repo_root, dict(type='IdentityFormer',
                                           arch=dict(SMALL, base='identityformer_s12')))
    path = str(tmp_path / 'epoch_12.pth')
    torch.save({'state_dict': _build(identity, 'mmdet').state_dict(),
                'meta': {'cfg': identity.pretty_text}}, path)
    v2 = _det_config(repo_root, dict(type='PoolFormerV2', arch=dict(SMALL, base='poolformerv2_s12')))
    with pytest.raises(CheckpointError, match=r"epoch_12\.pth holds weights of another "
                                              r"architecture: its embedded config \(model\."
                                              r"backbone arch.base='identityformer_s12'\) "
                                              r"names identityformer"):
        init_detector(v2, path, device='cpu')
    init_detector(identity, path, device='cpu')  # its own config loads


# --------------------------------------------------------------------------- downloads
def test_urls_with_the_same_file_name_get_their_own_weights(tmp_path, http_server):
    root, base = http_server
    (root / 'a').mkdir()
    (root / 'b').mkdir()
    sources = {}
    for sub, seed in (('a', 0), ('b', 1)):
        torch.manual_seed(seed)
        sources[sub], path = _backbone_file(root / sub, 'weights.pth')
    for sub in ('a', 'b'):
        model = PoolFormer(arch=TINY, init_cfg=dict(type='Pretrained',
                                                    checkpoint=f'{base}/{sub}/weights.pth'))
        model.init_weights()
        assert torch.equal(model.stem.conv.weight, sources[sub].stem.conv.weight)
    assert url_cache_file(f'{base}/a/weights.pth') != url_cache_file(f'{base}/b/weights.pth')


def test_a_failed_download_is_not_cached(tmp_path, http_server):
    root, base = http_server
    url = f'{base}/weights.pth'
    cache = url_cache_file(url)
    with pytest.raises(CheckpointError, match=r'cannot download .*weights\.pth: HTTP Error 404.*'
                                              + re.escape(cache)):
        read_checkpoint(url)
    (root / 'weights.pth').write_text('<!DOCTYPE html><html><body>Sign in</body></html>\n')
    with pytest.raises(CheckpointError) as info:
        read_checkpoint(url)
    message = str(info.value)
    assert 'not a PyTorch checkpoint but an HTML/XML page' in message and cache in message
    assert 'weights_only' not in message
    assert not osp.exists(cache) and os.listdir(osp.dirname(cache)) == []
    source, path = _backbone_file(tmp_path, 'weights.pth')
    os.replace(path, root / 'weights.pth')
    loaded = read_checkpoint(url)  # fixed on the server: downloaded now, then cached
    assert torch.equal(loaded['state_dict']['stem.conv.weight'], source.stem.conv.weight)
    assert osp.isfile(cache)


# --------------------------------------------------------------------------- what a file holds
BAD_CONTENTS = {
    'a list': ([torch.zeros(1)], r'it is a list, not a dict of named tensors'),
    'None': ({'state_dict': None}, r"its 'state_dict' entry is None, not a dict"),
    'an integer key': ({'state_dict': {0: torch.zeros(1)}},
                       r"its 'state_dict' entry has a key that is not a tensor name: 0 \(int\)"),
    'an empty dict': ({}, r'it is an empty dict: it holds no tensors'),
}


def _entry_points(repo_root, tmp_path):
    """Every in-process route a whole-model checkpoint takes: name -> load(path)."""
    from mmdet.apis import DetInferencer, init_detector
    from mmengine.runner import Runner
    from mmseg.apis import init_model

    def runner(path, resume):
        cfg = _det_config(repo_root)
        Runner(model=cfg.model.to_dict(), work_dir=str(tmp_path / 'work'), load_from=path,
               resume=resume, default_scope='mmdet').load_or_resume()

    return {
        'init_detector': lambda p: init_detector(_det_config(repo_root), p, device='cpu'),
        'DetInferencer': lambda p: DetInferencer(model=_det_config(repo_root), weights=p,
                                                 device='cpu', show_progress=False),
        'load_from': lambda p: runner(p, False),
        'resume': lambda p: runner(p, True),
        'init_model': lambda p: init_model(_seg_config(repo_root), p, device='cpu'),
    }


@pytest.mark.parametrize('content', sorted(BAD_CONTENTS))
def test_a_file_that_holds_no_state_dict_is_named(repo_root, tmp_path, content):
    obj, match = BAD_CONTENTS[content]
    path = str(tmp_path / 'odd.pth')
    torch.save(obj, path)
    for name, load in _entry_points(repo_root, tmp_path).items():
        with pytest.raises(CheckpointError, match=f'cannot load {re.escape(path)}: {match}'):
            load(path)


def test_non_finite_weights_are_refused_with_their_names(repo_root, detector_file, tmp_path):
    from mmdet.apis import init_detector
    state = read_checkpoint(detector_file[1])['state_dict']
    state['backbone.stages.1.blocks.0.mlp.fc1.weight'][0, 0] = float('nan')
    state['bbox_head.retina_cls.bias'][0] = float('inf')
    path = str(tmp_path / 'nan.pth')
    torch.save({'state_dict': state}, path)
    with pytest.raises(CheckpointError, match=re.escape(path) + r": 2 of its tensors hold nan "
                                              r"or inf values \(first: \['backbone\.stages\.1"):
        init_detector(_det_config(repo_root), path, device='cpu')
    backbone = {k[len('backbone.'):]: v for k, v in state.items() if k.startswith('backbone.')}
    torch.save(backbone, path)
    model = PoolFormer(arch=TINY, out_indices=(1, 2, 3),
                       init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(CheckpointError, match=r"1 of its tensors hold nan or inf values "
                                              r"\(first: \['stages\.1\.blocks\.0\.mlp\.fc1"):
        model.init_weights()


def test_a_directory_is_called_a_directory(repo_root, tmp_path):
    from mmdet.apis import init_detector
    with pytest.raises(CheckpointError, match=re.escape(str(tmp_path)) + ' is a directory, not '
                                              'a checkpoint file'):
        init_detector(_det_config(repo_root), str(tmp_path), device='cpu')


def test_init_model_reads_a_file_without_meta(repo_root, tmp_path):
    from mmseg.apis import init_model
    cfg = _seg_config(repo_root)
    source = _build(cfg, 'mmseg')
    path = str(tmp_path / 'weights_only.pth')
    torch.save(source.state_dict(), path)
    model = init_model(cfg, path, device='cpu')
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert len(model.dataset_meta['classes']) == cfg.model.decode_head.num_classes


# --------------------------------------------------------------------------- --resume
def _checkpoint_like_a_run(path):
    from tiny_runner import TinyClassifier
    torch.save({'meta': {'epoch': 0, 'iter': 2}, 'state_dict': TinyClassifier().state_dict(),
                'message_hub': {}}, path)


def test_resume_of_a_weights_only_file_says_load_from(tmp_path):
    from mmengine.config import Config as Cfg
    from metaformer_mm.cli.checkpoints import resolve_resume
    from metaformer_mm.cli.config import ToolError
    path = str(tmp_path / 'weights.pth')
    torch.save(PoolFormer(arch=TINY).state_dict(), path)
    cfg = Cfg(dict(work_dir=str(tmp_path)))
    with pytest.raises(ToolError, match=r"--resume: .*weights\.pth holds no training state to "
                                        r"resume \(no meta\['epoch'\], meta\['iter'\], "
                                        r"'message_hub'.*--cfg-options load_from=.*weights\.pth"):
        resolve_resume(cfg, path)
    with pytest.raises(ToolError, match=r'is a directory, not a checkpoint file'):
        resolve_resume(cfg, str(tmp_path))
    good = str(tmp_path / 'iter_2.pth')
    _checkpoint_like_a_run(good)
    resolve_resume(cfg, good)
    assert cfg.resume and cfg.load_from == good


def test_last_checkpoint_of_random_bytes_falls_back_to_the_newest_complete(tmp_path):
    from metaformer_mm.cli.checkpoints import find_resume_checkpoint
    _checkpoint_like_a_run(str(tmp_path / 'iter_2.pth'))
    _checkpoint_like_a_run(str(tmp_path / 'iter_4.pth'))
    (tmp_path / 'last_checkpoint').write_bytes(bytes(range(256)) * 4)
    path, state = find_resume_checkpoint(str(tmp_path))
    assert path == str(tmp_path / 'iter_4.pth')
    assert 'does not hold a path' in state


# --------------------------------------------------------------------------- paths
def test_package_config_paths_stay_inside_the_package():
    from metaformer_mm.zoo import resolve_config
    assert osp.isfile(resolve_config('metaformer_mm::detection/retinanet_poolformer_s12.py'))
    for escape in ('../../setup.py', '../configs/../../README.md', '/etc/passwd'):
        with pytest.raises(ValueError, match='leaves the package\'s configs folder'):
            resolve_config(f'metaformer_mm::{escape}')


def test_weights_table_paths_are_relative_to_the_table(tmp_path, monkeypatch):
    from metaformer_mm.zoo import WEIGHTS_ENV, resolve_weights
    mirror = tmp_path / 'mirror'
    mirror.mkdir()
    (mirror / 'table.json').write_text('{"mine": "weights/mine.pth", '
                                       '"remote": "http://127.0.0.1:1/x.pth"}')
    monkeypatch.setenv(WEIGHTS_ENV, str(mirror / 'table.json'))
    monkeypatch.chdir(tmp_path)
    assert resolve_weights('mine') == str(mirror / 'weights' / 'mine.pth')
    assert resolve_weights('remote') == 'http://127.0.0.1:1/x.pth'



def test_resume_never_runs_an_mmdet2_config_key(tmp_path):
    """mmengine's Runner.resume executes meta['config'] (mmdet 2.x's key) as Python."""
    from mmengine.runner import Runner
    from tiny_runner import TinyClassifier
    marker = tmp_path / 'ran'
    path = str(tmp_path / 'iter_2.pth')
    torch.save({'meta': {'epoch': 0, 'iter': 2,
                         'config': f"import os\nos.system('touch {marker}')\n"},
                'state_dict': TinyClassifier().state_dict(), 'message_hub': {}}, path)
    from tiny_runner import RandomImages
    runner = Runner(model=TinyClassifier(), work_dir=str(tmp_path / 'w'), load_from=path,
                    resume=True, train_cfg=dict(by_epoch=False, max_iters=4),
                    optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.1)),
                    train_dataloader=dict(dataset=RandomImages(4), batch_size=2,
                                          sampler=dict(type='DefaultSampler', shuffle=False),
                                          collate_fn=dict(type='default_collate')))
    with pytest.raises(CheckpointError, match=re.escape(path) + r' \(meta\.config\): an import '
                                              r'at line 1'):
        runner.load_or_resume()
    assert not marker.exists()
