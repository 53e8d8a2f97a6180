# Seconds-long end-to-end check (tests, docs) of the digit canvases recipe: the tiny "test" trunk (widths
# 8/8/16/32/64) started from the quickstart classifier (tools/train_cls.py configs/cls/synthetic_test.toml
# --work-dir work_dirs/cls/quickstart), one pass of 32x32 canvases, 2 iterations.
# From scratch: --cfg-options model.backbone.init_cfg=None
_base_ = ['./fcn_qarepvgg-a0h_1xb16-2000it_digits-canvas-64x64.py']
data_root = 'data/digits_canvas_test/'
digits_canvas = dict(canvas=32, scales=(12, 16), passes=(1, 1), seed=0)
crop_size = (32, 32)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(arch='test', init_cfg=dict(checkpoint='work_dirs/cls/quickstart/last.pt')),
    decode_head=dict(in_channels=[8, 32], channels=8))
train_dataloader = dict(batch_size=4, dataset=dict(data_root=data_root))
val_dataloader = dict(batch_size=16, dataset=dict(data_root=data_root))
test_dataloader = val_dataloader
iters = 2
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=iters, by_epoch=False)]
train_cfg = dict(type='IterBasedTrainLoop', max_iters=iters, val_interval=iters)
default_hooks = dict(logger=dict(interval=1), checkpoint=dict(interval=iters))
