# RepOpt-VGG-B1g4: the plain VGG target trained with RepOptimizer gradient masks. Scales come from our
# Hyper-Search ('hs') ImageNet checkpoint; the backbone starts from our RepOpt-VGG ImageNet checkpoint.
_base_ = ['./deeplabv3plus_qarepvgg-b1g4_4xb2-80k_cityscapes-512x1024.py']
model = dict(
    backbone=dict(
        block='repopt',
        init_cfg=dict(type='Pretrained', checkpoint='work_dirs/cls/b1g4_repopt_imagenet/best.pt')))
optim_wrapper = dict(
    constructor='RepOptimizerConstructor',
    paramwise_cfg=dict(hs_checkpoint='work_dirs/cls/b1g4_hs_imagenet/best.pt'))
