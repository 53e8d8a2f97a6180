# Table 9 baseline: the same recipe with RepVGG-B1g4 blocks (pretrained: our RepVGG-B1g4 ImageNet checkpoint).
_base_ = ['./fcn_qarepvgg-b1g4_4xb2-40k_cityscapes-512x1024.py']
model = dict(
    backbone=dict(
        block='repvgg',
        init_cfg=dict(type='Pretrained', checkpoint='work_dirs/cls/b1g4_repvgg_imagenet/best.pt')))
