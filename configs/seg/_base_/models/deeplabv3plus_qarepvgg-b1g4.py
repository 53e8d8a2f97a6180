# DeepLabV3+ (DepthwiseSeparableASPPHead, dilations 1/12/24/36, c1 48 channels from the stride-4 stage)
# + auxiliary FCNHead (weight 0.4) on the QARepVGG-B1g4 trunk (output stride 32 by default).
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
    decode_head=dict(in_channels=2048, in_index=3, c1_in_channels=128),
    auxiliary_head=dict(in_channels=512, in_index=2))
