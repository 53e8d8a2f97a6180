# The same CPU demo with RepVGG blocks (the baseline whose fused weights quantize badly).
_base_ = ['./deeplabv3plus_qarepvgg-test_1xb8-600it_synthetic-cityscapes-128x256.py']
model = dict(backbone=dict(block='repvgg'))
