"""Detection transforms on hand-made images and boxes (numpy HWC uint8, xyxy pixels)."""
import numpy as np
import pytest

from qarep_dense.data import transforms as T


def _solid(h, w, color):
    return np.full((h, w, 3), color, np.uint8)


def test_letterbox_hand_case_non_square():
    img = _solid(50, 100, 200)  # h=50, w=100 -> side 200: ratio 2, content 200x100, 50 px grey above and below
    out, ratio, pad = T.letterbox(img, 200)
    assert out.shape == (200, 200, 3) and ratio == 2.0 and pad == (0.0, 50.0)
    assert (out[:50] == 114).all() and (out[150:] == 114).all() and (out[50:150] == 200).all()
    boxes = np.array([[10, 5, 30, 25]], np.float32)
    np.testing.assert_allclose(T.letterbox_boxes(boxes, ratio, pad), [[20, 60, 60, 100]])
    back = T.unletterbox_boxes(T.letterbox_boxes(boxes, ratio, pad), ratio, pad, (50, 100))
    np.testing.assert_allclose(back, boxes)


def test_letterbox_inverse_shrinking_and_clipping():
    img = _solid(30, 80, 10)  # ratio 64/80 = 0.8 -> content 64x24, pad_h = 20
    out, ratio, pad = T.letterbox(img, 64)
    assert out.shape == (64, 64, 3) and ratio == pytest.approx(0.8) and pad == (0.0, 20.0)
    boxes = np.array([[0, 0, 80, 30], [12.5, 3, 40, 17]], np.float32)
    np.testing.assert_allclose(T.unletterbox_boxes(T.letterbox_boxes(boxes, ratio, pad), ratio, pad, (30, 80)),
                               boxes, atol=1e-4)
    # a prediction reaching into the grey padding maps back clipped to the original image
    np.testing.assert_allclose(T.unletterbox_boxes(np.array([[-8, 4, 70, 60]]), ratio, pad, (30, 80)),
                               [[0, 0, 80, 30]])


def test_letterbox_rectangular_target_and_rejects_empty():
    out, ratio, pad = T.letterbox(_solid(40, 40, 0), (60, 100))
    assert out.shape == (60, 100, 3) and ratio == 1.5 and pad == (20.0, 0.0)
    with pytest.raises(ValueError, match="empty image"):
        T.letterbox(np.zeros((0, 10, 3), np.uint8), 32)


def test_clip_and_filter_hand_cases():
    boxes = np.array([
        [-5, -5, 10, 10],     # out of bounds -> clipped to [0, 0, 10, 10], kept
        [90, 90, 120, 120],   # clipped to [90, 90, 100, 100], kept
        [50, 50, 51, 60],     # 1 px wide -> dropped
        [110, 10, 130, 20],   # entirely right of the image -> width 0 -> dropped
        [20, 20, 20, 40],     # zero width -> dropped
        [0, 60, 90, 63],      # 90 x 3: aspect 30 -> dropped
    ], np.float32)
    kept, keep = T.clip_and_filter_boxes(boxes, 100, 100)
    assert keep.tolist() == [True, True, False, False, False, False]
    np.testing.assert_array_equal(kept, [[0, 0, 10, 10], [90, 90, 100, 100]])
    # area ratio: 10x10 left of a 1000 px^2 box is exactly 0.1 (kept), of 1001 px^2 below (dropped)
    _, keep = T.clip_and_filter_boxes(boxes[:1], 100, 100, ref_areas=np.array([1000.0]))
    assert keep.tolist() == [True]
    _, keep = T.clip_and_filter_boxes(boxes[:1], 100, 100, ref_areas=np.array([1001.0]))
    assert keep.tolist() == [False]
    kept, keep = T.clip_and_filter_boxes(np.zeros((0, 4)), 10, 10)
    assert kept.shape == (0, 4) and keep.shape == (0,)


def test_flip_lr_hand_case():
    img = np.zeros((4, 100, 3), np.uint8)
    img[:, 0] = 255
    out, boxes = T.flip_lr(img, np.array([[10, 20, 30, 40]], np.float32))
    np.testing.assert_array_equal(boxes, [[70, 20, 90, 40]])
    assert (out[:, -1] == 255).all() and (out[:, 0] == 0).all()


def _square_image(size, x1, y1, x2, y2):
    img = np.zeros((size, size, 3), np.uint8)
    img[y1:y2, x1:x2] = 255
    return img, np.array([[x1, y1, x2, y2]], np.float32)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("degrees", [0.0, 25.0])
def test_random_affine_boxes_follow_pixels(seed, degrees):
    img, boxes = _square_image(96, 30, 40, 60, 64)
    out, kept, keep = T.random_affine(img, boxes, np.random.default_rng(seed), degrees=degrees,
                                      translate=0.1, scale=0.4, shear=0.0)
    assert out.shape == img.shape and keep.tolist() == [True]
    ys, xs = np.nonzero(out[..., 0] > 127)
    painted = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    tol = 1.5 if degrees == 0 else 3.0  # rotated corners land between pixels
    np.testing.assert_allclose(kept[0], painted, atol=tol)


def test_random_affine_identity_and_crop_to_out_size():
    img, boxes = _square_image(64, 10, 10, 30, 20)
    out, kept, _ = T.random_affine(img, boxes, np.random.default_rng(0), translate=0, scale=0)
    assert out is img
    np.testing.assert_array_equal(kept, boxes)
    # a 128 canvas centre-cropped to 64: a box at the canvas centre lands at the output centre
    canvas, cboxes = _square_image(128, 54, 54, 74, 74)
    out, kept, _ = T.random_affine(canvas, cboxes, np.random.default_rng(0), out_size=(64, 64), translate=0, scale=0)
    assert out.shape == (64, 64, 3)
    np.testing.assert_allclose(kept, [[22, 22, 42, 42]])
    assert (out[22:42, 22:42] == 255).all() and out[:20].max() == 0


@pytest.mark.parametrize("seed", range(3))
def test_mosaic_shape_boxes_inside_and_on_their_pixels(seed):
    rng = np.random.default_rng(seed)
    size = 64
    images, boxes, classes = [], [], []
    for k, (h, w) in enumerate([(64, 48), (40, 64), (64, 64), (30, 64)]):
        img = _solid(h, w, 20 * k)
        x1, y1 = 4 + 3 * k, 5 + 2 * k
        img[y1:y1 + 16, x1:x1 + 12] = (200, 10 + 60 * k, 90)  # a patch whose colour encodes its image
        images.append(img)
        boxes.append(np.array([[x1, y1, x1 + 12, y1 + 16]], np.float32))
        classes.append(np.array([k], np.float32))
    canvas, out_boxes, out_cls = T.mosaic4(images, boxes, classes, size, rng)
    assert canvas.shape == (2 * size, 2 * size, 3) and canvas.dtype == np.uint8
    assert len(out_boxes) == len(out_cls) >= 1
    assert (out_boxes >= 0).all() and (out_boxes <= 2 * size).all()
    for (x1, y1, x2, y2), k in zip(out_boxes.round().astype(int), out_cls.astype(int)):
        patch = canvas[y1:y2, x1:x2].reshape(-1, 3)
        assert (patch == (200, 10 + 60 * k, 90)).all(axis=1).all()
    with pytest.raises(ValueError, match="exactly 4"):
        T.mosaic4(images[:3], boxes[:3], classes[:3], size, rng)


def test_augment_hsv_zero_gains_identity_and_grey_stays_grey():
    img = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert T.augment_hsv(img, np.random.default_rng(0), 0, 0, 0) is img
    grey = _solid(8, 8, 100)
    outs = {int(T.augment_hsv(grey, np.random.default_rng(s), 0.0, 0.0, 0.4)[0, 0, 0]) for s in range(6)}
    for s in range(3):
        out = T.augment_hsv(grey, np.random.default_rng(s), 0.5, 0.7, 0.4)
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()  # no saturation to scale
    assert len(outs) > 1 and min(outs) >= 60 and max(outs) <= 140  # value gain within [0.6, 1.4]


def test_mixup_blends_and_concatenates():
    a, b = _solid(8, 8, 0), _solid(8, 8, 200)
    img, boxes, cls = T.mixup(a, np.ones((1, 4)), np.array([0]), b, np.zeros((2, 4)), np.array([1, 2]),
                              np.random.default_rng(0))
    assert boxes.shape == (3, 4) and cls.tolist() == [0, 1, 2]
    assert 60 < img[0, 0, 0] < 140 and (img == img[0, 0, 0]).all()
    with pytest.raises(ValueError, match="same shape"):
        T.mixup(a, np.ones((1, 4)), [0], _solid(4, 8, 0), np.ones((1, 4)), [0], np.random.default_rng(0))
