# CPU demo: DeepLabV3+ on the tiny "test" trunk (widths 8/8/16/32/64, 5 blocks) with QARepVGG blocks, synthetic
# street scenes at 128x256, batch 8, 600 iterations, SGD 0.9 / 5e-4 with PolyLR (mmseg's recipe, shortened, from
# scratch). The half-width A0 trunk (--cfg-options model.backbone.arch=A0h with matching head widths) is ~50x the
# compute: too slow for a 2-core demo.
_base_ = [
    './_base_/models/deeplabv3plus_qarepvgg-b1g4.py', './_base_/datasets/synthetic_cityscapes.py',
    'mmseg::_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_40k.py'
]
crop_size = (128, 256)
norm_cfg = dict(type='BN', requires_grad=True)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(arch='test', block='qarepvgg'),
    decode_head=dict(in_channels=64, channels=32, c1_in_channels=8, c1_channels=8, dilations=(1, 2, 3, 4),
                     norm_cfg=norm_cfg),
    auxiliary_head=dict(in_channels=32, channels=16, norm_cfg=norm_cfg))
iters = 600
optim_wrapper = dict(optimizer=dict(lr=0.05))
train_dataloader = dict(batch_size=8)
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=iters, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=iters)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=25, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=iters, max_keep_ckpts=1),
    visualization=dict(type='SegVisualizationHook', draw=False))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
