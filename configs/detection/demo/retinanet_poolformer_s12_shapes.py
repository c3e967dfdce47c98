# `make demo`: RetinaNet + PoolFormer-S12 (random init) on the synthetic shapes dataset
# (tools/demo/make_shapes_dataset.py). Only data, scale and schedule differ from the COCO config.
_base_ = ['../retinanet_poolformer_s12.py']

data_root = 'data/shapes/'
classes = ('square', 'circle', 'triangle')
metainfo = dict(classes=classes)

model = dict(backbone=dict(init_cfg=None), bbox_head=dict(num_classes=len(classes)))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(160, 160), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=(160, 160), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor')),
]
train_dataloader = dict(
    batch_size=8, num_workers=2, sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_train.json',
                 data_prefix=dict(img='train/'), pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8, num_workers=2,
    dataset=dict(data_root=data_root, metainfo=metainfo, ann_file='annotations/instances_val.json',
                 data_prefix=dict(img='val/'), pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')
test_evaluator = val_evaluator

# 350 iterations of batch 8 (7 passes over 400 images): 50-iteration warm-up, then cosine decay;
# validation every 70 iterations.
max_iters = 350
warmup_iters = 50
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters, val_interval=70)
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=False, begin=0, end=warmup_iters),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=warmup_iters, end=max_iters, eta_min=1e-5),
]
# From scratch the head's logits overshoot now and then, giving a 100-1000x gradient; clipping
# to the usual norm keeps such a step out of Adam's moments, which would otherwise damp the
# learning rate for hundreds of iterations. lr 5e-4 rather than 1e-3: at 1e-3 the loss spiked
# near iteration 80 (1.2 -> 6.4) right after the warm-up.
optim_wrapper = dict(optimizer=dict(lr=5e-4), clip_grad=dict(max_norm=1))
auto_scale_lr = dict(base_batch_size=8)

default_hooks = dict(logger=dict(interval=10, log_metric_by_epoch=False),
                     checkpoint=dict(by_epoch=False, interval=max_iters, max_keep_ckpts=1))
log_processor = dict(by_epoch=False, window_size=10)
