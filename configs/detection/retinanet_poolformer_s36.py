# RetinaNet + PoolFormer-S36: the S12 recipe with another backbone.
_base_ = ['./retinanet_poolformer_s12.py']

model = dict(
    backbone=dict(
        arch='s36',
        init_cfg=dict(checkpoint='poolformer_s36')))
