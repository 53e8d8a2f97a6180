# The RepOpt-VGG row of fcn_qarepvgg-a0h_1xb16-2000it_digits-canvas-64x64.py (same recipe): RepOpt blocks, the
# backbone started from the RepOpt-VGG digits classifier, trained with RepOptimizer under the masks of the
# classifiers' Hyper-Search run (the masks that classifier was trained with; the FCN head gets plain SGD).
# BN parameters stay undecayed (the constructor's parameter groups, as norm_decay_mult=0 in the base).
_base_ = ['./fcn_qarepvgg-a0h_1xb16-2000it_digits-canvas-64x64.py']
model = dict(backbone=dict(block='repopt', init_cfg=dict(checkpoint='work_dirs/cls/digits_repopt/last.pt')))
optim_wrapper = dict(constructor='RepOptimizerConstructor',
                     paramwise_cfg=dict(hs_checkpoint='work_dirs/cls/digits_hs/best.pt'))
