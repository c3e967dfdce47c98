"""mmengine checkpoints under torch's weights_only=True default: resume, load_from, refusal."""
import copy
import os
import os.path as osp
import shutil

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner

import metaformer_mm  # noqa: F401  (allow-lists mmengine's checkpoint types)
from metaformer_mm.checkpoint import CheckpointError, read_checkpoint, url_cache_file
from metaformer_mm.models import PoolFormer
from tiny_runner import TINY, RandomImages, TinyClassifier


class Snapshot(Hook):
    """Records where training starts and the optimizer state it starts with."""

    def before_train(self, runner) -> None:
        self.start_iter = runner.iter
        # a copy: the optimizer updates its state tensors in place while training
        self.optim_state = copy.deepcopy(runner.optim_wrapper.optimizer.state_dict())


def _runner(work_dir, max_iters, **kwargs) -> Runner:
    return Runner(
        model=TinyClassifier(), work_dir=str(work_dir),
        train_dataloader=dict(dataset=RandomImages(16), batch_size=4,
                              sampler=dict(type='DefaultSampler', shuffle=True),
                              collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3)),
        train_cfg=dict(by_epoch=False, max_iters=max_iters),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False),
                           logger=dict(type='LoggerHook', interval=1)),
        randomness=dict(seed=0), **kwargs)


@pytest.mark.slow
def test_resume_continues_with_saved_iteration_and_optimizer(tmp_path):
    _runner(tmp_path, max_iters=4).train()
    saved = osp.join(tmp_path, 'iter_4.pth')
    checkpoint = torch.load(saved, map_location='cpu', weights_only=True)  # no UnpicklingError
    assert checkpoint['meta']['iter'] == 4

    snapshot = Snapshot()
    resumed = _runner(tmp_path, max_iters=6, resume=True, custom_hooks=[snapshot])
    resumed.train()
    assert snapshot.start_iter == 4
    assert resumed.iter == 6
    expected = checkpoint['optimizer']['state']
    assert expected, 'the saved optimizer has no state'
    for idx, state in expected.items():
        for name in ('exp_avg', 'exp_avg_sq'):
            assert torch.equal(snapshot.optim_state['state'][idx][name], state[name])


@pytest.mark.slow
def test_load_from_loads_weights(tmp_path):
    _runner(tmp_path / 'a', max_iters=2).train()
    saved = osp.join(tmp_path, 'a', 'iter_2.pth')
    runner = _runner(tmp_path / 'b', max_iters=2, load_from=saved)
    runner.load_or_resume()
    weights = torch.load(saved, map_location='cpu', weights_only=True)['state_dict']
    for key, value in runner.model.state_dict().items():
        assert torch.equal(value, weights[key]), key


class _Payload:
    """Pickles as a call to os.system: what a malicious checkpoint does."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


def test_pickled_callable_is_refused_and_never_run(repo_root, tmp_path):
    """Through ``read_checkpoint``, a backbone's ``init_cfg``, the Runner's ``load_from`` and
    mmdet's ``init_detector``: refused, naming the file and the callable; it never runs."""
    from mmdet.apis import init_detector
    from mmengine.config import Config
    marker = tmp_path / 'pwned'
    path = str(tmp_path / 'evil.pth')
    torch.save({'state_dict': {'w': torch.zeros(1)}, 'extra': _Payload(str(marker))}, path)
    refused = r'refused to load .*evil\.pth: it holds a pickled object \(posix\.system\)'
    with pytest.raises(CheckpointError, match=refused):
        read_checkpoint(path)
    model = PoolFormer(arch=TINY, init_cfg=dict(type='Pretrained', checkpoint=path))
    with pytest.raises(CheckpointError, match='refused to load'):
        model.init_weights()
    with pytest.raises(Exception, match='unsupported GLOBAL posix.system'):  # mmengine's loader
        _runner(tmp_path / 'w', max_iters=1, load_from=path).load_or_resume()
    evil_meta = str(tmp_path / 'evil_meta.pth')  # the payload where the inferencer reads meta
    torch.save({'state_dict': {}, 'meta': _Payload(str(marker))}, evil_meta)
    cfg = Config.fromfile(osp.join(repo_root, 'configs', 'detection',
                                   'retinanet_poolformer_s12.py'))
    cfg.model.backbone.merge(dict(init_cfg=None, arch=dict(_delete_=True, **TINY)))
    cfg.model.neck.in_channels = TINY['dims'][1:]
    with pytest.raises(CheckpointError, match=refused.replace('evil', 'evil_meta')):
        init_detector(cfg, evil_meta, device='cpu')
    assert not marker.exists()


def test_url_checkpoint_is_downloaded_once_and_cached(http_server, reference_dir):
    root, base = http_server
    shutil.copy(osp.join(reference_dir, 'poolformer_tiny', 'official.pth'),
                root / 'poolformer_tiny.pth.tar')
    url = f'{base}/poolformer_tiny.pth.tar'
    arch = dict(base='poolformer_s12', depths=[1, 1, 2, 1], dims=[16, 32, 48, 64])
    first = PoolFormer(arch=arch, init_cfg=dict(type='Pretrained', checkpoint=url))
    first.init_weights()
    cached = url_cache_file(url)
    assert cached.startswith(str(root.parent / 'torch_home' / 'hub' / 'checkpoints'))
    assert cached.endswith('_poolformer_tiny.pth.tar') and osp.isfile(cached)
    (root / 'poolformer_tiny.pth.tar').unlink()
    second = PoolFormer(arch=arch, init_cfg=dict(type='Pretrained', checkpoint=url))
    second.init_weights()  # the server no longer has it: this comes from the cache
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key])


def test_training_script_checkpoint_with_args_namespace_loads(tmp_path, reference_dir):
    """DeiT-style files ({'model': ..., 'args': Namespace}) load; the Namespace runs no code."""
    import argparse
    state = torch.load(osp.join(reference_dir, 'smlpnet_tiny', 'official.pth'), weights_only=True)
    path = str(tmp_path / 'smlp_train.pth')
    torch.save({'model': state, 'epoch': 299, 'args': argparse.Namespace(model='smlpnet_t')}, path)
    from metaformer_mm.models import SMLPNet
    model = SMLPNet(arch=dict(base='smlpnet_tiny', dims=[8, 16, 32, 64], depths=[1, 1, 2, 1]),
                    image_size=64, fork_feat=False, num_classes=10,
                    init_cfg=dict(type='Pretrained', checkpoint=path))
    model.init_weights()
    assert torch.equal(model.head.fc.weight, state['mlp_head.0.weight'])
