"""The model zoo: the index covers every config, names resolve (or fail with the closest
names), ``metaformer_mm::`` configs work from any directory, ImageNet weights by name download
end to end from a local HTTP server, and the README's tables are the index's."""
import functools
import glob
import json
import os.path as osp
import subprocess

import pytest
import torch
from mmengine.config import Config

import metaformer_mm  # noqa: F401  (lets mmengine resolve metaformer_mm:: bases)
from metaformer_mm import zoo

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TINY = dict(base='poolformer_s12', depths=[1, 1, 2, 1], dims=[16, 32, 48, 64])


def _configs():
    return sorted(osp.relpath(p, ROOT) for p in glob.glob(osp.join(ROOT, 'configs', '**', '*.py'),
                                                          recursive=True))


@functools.lru_cache(maxsize=None)
def _parse(path: str) -> Config:
    return Config.fromfile(path)


# --------------------------------------------------------------------------- the index
def test_index_covers_every_config_and_every_entry_exists():
    index = zoo.model_index()
    listed = sorted(entry['Config'] for entry in index.values())
    assert len(listed) == len(set(listed)), 'a config is listed twice'
    assert listed == _configs()
    for entry in index.values():
        assert osp.isfile(zoo.resolve_config(entry['Name']))
        # the link in the package leads to the same file as configs/
        assert osp.samefile(zoo.resolve_config(entry['Name']), osp.join(ROOT, entry['Config']))


def test_metafiles_follow_mmdets_format():
    import yaml
    with open(osp.join(ROOT, 'model-index.yml')) as f:
        imports = yaml.safe_load(f)['Import']
    aliases = {}
    for meta in imports:
        with open(osp.join(ROOT, meta)) as f:
            data = yaml.safe_load(f)
        collections = {c['Name'] for c in data['Collections']}
        for entry in data['Models']:
            assert entry['In Collection'] in collections
            meta_data = entry['Metadata']
            assert meta_data['Training Data'] and meta_data['Architecture']
            for result in entry.get('Results', []):
                assert set(result) == {'Task', 'Dataset', 'Metrics'} and result['Metrics']
            if 'Weights' in entry and 'Download Page' not in entry:  # direct downloads
                assert entry['Weights'].startswith('https://download.openmmlab.com/')
            if 'Download Page' in entry:  # mmengine.hub reads Weights: the page or a URL
                assert entry.get('Weights', '').startswith(
                    ('https://download.openmmlab.com/', entry['Download Page']))
            if 'Download Page' in entry:
                assert entry['Download Page'].startswith('https://drive.google.com/file/d/')
            for name in [entry['Name'], *entry.get('Alias', [])]:
                assert name.lower() not in aliases, f'{name} names two models'
                aliases[name.lower()] = entry['Name']
    # The paper's numbers and the released files (sail-sg's Google Drive pages, mmseg's URLs).
    index = zoo.model_index()
    assert index['mask_rcnn_poolformer_s12']['Results'][1]['Metrics'] == {'mask AP': 34.6}
    assert index['fpn_poolformer_m48']['Results'][0]['Metrics'] == {'mIoU': 42.7}
    assert sum('Download Page' in e for e in index.values()) == 11
    assert sum(zoo.model_weights(n) is not None for n in index) == 5


def _declared_weights(path: str):
    """The ``init_cfg`` checkpoint a config file writes (``None`` for ``init_cfg=None``),
    else that of its relative ``_base_``: read from the source, no mmdet/mmseg parsing."""
    import ast
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        for kw in getattr(node, 'keywords', []):
            if kw.arg == 'init_cfg':
                if isinstance(kw.value, ast.Constant) and kw.value.value is None:
                    return None
                for inner in kw.value.keywords:
                    if inner.arg == 'checkpoint':
                        return ast.literal_eval(inner.value)
    base = next(ast.literal_eval(n.value) for n in tree.body
                if isinstance(n, ast.Assign) and n.targets[0].id == '_base_')
    base = base[0] if isinstance(base, list) else base
    return _declared_weights(osp.join(osp.dirname(path), base))


def test_pretrained_weights_of_each_config_are_the_indexed_name():
    """Configs name their ImageNet weights; the index records the same name, and it resolves
    (tests/configs/test_*_configs.py check the parsed configs' init_cfg)."""
    for entry in zoo.model_index().values():
        declared = _declared_weights(osp.join(ROOT, entry['Config']))
        name = entry['Metadata']['Pretrained']
        assert declared == name, entry['Name']
        if name is not None:
            assert zoo.resolve_weights(name) == zoo.IMAGENET_WEIGHTS[name]


def test_each_imagenet_url_is_written_once_in_the_repository():
    files = subprocess.run(['git', 'ls-files'], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    text = ''
    for name in files:
        path = osp.join(ROOT, name)
        if osp.isfile(path) and not osp.islink(path) and name.endswith(
                ('.py', '.md', '.yml', '.yaml', '.txt', '.sh', '.cfg', '.in', 'Makefile')):
            with open(path, errors='ignore') as f:
                text += f.read()
    for name, url in zoo.IMAGENET_WEIGHTS.items():
        assert text.count(url) == 1, f'{name}: {url} is written {text.count(url)} times'


# --------------------------------------------------------------------------- names -> configs
def test_resolve_config_by_name_alias_package_path_and_path(tmp_path):
    path = zoo.resolve_config('retinanet_poolformer_s12')
    assert osp.isabs(path) and path.startswith(zoo.MIM_DIR)
    assert path.endswith(osp.join('configs', 'detection', 'retinanet_poolformer_s12.py'))
    assert zoo.resolve_config('RetinaNet_PoolFormer_S12_fpn_1x_coco') == path  # alias, any case
    assert zoo.resolve_config('fpn_poolformer_s12_8xb4-40k_ade20k-512x512') == \
        zoo.resolve_config('fpn_poolformer_s12')  # mmseg's name of the same model
    assert zoo.resolve_config('metaformer_mm::detection/retinanet_poolformer_s12.py') == path
    own = tmp_path / 'mine.py'
    own.write_text('x = 1\n')
    assert zoo.resolve_config(str(own)) == str(own)


def test_unknown_config_names_list_the_closest():
    with pytest.raises(ValueError) as info:
        zoo.resolve_config('retinanet_poolformer_s13')
    assert 'retinanet_poolformer_s12' in str(info.value) and 'closest' in str(info.value)
    with pytest.raises(FileNotFoundError) as info:
        zoo.resolve_config('configs/detection/retinanet_poolfomer_s12.py')
    assert 'config file not found' in str(info.value)
    assert 'retinanet_poolformer_s12' in str(info.value)
    with pytest.raises(FileNotFoundError) as info:
        zoo.resolve_config('metaformer_mm::detection/mask_rcnn_poolformer_s13.py')
    assert 'detection/mask_rcnn_poolformer_s12.py' in str(info.value)


def test_model_weights_from_the_index():
    assert zoo.model_weights('fpn_poolformer_s12').startswith(
        'https://download.openmmlab.com/mmsegmentation/v0.5/poolformer/fpn_poolformer_s12_')
    # sail-sg's detectors are on Google Drive only: no direct URL, the page is recorded.
    assert zoo.model_weights('retinanet_poolformer_s12') is None
    assert zoo.model_info('retinanet_poolformer_s12')['Download Page'].startswith(
        'https://drive.google.com/')
    with pytest.raises(ValueError, match='fpn_poolformer_s12'):
        zoo.model_weights('fpn_poolformer_s21')


# --------------------------------------------------------------------------- names -> weights
def test_resolve_weights_names_paths_and_urls(tmp_path):
    assert zoo.resolve_weights('poolformer_s12').endswith('/v1.0/poolformer_s12.pth.tar')
    assert zoo.resolve_weights('https://example.org/x.pth') == 'https://example.org/x.pth'
    assert zoo.resolve_weights('checkpoints/missing.pth') == 'checkpoints/missing.pth'
    local = tmp_path / 'caformer_s18'  # an existing file wins over the name
    local.write_bytes(b'')
    assert zoo.resolve_weights(str(local)) == str(local)
    with pytest.raises(ValueError) as info:
        zoo.resolve_weights('caformer_s19')
    assert 'closest' in str(info.value) and 'caformer_s18' in str(info.value)


def test_weights_table_overrides(tmp_path, monkeypatch):
    assert zoo.resolve_weights('mine', table={'mine': '/data/mine.pth'}) == '/data/mine.pth'
    mapping = tmp_path / 'mirror.yml'
    mapping.write_text('poolformer_s12: http://mirror.local/poolformer_s12.pth.tar\n')
    monkeypatch.setenv(zoo.WEIGHTS_ENV, str(mapping))
    assert zoo.resolve_weights('poolformer_s12') == 'http://mirror.local/poolformer_s12.pth.tar'
    mapping.write_text('- not a mapping\n')
    with pytest.raises(ValueError, match='expected a mapping'):
        zoo.resolve_weights('poolformer_s12')
    broken = tmp_path / 'broken.json'
    broken.write_text('{"poolformer_s12": ')
    monkeypatch.setenv(zoo.WEIGHTS_ENV, str(broken))
    with pytest.raises(ValueError, match='broken.json: cannot parse it'):
        zoo.resolve_weights('poolformer_s12')
    monkeypatch.setenv(zoo.WEIGHTS_ENV, str(tmp_path / 'none.json'))
    with pytest.raises(FileNotFoundError, match='none.json'):
        zoo.resolve_weights('poolformer_s12')


def test_weights_by_name_download_from_a_local_server(http_server, http_requests, reference_dir,
                                                      tmp_path, monkeypatch):
    """A name in init_cfg -> its URL (a mirror table) -> downloaded -> the backbone's weights."""
    import shutil

    from metaformer_mm.models.backbones.metaformer import MetaFormer
    www, base = http_server
    requests = http_requests
    source = osp.join(reference_dir, 'poolformer_tiny', 'official.pth')
    shutil.copy(source, www / 'poolformer_tiny.pth.tar')
    table = tmp_path / 'weights.json'
    table.write_text(json.dumps({'poolformer_tiny': f'{base}/poolformer_tiny.pth.tar'}))
    monkeypatch.setenv(zoo.WEIGHTS_ENV, str(table))

    url = zoo.resolve_weights('poolformer_tiny')
    assert url == f'{base}/poolformer_tiny.pth.tar'
    model = MetaFormer(arch=TINY, fork_feat=True,
                       init_cfg=dict(type='Pretrained', checkpoint=url))
    model.init_weights()
    assert requests == ['/poolformer_tiny.pth.tar']
    by_path = MetaFormer(arch=TINY, fork_feat=True,
                         init_cfg=dict(type='Pretrained', checkpoint=source))
    by_path.init_weights()
    for key, value in by_path.state_dict().items():
        if not key.startswith('out_norms.'):  # output norms keep their initial values
            assert torch.equal(model.state_dict()[key], value), key
    # A misspelt name never reaches the network and lists the mirror's name too.
    with pytest.raises(ValueError, match='poolformer_tiny'):
        zoo.resolve_weights('poolformer_tini')
    assert requests == ['/poolformer_tiny.pth.tar']


# --------------------------------------------------------------------------- metaformer_mm::
@pytest.mark.parametrize('base, task', [
    ('detection/retinanet_poolformer_s12.py', 'det'),
    ('segmentation/fpn_poolformer_s12.py', 'seg')])
def test_user_config_inherits_a_package_config(tmp_path, monkeypatch, base, task):
    """``_base_ = ['metaformer_mm::...']`` in a config of one's own, outside the checkout;
    the result equals the repository config plus the user's change, and builds."""
    user = tmp_path / 'elsewhere' / 'my_config.py'
    user.parent.mkdir()
    user.write_text(f"_base_ = ['metaformer_mm::{base}']\n"
                    "model = dict(backbone=dict(init_cfg=None))\n")
    monkeypatch.chdir(user.parent)
    cfg = Config.fromfile(str(user))
    repo = _parse(osp.join(ROOT, 'configs', base))
    assert cfg.model.backbone.init_cfg is None
    assert {k: v for k, v in cfg.model.backbone.items() if k != 'init_cfg'} == \
        {k: v for k, v in repo.model.backbone.items() if k != 'init_cfg'}
    assert cfg.default_scope == repo.default_scope
    from mmengine.registry import init_default_scope
    init_default_scope(cfg.default_scope)
    if task == 'det':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    model = MODELS.build(cfg.model)
    assert type(model.backbone).__name__ == 'PoolFormer'


def test_mmengine_hub_get_config_finds_package_configs():
    from mmengine.hub import get_config
    cfg = get_config('metaformer_mm::segmentation/fpn_poolformer_s12.py', pretrained=True)
    assert cfg.model.backbone.arch == 's12'
    assert cfg.model_path == zoo.model_weights('fpn_poolformer_s12')


# --------------------------------------------------------------------------- README
def test_readme_model_zoo_tables_are_the_index():
    with open(osp.join(ROOT, 'README.md')) as f:
        text = f.read()
    blocks = zoo.README_BLOCK.findall(text)
    assert [kind for _, kind, _, _ in blocks] == ['detection', 'segmentation']
    assert zoo.render_readme(text) == text, \
        'README model-zoo tables are stale: python tools/model_zoo.py readme --write'
    tables = ''.join(table for _, _, table, _ in blocks)
    for entry in zoo.model_index().values():
        if entry['Metadata']['Training Data'] in ('COCO', 'ADE20K'):
            assert f'| `{entry["Name"]}` |' in tables
        else:  # the demo model: its config is named where the demo is described
            assert entry['Config'] in text


def _readme_params():
    """{model name: its Params cell} of the README's model-zoo tables."""
    with open(osp.join(ROOT, 'README.md')) as f:
        text = f.read()
    cells = {}
    for _, _, table, _ in zoo.README_BLOCK.findall(text):
        lines = [line for line in table.splitlines() if line.startswith('|')]
        column = [c.strip() for c in lines[0].split('|')].index('Params')
        for line in lines[2:]:
            row = [c.strip() for c in line.split('|')]
            cells[row[1].strip('`')] = row[column]
    return cells


# Exact whole-model counts where they are known to the unit: RandFormer's configs (their
# frozen random matrices, 235,298, included).
EXACT_PARAMS = {'retinanet_randformer_s12': 21864878, 'mask_rcnn_randformer_s12': 31782442,
                'fpn_randformer_s12': 15881680}
RANDFORMER_S12_FROZEN = 235298


@pytest.mark.parametrize('name', sorted(_readme_params()))
def test_readme_params_are_the_whole_model_counts_of_the_configs(name):
    """Every row of the README's detection and segmentation tables (PoolFormer, sMLPNet,
    CAFormer, ConvFormer, RandFormer): the config's model, built with mmdet's or mmseg's
    ``MODELS``, has the README's parameter count to its last printed digit."""
    from mmengine.registry import init_default_scope
    cfg = Config.fromfile(zoo.resolve_config(name))
    cfg.model.backbone.init_cfg = None  # no download: the count does not depend on weights
    init_default_scope(cfg.default_scope)
    if cfg.default_scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    model = MODELS.build(cfg.model)
    count = sum(p.numel() for p in model.parameters())
    assert f'{count / 1e6:.2f}M' == _readme_params()[name], (name, count)
    if name in EXACT_PARAMS:
        assert count == EXACT_PARAMS[name]
        assert sum(p.numel() for p in model.parameters() if not p.requires_grad) == \
            RANDFORMER_S12_FROZEN


def _model_zoo_process(*args, env=None):
    """``python tools/model_zoo.py ARGS`` as a user runs it."""
    import os
    import sys
    return subprocess.run([sys.executable, osp.join(ROOT, 'tools', 'model_zoo.py'), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, **(env or {})))


def _model_zoo(*args, env=None):
    """tools/model_zoo.py's main(ARGS) in this process: its output and exit status."""
    from in_process import run_main
    return run_main('tools/model_zoo.py', *args, env=env)


def test_model_zoo_tool_lists_shows_prints_weights_and_rewrites_readme(tmp_path):
    index = zoo.model_index()
    # list: one line per model of the index, with its config
    listed = _model_zoo('list')
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert {name: config for name, config in rows} == \
        {name: entry['Config'] for name, entry in index.items()}

    # show: one entry as JSON with its config path; an unknown name lists the closest
    shown = _model_zoo('show', 'fpn_poolformer_s12_ade20k_40k')  # an alias
    assert shown.returncode == 0, shown.stderr
    shown = json.loads(shown.stdout)
    assert shown['Name'] == 'fpn_poolformer_s12' and osp.isfile(shown['config_path'])
    unknown = _model_zoo('show', 'fpn_poolformer_s13')
    assert unknown.returncode == 2 and 'fpn_poolformer_s12' in unknown.stderr

    # weights: the ImageNet table, name -> URL; METAFORMER_MM_WEIGHTS adds and replaces names
    mirror = tmp_path / 'mirror.json'
    mirror.write_text(json.dumps({'poolformer_s12': 'http://mirror/s12.pth',
                                  'my_weights': 'http://mirror/mine.pth'}))
    for env, expected in [(None, dict(zoo.IMAGENET_WEIGHTS)),
                          ({zoo.WEIGHTS_ENV: str(mirror)},
                           dict(zoo.IMAGENET_WEIGHTS, poolformer_s12='http://mirror/s12.pth',
                                my_weights='http://mirror/mine.pth'))]:
        printed = _model_zoo('weights', env=env)
        assert printed.returncode == 0, printed.stderr
        assert dict(line.split() for line in printed.stdout.splitlines()) == expected
    assert 'caformer_s18' in expected and expected['caformer_s18'].startswith('https://')

    # readme: a stale copy is reported (exit 1); --write regenerates the tables from the
    # index, which gives back the committed README byte for byte
    with open(osp.join(ROOT, 'README.md')) as f:
        readme = f.read()
    stale = readme.replace('| 21.65M |', '| 1.00M |', 1)
    stale = '\n'.join(line for line in stale.split('\n')
                      if not line.startswith('| `fpn_convformer_s18` |'))
    assert stale.count('| 1.00M |') == 1 and '`fpn_convformer_s18`' not in stale
    copy = tmp_path / 'README.md'
    copy.write_text(stale)
    check = _model_zoo_process('readme', str(copy))  # the script's exit status, as a process
    assert check.returncode == 1 and 'readme --write' in check.stderr
    assert copy.read_text() == stale  # checking never writes
    written = _model_zoo('readme', '--write', str(copy))
    assert written.returncode == 0, written.stderr
    assert copy.read_text() == readme
    assert _model_zoo('readme', str(copy)).returncode == 0


def test_tools_take_model_names(repo_root, tmp_path):
    """Model names work wherever the tools take a config; a wrong one gets the closest names."""
    from metaformer_mm.cli.config import load_config
    cfg = load_config('fpn_randformer_s12')
    assert cfg.default_scope == 'mmseg' and cfg.model.backbone.type == 'RandFormer'
    assert load_config('mmdet::retinanet/retinanet_r50_fpn_1x_coco.py').default_scope == 'mmdet'
    from in_process import run_main
    for tool in ('tools/train.py', 'tools/test.py'):
        extra = [str(tmp_path / 'x.pth')] if tool.endswith('test.py') else []
        proc = run_main(tool, 'retinanet_poolformer_s13', *extra, '--work-dir', tmp_path / 'w',
                        cwd=repo_root)
        assert proc.returncode != 0
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith('error:') and 'retinanet_poolformer_s13' in last, last
        assert 'closest: ' in last and 'retinanet_poolformer_s12' in last, last
