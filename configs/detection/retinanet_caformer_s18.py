# RetinaNet + CAFormer-S18 on COCO: the PoolFormer-S12 recipe (AdamW, 1x) with another backbone.
_base_ = ['./retinanet_poolformer_s12.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='CAFormer',
        arch='s18',
        fork_feat=True,
        out_indices=(1, 2, 3),  # RetinaNet's FPN starts at stride 8
        init_cfg=dict(
            type='Pretrained',
            checkpoint='caformer_s18')),
    neck=dict(in_channels=[128, 320, 512]))
