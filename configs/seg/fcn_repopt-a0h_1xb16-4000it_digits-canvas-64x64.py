# The RepOpt-VGG row of fcn_qarepvgg-a0h_1xb16-4000it_digits-canvas-64x64.py (same recipe; the RepOpt settings of
# fcn_repopt-a0h_1xb16-2000it_digits-canvas-64x64.py: RepOptimizer under the Hyper-Search classifier's masks).
_base_ = ['./fcn_qarepvgg-a0h_1xb16-4000it_digits-canvas-64x64.py']
model = dict(backbone=dict(block='repopt', init_cfg=dict(checkpoint='work_dirs/cls/digits_repopt/last.pt')))
optim_wrapper = dict(constructor='RepOptimizerConstructor',
                     paramwise_cfg=dict(hs_checkpoint='work_dirs/cls/digits_hs/best.pt'))
