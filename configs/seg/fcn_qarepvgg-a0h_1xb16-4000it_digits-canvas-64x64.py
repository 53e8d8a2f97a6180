# The dense study's segmentation recipe (recipe "seg_lr0.1_4k" of benchmarks/bench_dense_study.py):
# fcn_qarepvgg-a0h_1xb16-2000it_digits-canvas-64x64.py at twice the rate (0.1) for twice as long, the poly schedule
# stretched with it. At 2000 iterations the segmentors stop at 19-59 mIoU, still climbing; here they reach 55-80
# (QARepVGG 68, RepVGG 73 on average over seeds 0-4; BENCHMARKS.md, "The fine-tuning rate and length of the
# segmentors"). About 12 minutes on one CPU thread (11-14 with two side by side).
_base_ = ['./fcn_qarepvgg-a0h_1xb16-2000it_digits-canvas-64x64.py']
iters = 4000
optim_wrapper = dict(optimizer=dict(lr=0.1))
param_scheduler = [dict(type='PolyLR', eta_min=1e-4, power=0.9, begin=0, end=iters, by_epoch=False)]
train_cfg = dict(max_iters=iters, val_interval=iters)
default_hooks = dict(checkpoint=dict(interval=iters))
