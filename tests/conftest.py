"""Shared fixtures: paths of the reference data and small models."""
import os
import os.path as osp

import pytest
import torch

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
SHARED = os.environ.get('METAFORMER_SHARED', osp.join(ROOT, '..', 'shared'))
REFERENCE = osp.join(SHARED, 'reference')
DATA = osp.join(SHARED, 'data')

# The suite runs on 2 cores; more threads than cores only adds contention.
torch.set_num_threads(min(2, torch.get_num_threads()))


def _need(path: str) -> str:
    if not osp.exists(path):
        pytest.fail(f'test data missing: {path} (set METAFORMER_SHARED to the shared/ folder)')
    return path


@pytest.fixture(scope='session')
def reference_dir() -> str:
    return _need(REFERENCE)


@pytest.fixture(scope='session')
def data_dir() -> str:
    return _need(DATA)


@pytest.fixture(scope='session')
def repo_root() -> str:
    return ROOT


@pytest.fixture(scope='session')
def key_shapes(reference_dir):
    """Returns a loader: name -> {tensor name: shape} of a full-size original state dict
    listed in reference/keys/NAME.txt (e.g. 'poolformer_s12')."""

    def load(name: str):
        shapes = {}
        with open(osp.join(reference_dir, 'keys', f'{name}.txt')) as f:
            for line in f:
                if line.startswith('#') or not line.strip():
                    continue
                key, shape = line.split(' ', 1)
                shapes[key] = tuple(int(d) for d in shape.strip().strip('[]').split(',') if d.strip())
        return shapes

    return load
