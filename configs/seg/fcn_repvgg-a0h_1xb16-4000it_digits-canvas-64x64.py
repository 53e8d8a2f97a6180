# The RepVGG row of fcn_qarepvgg-a0h_1xb16-4000it_digits-canvas-64x64.py (same recipe, RepVGG blocks and classifier).
_base_ = ['./fcn_qarepvgg-a0h_1xb16-4000it_digits-canvas-64x64.py']
model = dict(backbone=dict(block='repvgg', init_cfg=dict(checkpoint='work_dirs/cls/digits_repvgg/last.pt')))
