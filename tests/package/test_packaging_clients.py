"""OpenMMLab's own clients on a fresh install, each in a fresh interpreter: mim's CLI (list,
search, download, train, test, run), mmdet's and mmseg's installed ``tools/train.py`` on a
user config whose ``_base_`` is ``metaformer_mm::...``, and ``mmengine.hub.get_config``
before any ``import metaformer_mm``. Both a wheel and a PEP 660 editable install are checked.

openmim runs from a folder of its own put after site-packages (``make setup`` makes
``.venv/mim``; its setuptools pin cannot reach the project's environment)."""
import os
import os.path as osp
import re
import subprocess
import sys

import pytest

from venvs import checkout_copy, clean_env, make_venv, pip_install, run_outside

pytestmark = pytest.mark.slow

MIM_SITE_ENV = 'METAFORMER_MM_MIM_SITE'
# What .venv/bin/mim runs (tools/ci/setup_env.sh): mim's folder after site-packages.
MIM_LAUNCH = ('import runpy, sys; sys.path.append(sys.argv.pop(1)); '
              'runpy.run_module("mim", run_name="__main__", alter_sys=True)')
# released: a direct URL, only a Google Drive page, nothing
DIRECT, DRIVE, UNRELEASED = ('fpn_poolformer_s12', 'retinanet_poolformer_s12',
                             'retinanet_caformer_s18')


@pytest.fixture(scope='session')
def mim_site(tmp_path_factory) -> str:
    """The folder holding openmim and its pins: $METAFORMER_MM_MIM_SITE, the venv's mim/
    folder (``make setup``), else a fresh ``pip install --target`` (needs PyPI)."""
    for folder in (os.environ.get(MIM_SITE_ENV), osp.join(sys.prefix, 'mim')):
        if folder and osp.isdir(osp.join(folder, 'mim')):
            return folder
    target = str(tmp_path_factory.mktemp('mim_site'))
    result = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--target', target,
                             '--disable-pip-version-check', 'openmim'], capture_output=True,
                            text=True, timeout=900)
    if result.returncode != 0:
        pytest.skip('openmim cannot be installed here (no .venv/mim from `make setup`, and pip '
                    f'failed: {result.stderr.strip().splitlines()[-1:]})')
    return target


def _mim(python: str, site: str, *args: str, cwd: str) -> str:
    os.makedirs(cwd, exist_ok=True)
    result = subprocess.run([python, '-c', MIM_LAUNCH, site, *map(str, args)], cwd=cwd,
                            capture_output=True, text=True, timeout=900, env=clean_env())
    out = result.stdout + result.stderr
    assert result.returncode == 0 and 'Traceback' not in out, f'mim {args}:\n{out[-5000:]}'
    return out


def _user_config(coco_mini_run, folder) -> tuple:
    """A coco_mini 1-iteration RetinaNet config whose only base is ``metaformer_mm::...``."""
    path, options = coco_mini_run(folder, DRIVE)
    with open(path) as f:
        lines = f.read().splitlines()
    lines[0] = f"_base_ = ['metaformer_mm::detection/{DRIVE}.py']"
    with open(path, 'w') as f:
        f.write('\n'.join(lines) + '\n')
    return path, ['--cfg-options', *options]


def _fresh_interpreter_checks(python: str, cwd: str) -> None:
    """Start-up stays light; mmengine resolves our configs before the package is imported."""
    out = run_outside(python, cwd, """
        import sys
        print('light start', not {'torch', 'mmengine', 'metaformer_mm'} & set(sys.modules))
        from mmengine.hub import get_config
        cfg = get_config('metaformer_mm::segmentation/fpn_poolformer_s12.py')
        print('config', cfg.model.backbone.type, cfg.default_scope)
        """)
    assert 'light start True' in out and 'config PoolFormer mmseg' in out


def _check_list_search_download(python, site, tmp_path, with_direct: bool) -> None:
    out = _mim(python, site, 'list', cwd=str(tmp_path))
    (row,) = [line for line in out.splitlines() if line.startswith('metaformer')]
    assert 'https://github.com/sail-sg/metaformer' in row and 'UNKNOWN' not in row, row
    out = _mim(python, site, 'search', 'metaformer_mm', '--field', 'config', cwd=str(tmp_path))
    assert all(name in out for name in (DIRECT, DRIVE, UNRELEASED, 'mask_rcnn_poolformer_s12'))
    dest = tmp_path / 'downloads'
    configs = [DRIVE, UNRELEASED] + ([DIRECT] if with_direct else [])
    out = _mim(python, site, 'download', 'metaformer_mm', '--config', *configs, '--dest', dest,
               cwd=str(tmp_path))
    assert sorted(p.name for p in dest.glob('*.py')) == sorted(f'{c}.py' for c in configs)
    assert re.search(rf'{DRIVE}: no direct download .* Google Drive page', out), out
    assert f'{UNRELEASED}: no direct download of its weights; no trained checkpoint' in out
    run_outside(python, str(tmp_path), f"""
        from mmengine.config import Config
        cfg = Config.fromfile({str(dest / (DRIVE + '.py'))!r})
        assert cfg.model.backbone.type == 'PoolFormer' and cfg.model.type == 'RetinaNet'
        """)


def test_wheel_with_mim_mmdet_tools_and_fresh_interpreters(tmp_path, http_server, mim_site,
                                                           coco_mini_run):
    root, base = http_server
    src = checkout_copy(str(tmp_path / 'src'))
    # the direct download of the index, served from 127.0.0.1
    (root / 'fpn_s12_ade20k.pth').write_bytes(b'released checkpoint bytes')
    metafile = osp.join(src, 'configs', 'metafiles', 'poolformer.yml')
    with open(metafile) as f:
        text = f.read()
    text = re.sub(r'https://download\.openmmlab\.com/\S*fpn_poolformer_s12_\S*\.pth',
                  f'{base}/fpn_s12_ade20k.pth', text)
    with open(metafile, 'w') as f:
        f.write(text)
    wheels = tmp_path / 'wheels'
    result = subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '-q',
                             '--no-build-isolation', '-w', str(wheels), src],
                            capture_output=True, text=True, timeout=600, env=clean_env())
    assert result.returncode == 0, result.stderr[-3000:]
    (wheel,) = wheels.glob('metaformer_mm-*.whl')
    python = make_venv(str(tmp_path / 'venv'))
    # `make setup`'s check: a venv without the installed hook and openmim is not trusted
    check = [python, osp.join(src, 'tools', 'ci', 'check_env.py')]
    result = subprocess.run(check, capture_output=True, text=True, env=clean_env())
    assert result.returncode == 1 and 'metaformer_mm-startup.pth is missing' in result.stderr \
        and 'openmim is missing' in result.stderr, result.stderr
    pip_install(python, str(wheel))
    os.symlink(mim_site, tmp_path / 'venv' / 'mim')
    result = subprocess.run(check, capture_output=True, text=True, env=clean_env())
    assert result.returncode == 0, result.stderr
    elsewhere = str(tmp_path / 'elsewhere')
    _fresh_interpreter_checks(python, elsewhere)

    _check_list_search_download(python, mim_site, tmp_path, with_direct=True)
    assert (tmp_path / 'downloads' / 'fpn_s12_ade20k.pth').read_bytes() == \
        b'released checkpoint bytes'

    # mmdet's own tools/train.py (shipped in mmdet/.mim/tools), no custom_imports of ours
    import mmdet
    mmdet_train = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools', 'train.py')
    config, options = _user_config(coco_mini_run, tmp_path)
    result = subprocess.run([python, mmdet_train, config, '--work-dir', tmp_path / 'mmdet_run',
                             *options], cwd=elsewhere, capture_output=True, text=True,
                            timeout=900, env=clean_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    checkpoint = tmp_path / 'mmdet_run' / 'epoch_1.pth'
    assert checkpoint.is_file()

    out = _mim(python, mim_site, 'test', 'metaformer_mm', config, '--checkpoint', checkpoint,
               '--work-dir', tmp_path / 'mim_test', *options, cwd=elsewhere)
    assert 'coco/bbox_mAP' in out
    out = _mim(python, mim_site, 'run', 'metaformer_mm', 'model_zoo', 'list', cwd=elsewhere)
    assert re.search(rf'{DRIVE} +configs/detection/{DRIVE}\.py', out), out


def test_editable_install_with_mim_mmseg_tools_and_fresh_interpreters(tmp_path, mim_site,
                                                                       coco_mini_run,
                                                                       ade_mini_run):
    src = checkout_copy(str(tmp_path / 'src'))
    python = make_venv(str(tmp_path / 'venv'))
    pip_install(python, '-e', src)
    elsewhere = str(tmp_path / 'elsewhere')
    _fresh_interpreter_checks(python, elsewhere)

    # mmseg's own tools/train.py (shipped in mmseg/.mim/tools) on a metaformer_mm:: base
    import mmseg
    seg_config = ade_mini_run(tmp_path, 'fpn_poolformer_s12', iters=1)
    with open(seg_config) as f:
        text = re.sub(r"^_base_ = .*$", "_base_ = ['metaformer_mm::segmentation/"
                      "fpn_poolformer_s12.py']", f.read(), count=1, flags=re.M)
    with open(seg_config, 'w') as f:
        f.write(text)
    result = subprocess.run([python, osp.join(osp.dirname(mmseg.__file__), '.mim', 'tools',
                                              'train.py'), seg_config, '--work-dir',
                             tmp_path / 'mmseg_run'], cwd=elsewhere, capture_output=True,
                            text=True, timeout=900, env=clean_env())
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / 'mmseg_run' / 'iter_1.pth').is_file()
    _check_list_search_download(python, mim_site, tmp_path, with_direct=False)
    # mim runs the project's own tools/train.py through .mim/tools (a link in the checkout)
    assert osp.realpath(osp.join(src, 'metaformer_mm', '.mim', 'tools', 'train.py')) == \
        osp.realpath(osp.join(src, 'tools', 'train.py'))
    config, options = _user_config(coco_mini_run, tmp_path)
    out = _mim(python, mim_site, 'train', 'metaformer_mm', config, '--work-dir',
               tmp_path / 'mim_run', *options, cwd=elsewhere)
    assert (tmp_path / 'mim_run' / 'epoch_1.pth').is_file(), out[-3000:]
