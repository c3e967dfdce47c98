# Semantic FPN + sMLPNet-T on ADE20K: the PoolFormer-S12 recipe (AdamW, poly 40k, 512x512).
_base_ = ['./fpn_poolformer_s12.py']

model = dict(
    backbone=dict(
        _delete_=True,
        type='SMLPNet',
        arch='tiny',
        # The axial weights belong to 224x224 ImageNet training; at 512x512 crops and the
        # 2048x512 test scale they are resampled to each stage's length.
        image_size=224,
        resize_mode='interpolate',
        fork_feat=True,
        out_indices=(0, 1, 2, 3),
        # Every sMLP mixer holds two BatchNorms; with 4 crops per GPU their batch statistics
        # are noisy, so the pretrained ImageNet statistics stay frozen.
        norm_eval=True,
        # microsoft/SPACH released no sMLPNet-T weights (only smlp_s.pth and smlp_b.pth):
        # point this at your own ImageNet checkpoint (SPACH layout or ours), e.g.
        # init_cfg=dict(type='Pretrained', checkpoint='checkpoints/smlp_t.pth').
        # Trained from scratch, set norm_eval=False. For released weights use arch='small',
        # checkpoint='smlp_s'
        # and neck in_channels=[96, 192, 384, 768].
        init_cfg=None),
    neck=dict(in_channels=[80, 160, 320, 640]))
