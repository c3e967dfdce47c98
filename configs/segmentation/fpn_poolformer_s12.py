# Semantic FPN + PoolFormer-S12 on ADE20K (MetaFormer paper, Table 4): 8 GPUs x 4 images,
# AdamW, poly schedule over 40k iterations, 512x512 crops. Everything else is mmseg's
# packaged Semantic FPN / ADE20K / 40k recipe, whose train pipeline is already the paper's.
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_40k.py',
]
custom_imports = dict(imports=['metaformer_mm'], allow_failed_imports=False)

crop_size = (512, 512)
model = dict(
    data_preprocessor=dict(size=crop_size),
    pretrained=None,  # the base's ResNet weights; ours come from the backbone's init_cfg
    backbone=dict(
        _delete_=True,
        type='PoolFormer',
        arch='s12',
        fork_feat=True,
        out_indices=(0, 1, 2, 3),
        # ImageNet weights by name (metaformer_mm.zoo.IMAGENET_WEIGHTS); a path or URL works too.
        init_cfg=dict(type='Pretrained', checkpoint='poolformer_s12')),
    neck=dict(in_channels=[64, 128, 320, 512], out_channels=256, num_outs=4),
    # The head keeps the base's SyncBN: mmengine's Runner reverts it to BN when the run is
    # not distributed, so single-process CPU/GPU runs need no override.
    decode_head=dict(num_classes=150))

# Test at the 2048x512 scale, padded by resizing to a multiple of the backbone's stride 32.
# `_scope_='mmseg'` on the lists defined here (not merged into an mmseg base): a config that
# inherits this one as `metaformer_mm::segmentation/...` would otherwise look their types up
# in a `metaformer_mm` registry scope, which does not exist.
test_pipeline = [
    dict(type='LoadImageFromFile', _scope_='mmseg'),
    dict(type='Resize', scale=(2048, 512), keep_ratio=True, _scope_='mmseg'),
    dict(type='ResizeToMultiple', size_divisor=32, _scope_='mmseg'),
    dict(type='LoadAnnotations', reduce_zero_label=True, _scope_='mmseg'),
    dict(type='PackSegInputs', _scope_='mmseg'),
]
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(optimizer=dict(_delete_=True, type='AdamW', lr=2e-4, weight_decay=1e-4))
param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0, end=40000, by_epoch=False,
         _scope_='mmseg')
]
# lr 2e-4 is for 8 GPUs x 4 images; with enable=True the Runner scales it linearly to
# another total batch size.
auto_scale_lr = dict(enable=False, base_batch_size=32)

# Checkpoints are written to a temporary file and renamed: a failed write (full disk)
# never replaces the last good checkpoint (metaformer_mm.engine.SafeCheckpointHook).
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))
# Stops a run at its first nan/inf loss or gradient, before a checkpoint of it is written
# (metaformer_mm.engine.NonFiniteGuardHook).
custom_hooks = [dict(type='NonFiniteGuardHook')]
