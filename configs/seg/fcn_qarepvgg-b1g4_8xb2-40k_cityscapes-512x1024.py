# The paper's Table 9 row: FCN (2 convs, concat_input) + auxiliary FCNHead, QARepVGG-B1g4 backbone at output stride 32
# (no dilation, as the official QARepVGG segmentation configs), Cityscapes 512x1024 crops,
# 40k iterations, batch 16 = 8 GPUs x 2 with SyncBN, SGD 0.01 / 0.9 / 5e-4, PolyLR (power 0.9, to 1e-4).
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
train_dataloader = dict(batch_size=2, num_workers=4)  # per GPU: 8 x 2 = 16
sync_bn = 'torch'  # BN statistics over the 16 images of a step (the backbone's BNs included)
env_cfg = dict(cudnn_benchmark=True)
