# Mask R-CNN + PoolFormer-S12 on COCO, the MetaFormer paper's recipe (PVT's): AdamW, 1x schedule.
_base_ = ['mmdet::mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py']
custom_imports = dict(imports=['metaformer_mm'], allow_failed_imports=False)

model = dict(
    backbone=dict(
        _delete_=True,
        type='PoolFormer',
        arch='s12',
        fork_feat=True,
        out_indices=(0, 1, 2, 3),
        # ImageNet weights by name (metaformer_mm.zoo.IMAGENET_WEIGHTS); a path or URL works too.
        init_cfg=dict(type='Pretrained', checkpoint='poolformer_s12')),
    neck=dict(in_channels=[64, 128, 320, 512]))

# The base keeps mmdet's 1x schedule (12 epochs, 500-iter linear warm-up from 0.001,
# lr x0.1 at epochs 8 and 11), 1333x800 + flip, 2 images/GPU and auto_scale_lr (base 16).
optim_wrapper = dict(optimizer=dict(_delete_=True, type='AdamW', lr=2e-4, weight_decay=1e-4))

# Checkpoints are written to a temporary file and renamed: a failed write (full disk)
# never replaces the last good checkpoint (metaformer_mm.engine.SafeCheckpointHook).
default_hooks = dict(checkpoint=dict(type='SafeCheckpointHook'))
# Stops a run at its first nan/inf loss or gradient, before a checkpoint of it is written
# (metaformer_mm.engine.NonFiniteGuardHook).
custom_hooks = [dict(type='NonFiniteGuardHook')]
