# DeepLabV3+ (DepthwiseSeparableASPPHead, c1 48 channels from the stride-4 stage) + auxiliary FCNHead
# (weight 0.4) on the QARepVGG-B1g4 trunk, here at output stride 32; the -d8 configs set output stride 8.
# ASPP dilations 1/3/6/9: mmseg's 1/12/24/36 are for output stride 8 (1/6/12/18 for 16), i.e. a fixed reach
# in input pixels (12 x 8 = 96). At output stride 32 the same reach is 3/6/9; a 512x1024 crop gives 16x32
# features, where dilations 24 and 36 would read mostly padding.
_base_ = ['mmseg::_base_/models/deeplabv3plus_r50-d8.py']
custom_imports = dict(imports=['qarep_dense.integrations.mmseg'], allow_failed_imports=False)
model = dict(
    pretrained=None,
    backbone=dict(
        _delete_=True,
        type='QARepVGGBackbone',
        arch='B1g4',
        block='qarepvgg',
        out_indices=(1, 2, 3, 4),
        output_stride=32,
        norm_eval=False),
    decode_head=dict(in_channels=2048, in_index=3, c1_in_channels=128, dilations=(1, 3, 6, 9)),
    auxiliary_head=dict(in_channels=512, in_index=2))
