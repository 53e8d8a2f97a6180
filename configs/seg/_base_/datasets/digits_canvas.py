# Handwritten digit canvases (qarep_dense.data.digits_canvas): 64x64 grey canvases of 2-3 scikit-learn digits
# at 16/24/32 px, per-pixel labels 0 = background, 1 + digit on the strokes, 255 (ignore) on their faint rim,
# in the Cityscapes file layout. tools/train_seg.py writes them to data_root first when `digits_canvas` is set
# (skipped when current; the detection configs read the same export). No flip: a mirrored digit is no digit.
dataset_type = 'BaseSegDataset'
data_root = 'data/digits_canvas/'
digits_canvas = dict(canvas=64, scales=(16, 24, 32), passes=(4, 2), seed=0)
crop_size = (64, 64)
metainfo = dict(
    classes=('background', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9'),
    palette=[[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
             [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212]])
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations'),
    dict(type='CheckSegLabels', num_classes=11, ignore_index=255),
    dict(type='PackSegInputs'),
]
test_pipeline = train_pipeline
_dataset = dict(type=dataset_type, metainfo=metainfo, data_root=data_root, img_suffix='_leftImg8bit.png',
                seg_map_suffix='_gtFine_labelTrainIds.png', reduce_zero_label=False)
train_dataloader = dict(
    batch_size=16, num_workers=0, persistent_workers=False, sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(**_dataset, data_prefix=dict(img_path='leftImg8bit/train', seg_map_path='gtFine/train'),
                 pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=16, num_workers=0, persistent_workers=False, sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(**_dataset, data_prefix=dict(img_path='leftImg8bit/val', seg_map_path='gtFine/val'),
                 pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(type='IoUMetric', iou_metrics=['mIoU'])
test_evaluator = val_evaluator
