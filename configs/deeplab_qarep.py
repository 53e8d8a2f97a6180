# The paper's DeepLabV3+ row of Table 9 (QARepVGG-B1g4, Cityscapes 512x1024, 80k iterations, batch 16 on
# 8 GPUs, SGD 0.01 / 0.9 / 5e-4, PolyLR). Run:
#   torchrun --nproc_per_node=8 tools/train_seg.py configs/deeplab_qarep.py --launcher pytorch
_base_ = ['./seg/deeplabv3plus_qarepvgg-b1g4_8xb2-80k_cityscapes-512x1024.py']
