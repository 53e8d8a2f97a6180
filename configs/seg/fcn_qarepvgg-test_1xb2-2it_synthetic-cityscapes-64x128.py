# Seconds-long end-to-end check (tests): FCN on the tiny "test" trunk (widths 8/8/16/32/64), 12 synthetic
# scenes at 64x128, 2 iterations, a checkpoint every iteration (resume tests).
_base_ = [
    './_base_/models/fcn_qarepvgg-b1g4.py', './_base_/datasets/synthetic_cityscapes.py',
    'mmseg::_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_40k.py'
]
data_root = 'data/synthetic_cityscapes_test/'
synthetic_cityscapes = dict(num_train=8, num_val=4, size=(64, 128), seed=0)
crop_size = (64, 128)
norm_cfg = dict(type='BN', requires_grad=True)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(arch='test', block='qarepvgg'),
    decode_head=dict(in_channels=64, channels=16, num_convs=1, norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=32, channels=8, norm_cfg=norm_cfg))
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='CheckSegLabels', num_classes=19, ignore_index=255),
    dict(type='RandomCrop', crop_size=crop_size, cat_max_ratio=0.75),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs'),
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='CheckSegLabels', num_classes=19, ignore_index=255),
    dict(type='PackSegInputs'),
]
train_dataloader = dict(batch_size=2, dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(batch_size=4, dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader
iters = 2
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=iters, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=iters)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=1, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=1),
    visualization=dict(type='SegVisualizationHook', draw=False))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
