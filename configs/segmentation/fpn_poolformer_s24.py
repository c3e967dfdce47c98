# Semantic FPN + PoolFormer-S24 on ADE20K: the S12 recipe with a deeper backbone
# of the same widths.
_base_ = './fpn_poolformer_s12.py'

model = dict(
    backbone=dict(
        arch='s24',
        init_cfg=dict(
            checkpoint='poolformer_s24')))
