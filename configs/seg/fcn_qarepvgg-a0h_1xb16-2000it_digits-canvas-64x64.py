# Stroke segmentation of handwritten digit canvases (11 classes), fine-tuned from a digits classifier:
# FCN (one 3x3 conv) on the A0h trunk with its stem at stride 2 (as the detector), reading stages 1 and 3
# (strides 4 and 16, 24 + 96 channels) resized to stride 4 and concatenated, so the thin strokes keep their
# width. mmseg's schedule (SGD momentum 0.9, wd 5e-4, PolyLR power 0.9 to 1e-4) with the BN parameters
# undecayed (norm_decay_mult=0, as the QARepVGG mmseg configs), batch 16, 2000 iterations, lr 0.05 (about
# 7 minutes on one CPU thread; mIoU of a RepVGG seed after 500/1000/1500/2000 iterations: 20/26/30/32).
# The backbone starts from a train-form classification checkpoint of the same arch and block:
#   --cfg-options model.backbone.init_cfg.checkpoint=CLASSIFIER/last.pt  (init_cfg=None: from scratch)
_base_ = [
    './_base_/models/fcn_qarepvgg-b1g4.py', './_base_/datasets/digits_canvas.py',
    'mmseg::_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_40k.py'
]
crop_size = (64, 64)
norm_cfg = dict(type='BN', requires_grad=True)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(arch='A0h', block='qarepvgg', out_indices=(1, 3), strides=(2, 2, 2, 2, 2), dilations=(1, 1, 1, 1, 1),
                  output_stride=None, init_cfg=dict(type='Pretrained', checkpoint='work_dirs/cls/digits_qarepvgg/last.pt')),
    decode_head=dict(in_channels=[24, 96], in_index=[0, 1], input_transform='resize_concat', channels=64,
                     num_convs=1, concat_input=False, num_classes=11, norm_cfg=norm_cfg),
    auxiliary_head=None)
iters = 2000
optim_wrapper = dict(optimizer=dict(lr=0.05), paramwise_cfg=dict(norm_decay_mult=0.0))
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=iters, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=iters)
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=100, log_metric_by_epoch=False),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=iters),
    visualization=dict(type='SegVisualizationHook', draw=False))
env_cfg = dict(cudnn_benchmark=False, dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)
