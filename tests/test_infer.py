"""tools/infer.py end to end on tiny checkpoints: drawn images, predictions, INT8 via ONNX, no overwrites."""
import hashlib
import json

import cv2
import numpy as np
import pytest
import torch

from qarep_dense.data.preprocess import DETECTION, IMAGENET
from qarep_dense.data.transforms import letterbox
from qarep_dense.engine.checkpoint import save_checkpoint
from qarep_dense.layers import reparameterize
from qarep_dense.models import build_classifier, build_detector
from tools import infer

pytestmark = pytest.mark.usefixtures("one_thread")


def _images(folder, sizes=((48, 80), (64, 64))):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate(sizes):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        cv2.rectangle(img, (5, 5), (w // 2, h // 2), (255, 255, 255), -1)
        path = folder / f"img{i}.png"
        cv2.imwrite(str(path), img)
        paths.append(path)
    return paths


def _digest(paths):
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


@pytest.fixture(scope="module")
def det_ckpt(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("infer_det")
    torch.manual_seed(0)
    model = build_detector("test", "qarepvgg", 3)
    meta = {"task": "det", "scale": "test", "block": "qarepvgg", "num_classes": 3, "use_dfl": False, "reg_max": 0,
            "head_act": "silu", "fused": False, "fold_bn": True, "image_size": 64, "preprocess": DETECTION.as_dict(),
            "category_ids": [1, 2, 3], "names": ["circle", "square", "triangle"]}
    return save_checkpoint(tmp / "det.pt", model.state_dict(), meta), model


def test_detector_fp32_draws_the_evaluations_boxes_and_never_overwrites(det_ckpt, tmp_path):
    ckpt, model = det_ckpt
    images = _images(tmp_path / "in")
    before = _digest(images)
    out = tmp_path / "out"
    assert infer.main([str(ckpt), str(tmp_path / "in"), "--out", str(out), "--conf", "0.01"]) == 0
    assert _digest(images) == before
    pred = json.loads((out / "predictions.json").read_text())
    assert [e["image"] for e in pred["images"]] == list(map(str, images)) and pred["precision"] == "fp32"
    drawn = cv2.imread(str(out / "img0.png"))
    assert drawn.shape == (48, 80, 3)
    # The same boxes by hand: letterbox -> preprocess -> fused detector -> decode -> NMS -> un-letterbox.
    from qarep_dense.data.transforms import unletterbox_boxes
    from qarep_dense.models.postprocess import decode, nms

    rgb = cv2.cvtColor(cv2.imread(str(images[0])), cv2.COLOR_BGR2RGB)
    boxed, ratio, pad = letterbox(rgb, 64)
    fused = reparameterize(model).eval()
    with torch.no_grad():
        cls_logits, reg = fused(DETECTION(torch.from_numpy(boxed.transpose(2, 0, 1).copy())[None]))
    boxes, scores = decode(cls_logits, reg, *fused.anchors(64, 64), fused.reg_max)
    det = nms(boxes, scores, 0.01, 0.45, 100, multi_label=False)[0].numpy()
    expected = np.round(unletterbox_boxes(det[:, :4], ratio, pad, rgb.shape[:2]), 1)
    got = np.array([b["box"] for b in pred["images"][0]["boxes"]]).reshape(-1, 4)
    assert len(det) > 0 and got.shape == expected.shape
    # Untrained: many equal scores, so NMS order among ties is arbitrary; compare the sets of boxes.
    np.testing.assert_allclose(got[np.lexsort(got.T)], expected[np.lexsort(expected.T)], atol=0.06)
    assert {b["label"] for b in pred["images"][0]["boxes"]} <= {"circle", "square", "triangle"}
    # A rerun overwrites its own files; a file it did not write is refused, and nothing is written then.
    assert infer.main([str(ckpt), str(images[0]), "--out", str(out)]) == 0
    foreign = out / "img1.png"
    foreign.write_bytes(b"mine")
    (out / "model_int8.onnx").unlink(missing_ok=True)
    assert infer.main([str(ckpt), str(images[1]), "--out", str(out), "--int8"]) == 2
    assert foreign.read_bytes() == b"mine" and not (out / "model_int8.onnx").exists()
    # Writing next to the inputs would replace them: refused.
    assert infer.main([str(ckpt), str(images[0]), "--out", str(tmp_path / "in")]) == 2
    assert _digest(images) == before


def test_detector_int8_runs_the_qdq_model_in_onnxruntime(det_ckpt, tmp_path):
    pytest.importorskip("pytorch_quantization")
    pytest.importorskip("onnxruntime")
    ckpt, _ = det_ckpt
    images = _images(tmp_path / "in")
    calib = _images(tmp_path / "calib", sizes=((40, 40), (70, 50), (64, 32)))
    out = tmp_path / "int8"
    assert infer.main([str(ckpt), *map(str, images), "--int8", "--calib", str(calib[0].parent), "--out", str(out),
                       "--conf", "0.01"]) == 0
    pred = json.loads((out / "predictions.json").read_text())
    assert pred["precision"] == "int8" and pred["int8"]["calib_images"] == 3
    integer, total = map(int, pred["int8"]["integer_convs"].split("/"))
    # Untrained weights give tiny activation scales: a conv bias may not fit int32 and stays float (export doc).
    assert total > 20 and integer >= total - 2
    assert pred["int8"]["ort_vs_fake_quant_rel_error"] < 0.05
    assert (out / "model_int8.onnx").is_file() and (out / "img1.png").is_file()


def test_classifier_topk_labels(tmp_path, capsys):
    torch.manual_seed(0)
    model = build_classifier("test", "qarepvgg", 4, stem_stride=1)
    meta = {"task": "cls", "arch": "test", "block": "qarepvgg", "num_classes": 4, "stem_stride": 1, "fused": False,
            "fold_bn": True, "image_size": 16, "preprocess": IMAGENET.as_dict()}
    ckpt = save_checkpoint(tmp_path / "cls.pt", model.state_dict(), meta)
    images = _images(tmp_path / "in")
    out = tmp_path / "out"
    assert infer.main([str(ckpt), *map(str, images), "--topk", "2", "--out", str(out)]) == 0
    pred = json.loads((out / "predictions.json").read_text())
    top = pred["images"][0]["topk"]
    from qarep_dense.data.imagefolder import cls_transforms

    rgb = cv2.cvtColor(cv2.imread(str(images[0])), cv2.COLOR_BGR2RGB)
    x = cls_transforms(16, train=False)(torch.from_numpy(rgb.transpose(2, 0, 1).copy()))
    with torch.no_grad():
        probs = torch.softmax(reparameterize(model).eval()(IMAGENET(x[None])), 1)[0]
    assert [t["label"] for t in top] == [str(int(i)) for i in probs.topk(2).indices]
    assert top[0]["prob"] == pytest.approx(float(probs.max()), abs=1e-4)
    assert (out / "img0.png").is_file()
    assert infer.main([str(ckpt), str(tmp_path / "missing.png"), "--out", str(out)]) == 2
    assert "missing.png: no such image file or folder" in capsys.readouterr().err


@pytest.mark.slow
def test_segmentor_masks_fp32_and_int8(tmp_path):
    """A (random-weight) mmseg segmentor checkpoint: masks drawn through its own test pipeline, FP32 and INT8."""
    pytest.importorskip("mmseg")
    pytest.importorskip("pytorch_quantization")
    from pathlib import Path

    from qarep_dense.integrations import mmseg as mm

    # The tiny synthetic-data config (FCN first: the smaller head).
    configs = sorted((Path(__file__).resolve().parents[1] / "configs" / "seg").glob("*qarepvgg-test*synthetic*.py"),
                     key=lambda p: (not p.name.startswith("fcn"), p.name))
    assert configs, "no tiny synthetic QARepVGG segmentation config under configs/seg"
    config = configs[0]
    meta = mm.seg_meta(mm.load_config(config))
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "seg.pt", mm.model_from_meta(meta).state_dict(), meta)
    images = _images(tmp_path / "in", sizes=((100, 150),))
    for flag in ([], ["--int8"]):
        out = tmp_path / ("int8" if flag else "fp32")
        assert infer.main([str(ckpt), str(images[0]), "--out", str(out), *flag]) == 0
        pred = json.loads((out / "predictions.json").read_text())
        assert sum(pred["images"][0]["class_fractions"].values()) == pytest.approx(1.0, abs=1e-3)
        assert cv2.imread(str(out / "img0.png")).shape == (100, 150, 3)
    assert pred["int8"]["integer_convs"].split("/")[0] == pred["int8"]["integer_convs"].split("/")[1]
