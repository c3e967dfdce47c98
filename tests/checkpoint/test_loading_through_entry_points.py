"""Checkpoints through mmdet's and mmseg's entry points: legacy layouts, misfits, embedded configs.

Legacy checkpoints are made here from this project's models by the documented key maps
(``backbone.stem.conv`` -> ``backbone.patch_embed.proj``, ``stages.N.downsample`` ->
``network.2N-1.proj``, ``stages.N.blocks.M`` -> ``network.2N.M``, ``out_norms.N`` ->
``normN*2``), with ``meta`` and ``optimizer`` entries as mmdet 2.x / mmseg 0.x saved them.
The backbones are PoolFormer-S12 with one block per stage: the released key layout at a
fraction of the cost.
"""
import copy
import os.path as osp
import re
from collections import OrderedDict

import pytest
import torch
import torch.nn as nn
from mmengine.config import Config
from mmengine.model import BaseModel, revert_sync_batchnorm
from mmengine.registry import init_default_scope
from torch.utils.data import Dataset

from metaformer_mm.checkpoint import (CheckpointError, config_text_problem, partial_loading,
                                      read_checkpoint)
from metaformer_mm.models import CAFormer, PoolFormer
from legacy_layouts import to_legacy

TINY_S12 = dict(base='poolformer_s12', depths=[1, 1, 1, 1])
# A deeper model of the same widths: what an S24 config is to an S12 checkpoint.
TINY_S24 = dict(base='poolformer_s24', depths=[2, 2, 2, 2])


def legacy_checkpoint(model, kind: str, classes):
    """A whole-model checkpoint as mmdet 2.19 / mmseg 0.19 saved it (config text, CLASSES,
    optimizer state), the backbone in the sail-sg layout."""
    state = to_legacy(model.state_dict())
    params = [k for k in state if not k.endswith(('running_mean', 'running_var', 'tracked'))]
    meta = dict(env_info='sys.platform: linux', seed=0, exp_name=f'{kind}.py',
                config="model = dict(type='RetinaNet')\nimport os\n",  # 2.x's key: never run
                CLASSES=tuple(classes), epoch=12, iter=87960)
    meta['mmdet_version' if kind == 'det' else 'mmseg_version'] = '2.19.0' if kind == 'det' \
        else '0.19.0'
    if kind == 'seg':
        meta['PALETTE'] = [[i, i, i] for i in range(len(classes))]
    optimizer = dict(state={i: dict(step=torch.tensor(1.0), exp_avg=torch.zeros(1))
                            for i in range(3)},
                     param_groups=[dict(lr=1e-4, weight_decay=1e-4, params=list(
                         range(len(params))))])
    return dict(meta=meta, state_dict=state, optimizer=optimizer)


def randomized(model, seed: int = 0):
    """Distinct values in every float tensor, so any mis-mapped key changes the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                noise = torch.rand(tensor.shape, generator=gen)
                tensor.copy_(noise + 0.5 if name.endswith('running_var') else (noise - 0.5) * 0.2)
    return model.eval()


def det_config(repo_root, name='retinanet_poolformer_s12', arch=TINY_S12):
    cfg = Config.fromfile(osp.join(repo_root, 'configs', 'detection', f'{name}.py'))
    cfg.model.backbone.arch = dict(arch)
    cfg.model.backbone.init_cfg = None
    return cfg


def seg_config(repo_root, arch=TINY_S12):
    cfg = Config.fromfile(osp.join(repo_root, 'configs', 'segmentation', 'fpn_poolformer_s12.py'))
    cfg.model.backbone.arch = dict(arch)
    cfg.model.backbone.init_cfg = None
    return cfg


def build(cfg, scope):
    init_default_scope(scope)
    if scope == 'mmdet':
        from mmdet.registry import MODELS
    else:
        from mmseg.registry import MODELS
    return revert_sync_batchnorm(MODELS.build(cfg.model))


def assert_same_backbone(model, source):
    ours = {k: v for k, v in model.state_dict().items() if k.startswith('backbone.')}
    theirs = {k: v for k, v in source.state_dict().items() if k.startswith('backbone.')}
    assert set(ours) == set(theirs)
    for key, value in theirs.items():
        assert torch.equal(ours[key], value), key


def assert_same_outputs(model, source, size=(64, 96)):
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ours, theirs = model.eval()._forward(x), source._forward(x)
    flat = lambda t: [t] if torch.is_tensor(t) else [y for z in t for y in flat(z)]  # noqa
    assert len(flat(ours)) == len(flat(theirs))
    for a, b in zip(flat(ours), flat(theirs)):
        assert torch.equal(a, b)


# --------------------------------------------------------------------------- legacy layouts
@pytest.fixture(scope='module')
def retinanet(repo_root, tmp_path_factory):
    """(config, source model, legacy file, our-layout file) of a tiny RetinaNet-S12."""
    from mmdet.datasets import CocoDataset
    cfg = det_config(repo_root)
    source = randomized(build(cfg, 'mmdet'))
    assert 'backbone.out_norms.0.weight' not in source.state_dict()  # FORK_LAST3, as released
    folder = tmp_path_factory.mktemp('retinanet')
    legacy, ours = str(folder / 'retinanet_mmdet2.pth'), str(folder / 'retinanet_ours.pth')
    classes = CocoDataset.METAINFO['classes']
    torch.save(legacy_checkpoint(source, 'det', classes), legacy)
    torch.save({'state_dict': source.state_dict(),
                'meta': {'dataset_meta': {'classes': classes}}}, ours)
    return cfg, source, legacy, ours


@pytest.fixture(scope='module')
def semantic_fpn(repo_root, tmp_path_factory):
    """(config, source model, legacy file) of a tiny Semantic FPN-S12 in the mmseg 0.x layout."""
    from mmseg.datasets import ADE20KDataset
    cfg = seg_config(repo_root)
    source = randomized(build(cfg, 'mmseg'))
    path = str(tmp_path_factory.mktemp('fpn') / 'fpn_mmseg0.pth')
    checkpoint = legacy_checkpoint(source, 'seg', ADE20KDataset.METAINFO['classes'])
    assert 'backbone.norm0.weight' in checkpoint['state_dict']
    torch.save(checkpoint, path)
    return cfg, source, path


def test_legacy_layout_is_recognised_not_ours(retinanet):
    raw = read_checkpoint(retinanet[2])
    keys = list(raw['state_dict'])
    assert 'backbone.patch_embed.proj.weight' in keys and 'backbone.norm2.weight' in keys
    assert 'backbone.norm0.weight' not in keys and not any('stages' in k for k in keys)


def _load_through(entry, cfg, path, tmp_path):
    """The model ``entry`` builds from ``cfg`` with the weights of ``path``."""
    if entry == 'init_cfg':
        cfg = copy.deepcopy(cfg)
        cfg.model.backbone.init_cfg = dict(type='Pretrained', checkpoint=path, prefix='backbone.')
        model = build(cfg, 'mmdet')
        model.init_weights()
        return model
    if entry == 'load_from':
        from mmengine.runner import Runner
        runner = Runner(model=cfg.model.to_dict(), work_dir=str(tmp_path), load_from=path,
                        default_scope='mmdet')
        runner.load_or_resume()
        return runner.model
    if entry == 'init_detector':
        from mmdet.apis import init_detector
        return init_detector(cfg.copy(), path, device='cpu')
    if entry == 'DetInferencer':
        from mmdet.apis import DetInferencer
        return DetInferencer(model=cfg.copy(), weights=path, device='cpu',
                             show_progress=False).model
    if entry == 'init_model':
        from mmseg.apis import init_model
        return init_model(cfg.copy(), path, device='cpu')
    assert entry == 'MMSegInferencer'
    from mmseg.apis import MMSegInferencer
    return MMSegInferencer(model=cfg.copy(), weights=path, device='cpu').model


@pytest.mark.parametrize('release, entry, first_class', [
    ('retinanet', 'init_cfg', None), ('retinanet', 'load_from', None),
    ('retinanet', 'init_detector', 'person'), ('retinanet', 'DetInferencer', 'person'),
    ('semantic_fpn', 'init_model', 'wall'), ('semantic_fpn', 'MMSegInferencer', 'wall')])
def test_legacy_release_loads_to_identical_outputs_through_every_entry_point(
        request, tmp_path, release, entry, first_class):
    """An mmdet 2.x / mmseg 0.x release (sail-sg backbone keys) through a backbone's
    ``init_cfg``, the Runner's ``load_from``, ``init_detector``/``init_model`` and the
    inferencers: converted on the way in, the backbone holds exactly the source's tensors and
    the model gives the source's outputs (the backbone's, for ``init_cfg``: it loads only the
    backbone); where the entry point reads classes, 2.x's ``meta['CLASSES']`` becomes
    ``dataset_meta['classes']``."""
    cfg, source, path = request.getfixturevalue(release)[:3]
    model = _load_through(entry, cfg, path, tmp_path)
    assert_same_backbone(model, source)
    if entry == 'init_cfg':
        x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            for ours, theirs in zip(model.backbone.eval()(x), source.backbone(x), strict=True):
                assert torch.equal(ours, theirs)
    else:
        assert_same_outputs(model, source)
    if first_class is not None:
        assert model.dataset_meta['classes'][0] == first_class


def test_conversion_is_logged_once(retinanet):
    from mmdet.apis import init_detector
    from mmengine.logging import MMLogger
    cfg, _, legacy, _ = retinanet
    logger = MMLogger.get_current_instance()
    records = []
    handler = _Collect(records)
    logger.addHandler(handler)
    try:
        init_detector(cfg.copy(), legacy, device='cpu')
    finally:
        logger.removeHandler(handler)
    lines = [r for r in records if 'official_v1 layout' in r]
    assert len(lines) == 1 and legacy in lines[0] and "'backbone.'" in lines[0]


class _Collect(__import__('logging').Handler):
    def __init__(self, records):
        super().__init__()
        self.records = records

    def emit(self, record):
        self.records.append(record.getMessage())


def test_torch_load_state_dict_converts_a_backbone_file():
    source = randomized(PoolFormer(arch=TINY_S12))
    legacy = OrderedDict((k[len('backbone.'):], v) for k, v in to_legacy(
        OrderedDict(('backbone.' + k, v) for k, v in source.state_dict().items())).items())
    assert 'network.0.0.mlp.fc1.weight' in legacy
    model = PoolFormer(arch=TINY_S12)
    model.load_state_dict(legacy)  # torch's strict=True: converted keys must match exactly
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value)


# --------------------------------------------------------------------------- misfits
def _expect_misfit(load, path, *fragments):
    with pytest.raises(CheckpointError) as info:
        load()
    message = str(info.value)
    assert path in message and 'is it a checkpoint of another config?' in message.lower()
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_caformer_config_refuses_a_poolformer_checkpoint(repo_root, retinanet):
    from mmdet.apis import init_detector
    cfg = det_config(repo_root, 'retinanet_caformer_s18',
                     dict(base='caformer_s18', depths=[1, 1, 1, 1]))
    _, _, _, ours = retinanet
    message = _expect_misfit(lambda: init_detector(cfg, ours, device='cpu'), ours,
                             'CAFormer', 'missing', 'unexpected')
    assert re.search(r'\d+ of its \d+ tensors missing', message)


def test_deeper_config_refuses_a_shallower_checkpoint(repo_root, retinanet):
    from mmdet.apis import init_detector
    _, _, legacy, ours = retinanet
    cfg = det_config(repo_root, 'retinanet_poolformer_s24', TINY_S24)
    for path in (ours, legacy):  # converted first, then found not to fit
        message = _expect_misfit(lambda: init_detector(cfg.copy(), path, device='cpu'), path,
                                 'backbone.stages.0.blocks.1.')
        assert 'unexpected' not in message


def test_unrelated_checkpoint_is_refused(repo_root, tmp_path):
    from mmdet.apis import init_detector
    path = str(tmp_path / 'encoder.pth')
    torch.save({'encoder.layer0.weight': torch.zeros(3)}, path)
    message = _expect_misfit(lambda: init_detector(det_config(repo_root), path, device='cpu'),
                             path, 'encoder.layer0.weight', "no key under 'backbone.'")
    assert 'all ' in message


def test_retinanet_checkpoint_into_semantic_fpn_is_refused(repo_root, retinanet):
    from mmseg.apis import init_model
    _, _, legacy, ours = retinanet
    for path in (ours, legacy):
        _expect_misfit(lambda: init_model(seg_config(repo_root), path, device='cpu'), path,
                       'backbone.out_norms.0.weight')


def test_shape_mismatch_is_refused(repo_root, retinanet):
    from mmdet.apis import init_detector
    cfg = det_config(repo_root, arch=dict(TINY_S12, dims=[64, 128, 320, 256]))
    cfg.model.neck.in_channels = [128, 320, 256]
    _, _, _, ours = retinanet
    _expect_misfit(lambda: init_detector(cfg, ours, device='cpu'), ours, 'shapes that do not fit',
                   'backbone.stages.3.downsample.conv.weight')


def test_state_dict_without_a_file_is_named_as_such():
    model = PoolFormer(arch=TINY_S12)
    with pytest.raises(CheckpointError, match='^the state dict does not fit'):
        model.load_state_dict({'stem.conv.weight': model.stem.conv.weight.detach()})


def test_torch_strict_false_needs_the_switch():
    """torch passes strict=True to every module's _load_from_state_dict: only our switch counts."""
    model = PoolFormer(arch=TINY_S12)
    partial = {'stem.conv.weight': torch.ones_like(model.stem.conv.weight)}
    with pytest.raises(CheckpointError, match='55 of its 56 tensors missing'):
        model.load_state_dict(partial, strict=False)
    with partial_loading():
        result = model.load_state_dict(partial, strict=False)
    assert torch.equal(model.stem.conv.weight, partial['stem.conv.weight'])
    assert 'stem.conv.bias' in result.missing_keys


def test_partial_loads_on_purpose(repo_root, retinanet):
    from mmdet.apis import init_detector
    _, source, _, ours = retinanet
    cfg = det_config(repo_root, 'retinanet_poolformer_s24', TINY_S24)
    with partial_loading():
        model = init_detector(cfg.copy(), ours, device='cpu')
    loaded = model.state_dict()
    # What the file holds loaded; the extra blocks keep their initial values.
    assert torch.equal(loaded['backbone.stages.0.blocks.0.mlp.fc1.weight'],
                       source.state_dict()['backbone.stages.0.blocks.0.mlp.fc1.weight'])
    cfg.model.backbone.strict_load = False  # the config switch (--cfg-options)
    model = init_detector(cfg.copy(), ours, device='cpu')
    assert not model.backbone.strict_load
    assert torch.equal(model.state_dict()['backbone.stem.conv.weight'],
                       source.state_dict()['backbone.stem.conv.weight'])


# --------------------------------------------------------------------------- --resume
class _Classifier(BaseModel):
    """A Runner-trainable model around a tiny MetaFormer backbone."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(64, 3)

    def forward(self, inputs, labels, mode='tensor'):
        logits = self.head(self.backbone(inputs)[-1].mean((2, 3)))
        if mode == 'loss':
            return dict(loss=nn.functional.cross_entropy(logits, labels))
        return logits


class _Images(Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return dict(inputs=torch.randn(3, 32, 32, generator=g), labels=torch.tensor(i % 3))


def _runner(work_dir, backbone, **kwargs):
    from mmengine.runner import Runner
    return Runner(
        model=_Classifier(backbone), work_dir=str(work_dir),
        train_dataloader=dict(dataset=_Images(), batch_size=2,
                              sampler=dict(type='InfiniteSampler', shuffle=False),
                              collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3)),
        train_cfg=dict(by_epoch=False, max_iters=2),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=2, by_epoch=False)),
        **kwargs)


def test_resume_with_another_architecture_names_the_file(tmp_path):
    small = dict(depths=[1, 1, 1, 1], dims=[8, 16, 32, 64])
    _runner(tmp_path / 'a', PoolFormer(arch=dict(small, base='poolformer_s12'),
                                       out_indices=(3,))).train()
    checkpoint = str(tmp_path / 'a' / 'iter_2.pth')
    resumed = _runner(tmp_path / 'b', CAFormer(arch=dict(small, base='caformer_s18'),
                                               out_indices=(3,)),
                      resume=True, load_from=checkpoint)
    with pytest.raises(CheckpointError,
                       match=re.escape(checkpoint) + " does not fit the CAFormer at 'backbone.'"):
        resumed.train()


# --------------------------------------------------------------------------- embedded configs
def test_inferencer_never_runs_an_embedded_config(retinanet, tmp_path):
    from mmdet.apis import DetInferencer
    marker = tmp_path / 'pwned'
    evil = f"__import__('os').system('touch {marker}')\nmodel = dict(type='RetinaNet')\n"
    _, source, _, _ = retinanet
    for where in ('meta', 'message_hub'):
        path = str(tmp_path / f'evil_{where}.pth')
        holder = {'cfg': evil} if where == 'meta' else {'runtime_info': {'cfg': evil}}
        torch.save({'state_dict': source.state_dict(), where: holder}, path)
        with pytest.raises(CheckpointError) as info:
            DetInferencer(model=None, weights=path, device='cpu')
        message = str(info.value)
        assert path in message and '__import__' in message and 'config file' in message
        assert not marker.exists()


def test_inferencer_builds_from_a_literal_embedded_config(retinanet, tmp_path):
    """The config mmengine's Runner embeds (``pretty_text``) stays usable without a config."""
    from mmdet.apis import DetInferencer
    cfg, source, _, _ = retinanet
    path = str(tmp_path / 'with_cfg.pth')
    torch.save({'state_dict': source.state_dict(),
                'meta': {'cfg': cfg.pretty_text, 'dataset_meta': {'classes': ('a',) * 80}}},
               path)
    inferencer = DetInferencer(model=None, weights=path, device='cpu', show_progress=False)
    assert_same_backbone(inferencer.model, source)


def test_every_config_of_the_project_is_literal(repo_root):
    import glob
    configs = sorted(glob.glob(osp.join(repo_root, 'configs', '**', '*.py'), recursive=True))
    assert len(configs) > 10
    for path in configs:
        assert config_text_problem(Config.fromfile(path).pretty_text) is None, path


@pytest.mark.parametrize('text, problem', [
    ("a = dict(b=[1, -2.5, (None, True)], c={'d': 'e'})\n", None),
    ("import os\n", 'an import at line 1'),
    ("a = open('x')\n", 'a call of open at line 1'),
    ("a = dict(**b)\n", 'a call of dict at line 1'),
    ("a = b\n", 'an expression that is not a literal (Name)'),
    ("x = 1\n(lambda: 1)()\n", 'a call of lambda: 1 at line 2'),
    ("a.b = 1\n", 'a statement other than NAME = LITERAL (Assign)'),
])
def test_config_text_problem(text, problem):
    result = config_text_problem(text)
    if problem is None:
        assert result is None
    else:
        assert result is not None and result.startswith(problem.split(' at line')[0]), result
        if ' at line' in problem:
            assert result == problem


def test_a_refused_checkpoint_is_usable_through_a_clean_copy(retinanet, repo_root, tmp_path):
    """The refusal's advice works: convert_checkpoint.py writes the weights without the config."""
    from mmdet.apis import DetInferencer
    cfg, source, _, _ = retinanet
    evil = str(tmp_path / 'evil.pth')
    torch.save({'state_dict': source.state_dict(),
                'meta': {'cfg': "__import__('os').getcwd()\n",
                         'dataset_meta': {'classes': ('a',) * 80}}}, evil)
    from in_process import script
    tool = script('tools/convert_checkpoint.py')
    clean = str(tmp_path / 'clean.pth')
    tool.main([evil, clean])
    assert 'cfg' not in read_checkpoint(clean)['meta']
    inferencer = DetInferencer(model=cfg.copy(), weights=clean, device='cpu', show_progress=False)
    assert_same_backbone(inferencer.model, source)
    assert inferencer.model.dataset_meta['classes'] == ('a',) * 80


# --------------------------------------------------------------------------- URLs
def test_urls_are_read_through_the_same_loader(retinanet, http_server, tmp_path):
    import shutil
    from mmdet.apis import DetInferencer, init_detector
    cfg, source, legacy, _ = retinanet
    root, url = http_server
    shutil.copy(legacy, root / 'retinanet_mmdet2.pth')
    model = init_detector(cfg.copy(), f'{url}/retinanet_mmdet2.pth', device='cpu')
    assert_same_backbone(model, source)
    marker = tmp_path / 'pwned'
    torch.save({'state_dict': source.state_dict(),
                'meta': {'cfg': f"__import__('os').system('touch {marker}')\n"}},
               root / 'evil.pth')
    with pytest.raises(CheckpointError, match=re.escape(f'{url}/evil.pth')):
        DetInferencer(model=None, weights=f'{url}/evil.pth', device='cpu')
    assert not marker.exists()


# --------------------------------------------------------------------------- tools/train.py
@pytest.mark.slow
def test_train_py_checkpoints_rebuild_and_refuse_other_configs(repo_root, coco_mini_run,
                                                               tmp_path):
    """A checkpoint tools/train.py wrote: its embedded config (literals) rebuilds the model in
    DetInferencer(model=None); --resume / load_from into another config end in one error line."""
    from mmdet.apis import DetInferencer
    from in_process import run_main  # train.py's main() in this process: status and output
    train = 'tools/train.py'
    config, options = coco_mini_run(tmp_path, 'retinanet_poolformer_s12')
    proc = run_main(train, config, '--work-dir', str(tmp_path / 'a'), '--cfg-options', *options,
                    cwd=repo_root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    checkpoint = str(tmp_path / 'a' / 'epoch_1.pth')
    assert config_text_problem(read_checkpoint(checkpoint)['meta']['cfg']) is None
    inferencer = DetInferencer(model=None, weights=checkpoint, device='cpu', show_progress=False)
    saved = read_checkpoint(checkpoint)['state_dict']
    assert all(torch.equal(v, saved[k]) for k, v in inferencer.model.state_dict().items())

    other, _ = coco_mini_run(tmp_path, 'retinanet_caformer_s18')
    for how in (['--resume', checkpoint], ['--cfg-options', f'load_from={checkpoint}']):
        args = [train, other, '--work-dir', str(tmp_path / 'b'), *how]
        if how[0] == '--resume':
            args += ['--cfg-options']
        proc = run_main(*args, *options, cwd=repo_root)
        assert proc.returncode == 1
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(f'error: {checkpoint} does not fit the CAFormer'), last
        assert 'Traceback' not in proc.stderr
