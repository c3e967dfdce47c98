"""The README's promises that a test can hold it to: its config example builds, and every
config, tool and script it names exists."""
import os.path as osp
import re

import pytest
import torch
from mmengine.config import Config

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


@pytest.fixture(scope='module')
def readme() -> str:
    with open(osp.join(ROOT, 'README.md')) as f:
        return f.read()


def _section(text: str, title: str) -> str:
    start = text.index(title)
    end = text.find('\n## ', start + len(title))
    return text[start:end if end > 0 else None]


def test_own_config_example_builds_and_runs(readme, tmp_path):
    section = _section(readme, '## Use a backbone in your own config')
    code = re.search(r'```python\n(.*?)```', section, re.S).group(1)
    path = tmp_path / 'my_config.py'
    path.write_text(code)
    cfg = Config.fromfile(str(path))
    assert cfg.model.backbone.type == 'PoolFormer'
    cfg.model.backbone.init_cfg = None  # the ImageNet weights cannot be downloaded here
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    import metaformer_mm  # noqa: F401
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model).eval()
    with torch.no_grad():
        feats = model.extract_feat(torch.randn(1, 3, 128, 160))
    assert [f.shape[-2:] for f in feats] == [(32, 40), (16, 20), (8, 10), (4, 5), (2, 3)]


def test_every_named_file_exists(readme):
    names = set(re.findall(r'(?<![\w/])((?:configs|tools|demo|tests)/[\w./-]+\.(?:py|sh))', readme))
    assert names, 'the README names no config or tool'
    missing = sorted(n for n in names if not osp.isfile(osp.join(ROOT, n)))
    assert not missing, f'the README names files that do not exist: {missing}'
