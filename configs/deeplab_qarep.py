# The paper's DeepLabV3+ row of Table 9: QARepVGG-B1g4, Cityscapes 512x1024 crops (all the paper states; its
# detailed settings are in a supplement that is not available). Everything else is mmseg's DeepLabV3+ recipe
# (deeplabv3plus_r50-d8_4xb2-80k_cityscapes-512x1024): output stride 8 (the last two stages dilated by 2 and 4,
# as mmseg's -d8 backbones and the official RepVGG segmentation example do), ASPP dilations 1/12/24/36,
# 80k iterations, 4 GPUs x 2 images (batch 8) with SyncBN, SGD lr 0.01 / momentum 0.9 / wd 5e-4, PolyLR.
# The output-stride-32 variant: configs/seg/deeplabv3plus_qarepvgg-b1g4_4xb2-80k_cityscapes-512x1024.py. Run:
#   torchrun --nproc_per_node=4 tools/train_seg.py configs/deeplab_qarep.py --launcher pytorch
_base_ = ['./seg/deeplabv3plus_qarepvgg-b1g4-d8_4xb2-80k_cityscapes-512x1024.py']
