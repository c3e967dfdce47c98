# RetinaNet + PoolFormer-S24: the S12 recipe with another backbone.
_base_ = ['./retinanet_poolformer_s12.py']

model = dict(
    backbone=dict(
        arch='s24',
        init_cfg=dict(checkpoint='poolformer_s24')))
