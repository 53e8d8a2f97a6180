# FCN (2 convs, concat_input) + auxiliary FCNHead (weight 0.4) on the QARepVGG-B1g4 trunk.
# mmseg's FCN model settings with the ResNet backbone replaced; stage widths 64/128/256/512/2048,
# out_indices (1, 2, 3, 4) -> channels 128/256/512/2048 at strides 4/8/16/32 (output stride 32).
_base_ = ['mmseg::_base_/models/fcn_r50-d8.py']
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
    decode_head=dict(in_channels=2048, in_index=3),
    auxiliary_head=dict(in_channels=512, in_index=2))
