# Semantic FPN + PoolFormer-M48 on ADE20K: the S12 recipe with another backbone.
_base_ = './fpn_poolformer_s12.py'

model = dict(
    backbone=dict(
        arch='m48',
        init_cfg=dict(
            checkpoint='poolformer_m48')),
    neck=dict(in_channels=[96, 192, 384, 768]))
