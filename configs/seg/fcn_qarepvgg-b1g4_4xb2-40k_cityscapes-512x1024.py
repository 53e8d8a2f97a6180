# Table 9's FCN row at output stride 32: FCN (2 convs, concat_input) + auxiliary FCNHead, QARepVGG-B1g4
# backbone without dilation,
# Cityscapes 512x1024 crops (the paper states only the crop). The rest is mmseg's recipe
# (fcn_r50-d8_4xb2-40k_cityscapes-512x1024): 40k iterations, 4 GPUs x 2 images (batch 8) with
# SyncBN, SGD lr 0.01 / momentum 0.9 / wd 5e-4, PolyLR (power 0.9, to 1e-4).
# The output-stride-8 model (mmseg's FCN setting) is the -d8 config.
# The backbone starts from our ImageNet classification checkpoint (train form) of the same arch and block.
_base_ = [
    './_base_/models/fcn_qarepvgg-b1g4.py', './_base_/datasets/cityscapes_checked.py',
    'mmseg::_base_/default_runtime.py', 'mmseg::_base_/schedules/schedule_40k.py'
]
crop_size = (512, 1024)
data_preprocessor = dict(size=crop_size)
model = dict(
    data_preprocessor=data_preprocessor,
    backbone=dict(
        block='qarepvgg',
        init_cfg=dict(type='Pretrained', checkpoint='work_dirs/cls/b1g4_qarepvgg_imagenet/best.pt')))
train_dataloader = dict(batch_size=2, num_workers=4)  # per GPU: 4 x 2 = 8, mmseg's 4xb2
sync_bn = 'torch'  # BN statistics over the 8 images of a step (the backbone's BNs included)
env_cfg = dict(cudnn_benchmark=True)
