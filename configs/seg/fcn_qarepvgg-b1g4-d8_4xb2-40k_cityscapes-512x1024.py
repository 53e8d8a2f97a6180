# Output stride 8 (mmseg's -d8): stages 3 and 4 keep stride 1 and dilate by 2 and 4 instead.
_base_ = ['./fcn_qarepvgg-b1g4_4xb2-40k_cityscapes-512x1024.py']
model = dict(backbone=dict(output_stride=8))
