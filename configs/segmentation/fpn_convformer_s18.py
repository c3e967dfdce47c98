# Semantic FPN + ConvFormer-S18 on ADE20K: the PoolFormer-S12 recipe (AdamW, poly 40k, 512x512).
_base_ = ['./fpn_poolformer_s12.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='ConvFormer',
        arch='s18',
        fork_feat=True,
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(
            type='Pretrained',
            checkpoint='convformer_s18')),
    neck=dict(in_channels=[64, 128, 320, 512]))
