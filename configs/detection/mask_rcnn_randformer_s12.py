# Mask R-CNN + RandFormer-S12 on COCO: the PoolFormer-S12 recipe (AdamW, 1x) with another backbone.
# The frozen random token-mixing matrices of stages 3-4 belong to 224x224 ImageNet inputs
# (image_size); at detection sizes they are resampled (README, token mixers: 'random').
_base_ = ['./mask_rcnn_poolformer_s12.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='RandFormer',
        arch='s12',
        image_size=224,
        fork_feat=True,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(
            type='Pretrained',
            checkpoint='randformer_s12')),
    neck=dict(in_channels=[64, 128, 320, 512]))
