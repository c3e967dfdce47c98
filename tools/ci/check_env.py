#!/usr/bin/env python
"""Checks that the environment `make setup` built is still the one it built (run by `make
setup` before it trusts its stamp file): installing other tools can change it under it, e.g.
openmim's openxlab pins setuptools 60.2.0, which breaks builds. Exit status 1 names each
difference; then `make setup` repairs the environment."""
import importlib.metadata as md
import os.path as osp
import sys
import sysconfig

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
PINNED = {'mmengine': '0.10.7', 'mmcv': '2.1.0', 'mmdet': '3.3.0', 'mmsegmentation': '1.2.2'}


def problems() -> list:
    found = []
    for name, want in PINNED.items():
        try:
            have = md.version(name)
        except md.PackageNotFoundError:
            have = None
        if have != want:
            found.append(f'{name} is {have or "not installed"}, expected {want}')
    try:
        major = int(md.version('setuptools').split('.')[0])
        if not 77 <= major < 82:
            found.append(f'setuptools is {md.version("setuptools")}, expected >=77.0.3,<82 '
                         '(torch needs >=77; mmcv 2.1 builds need pkg_resources)')
    except md.PackageNotFoundError:
        found.append('setuptools is not installed')
    site = sysconfig.get_paths()['purelib']
    if not osp.isfile(osp.join(site, 'metaformer_mm-startup.pth')):
        found.append(f'{site}/metaformer_mm-startup.pth is missing (metaformer_mm is not '
                     'installed by this setup.py)')
    if not osp.isdir(osp.join(osp.dirname(sys.executable), '..', 'mim', 'mim')):
        found.append('openmim is missing from the venv\'s mim folder')
    try:
        import mmcv.ops  # noqa: F401  (the compiled ops against this torch)
    except Exception as err:  # noqa: BLE001  (any import failure means a rebuild)
        found.append(f'mmcv.ops does not load: {err}')
    return found


if __name__ == '__main__':
    issues = problems()
    for issue in issues:
        print(f'[setup] environment changed: {issue}', file=sys.stderr)
    sys.exit(1 if issues else 0)
