# Semantic FPN + PoolFormer-S36 on ADE20K: the S12 recipe with a deeper backbone
# of the same widths.
_base_ = './fpn_poolformer_s12.py'

model = dict(
    backbone=dict(
        arch='s36',
        init_cfg=dict(
            checkpoint='poolformer_s36')))
