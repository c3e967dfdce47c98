"""Package metadata that users and packagers rely on: the torch floor, licence and credits."""
import os.path as osp
import re

import pytest
import torch

from metaformer_mm.version import TORCH_MIN, check_torch

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def test_setup_declares_the_torch_floor_the_package_checks():
    setup_py = open(osp.join(ROOT, 'setup.py')).read()
    assert "torch>={read_version_field('TORCH_MIN')}" in setup_py
    assert re.fullmatch(r'\d+\.\d+', TORCH_MIN)


def test_torch_floor_check():
    check_torch(torch.__version__)  # the torch the suite runs on
    check_torch('2.1.0+cpu')
    with pytest.raises(ImportError, match=r'needs torch>=2\.1, found torch 2\.0\.1'):
        check_torch('2.0.1')
    with pytest.raises(ImportError, match='1.13'):
        check_torch('1.13.1+cu117')


def test_the_floor_is_what_the_code_needs():
    # A bias-free 'LN' norm_cfg (the MetaFormer baselines' style) is torch 2.1's `bias=` argument.
    from metaformer_mm.models.norms import build_norm
    assert build_norm(dict(type='LN', eps=1e-6, bias=False), 8).bias is None


def test_licence_and_credits():
    licence = open(osp.join(ROOT, 'LICENSE')).read()
    assert 'Apache License' in licence and 'Version 2.0' in licence
    notice = open(osp.join(ROOT, 'NOTICE')).read()
    for repo, licence_name in [('sail-sg/poolformer', 'Apache'), ('sail-sg/metaformer', 'Apache'),
                               ('microsoft/SPACH', 'MIT')]:
        line = next(l for l in notice.splitlines() if repo in l)
        assert licence_name in line, line
