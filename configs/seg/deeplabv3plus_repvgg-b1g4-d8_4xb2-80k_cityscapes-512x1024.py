# Output stride 8 (mmseg's -d8): stages 3 and 4 keep stride 1 and dilate by 2 and 4 instead, and the ASPP
# dilations are mmseg's for output stride 8 (1/12/24/36).
_base_ = ['./deeplabv3plus_repvgg-b1g4_4xb2-80k_cityscapes-512x1024.py']
model = dict(backbone=dict(output_stride=8), decode_head=dict(dilations=(1, 12, 24, 36)))
