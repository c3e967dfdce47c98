# RetinaNet + sMLPNet-T on COCO: the PoolFormer-S12 recipe (AdamW, 1x) with another backbone.
_base_ = ['./retinanet_poolformer_s12.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='SMLPNet',
        arch='tiny',
        # The axial weights belong to 224x224 ImageNet training; at detection sizes they are
        # resampled to each stage's length ('window' would apply them per 56/28/14/7 tokens).
        image_size=224,
        resize_mode='interpolate',
        fork_feat=True,
        out_indices=(1, 2, 3),  # RetinaNet's FPN starts at stride 8
        # Every sMLP mixer holds two BatchNorms; with 2 images per GPU their batch statistics
        # are noise, so the pretrained ImageNet statistics stay frozen (as for ResNet).
        norm_eval=True,
        # microsoft/SPACH released no sMLPNet-T weights (only smlp_s.pth and smlp_b.pth):
        # point this at your own ImageNet checkpoint (SPACH layout or ours), e.g.
        # init_cfg=dict(type='Pretrained', checkpoint='checkpoints/smlp_t.pth').
        # Trained from scratch, set norm_eval=False. For released weights use arch='small',
        # checkpoint='smlp_s'
        # and neck in_channels=[192, 384, 768].
        init_cfg=None),
    neck=dict(in_channels=[160, 320, 640]))
