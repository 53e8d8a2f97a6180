"""Run a checkpoint on a user's images, in PyTorch (fused float) or as the QDQ ONNX INT8 model in onnxruntime,
and draw what it sees (tools/infer.py is the command line).

Images are prepared exactly as evaluation prepares them (detector: letterbox, then the evaluation's decode +
NMS; classifier: the eval resize/crop; segmentor: its mmseg config's test pipeline; then
qarep_dense/data/preprocess.py), so what is drawn is what the metrics measured.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..data.preprocess import Preprocess
from ..tasks.quant_check import CheckOptions, QuantConfig, quantize_and_check
from ..tasks.registry import CheckpointError, get_task, load_fused
from .draw import draw_boxes, draw_labels, draw_mask
from .io import claim_output_folder, list_images, output_names, read_rgb


@dataclass
class InferOptions:
    checkpoint: Path
    images: list[Path]
    out: Path = Path("work_dirs/infer")
    int8: bool = False  # run the ONNX INT8 (QDQ) model in onnxruntime
    calib: Path | None = None  # calibration images for int8 (default: the inputs)
    calib_images: int = 64
    ort_precision: str = "auto"  # onnxruntime INT8 kernels: auto (chosen per machine), default, precise
    image_size: int | None = None  # default: the checkpoint's
    conf: float = 0.25  # det: score threshold of drawn boxes
    iou: float = 0.45  # det: NMS IoU threshold
    max_det: int = 100  # det: boxes per image
    topk: int = 5  # cls: labels per image

    def __post_init__(self):
        if self.calib_images < 1 or self.topk < 1 or self.max_det < 1:
            raise ValueError("calib_images, topk and max_det must be >= 1")


def class_names(meta: dict, num_classes: int) -> list[str]:
    """The task row's names for the checkpoint's classes (det: meta["names"]; cls: the class folders of its
    training data; seg: its dataset class's), else indices."""
    names = get_task(meta["task"]).class_names(meta)
    return list(names) if names and len(names) == num_classes else [str(i) for i in range(num_classes)]


@torch.no_grad()
def detect(model, x: torch.Tensor, strides: tuple[int, ...], reg_max: int, opts: InferOptions) -> torch.Tensor:
    """(K, 6) [x1, y1, x2, y2, score, class] in letterboxed pixels, with the evaluation's decode + NMS."""
    from qarep_dense.models.postprocess import decode, nms
    from qarep_dense.ops import make_anchor_points

    cls_logits, reg = model(x)
    h, w = x.shape[-2:]
    points, stride_tensor = make_anchor_points([(h // s, w // s) for s in strides], list(strides))
    boxes, scores = decode(cls_logits.float(), reg.float(), points, stride_tensor, reg_max)
    return nms(boxes, scores, opts.conf, opts.iou, opts.max_det, multi_label=False)[0]




def int8_model(fused: torch.nn.Module, calib: list[torch.Tensor], preprocess: Preprocess, onnx_path: Path,
               precision: str) -> tuple[torch.nn.Module, dict]:
    """Max-calibrated QDQ export of ``fused`` run in onnxruntime; calib: uint8 (3, H, W) images
    (batched by 8 where sizes agree; any input size runs when they differ, as for a segmentor)."""
    from ..deploy.ort import OrtModule

    batches: list[torch.Tensor] = []
    for image in calib:
        if batches and batches[-1].shape[1:] == image.shape and len(batches[-1]) < 8:
            batches[-1] = torch.cat([batches[-1], image[None]])
        else:
            batches.append(image[None])
    any_size = len({tuple(b.shape[1:]) for b in batches}) > 1
    with tempfile.TemporaryDirectory() as tmp:  # the checks write side files: keep them out of OUT
        report = quantize_and_check(fused, batches, preprocess, QuantConfig(num_calib_batches=len(batches)),
                                    options=CheckOptions(ort_precision=precision, ort_pre_process=False,
                                                         onnx_path=Path(tmp) / "model_int8.onnx",
                                                         dynamic_hw=any_size, progress=False))
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(report.onnx, onnx_path)
    info = {"onnx": str(onnx_path), "calib_images": len(calib), "integer_convs": f"{report.integer_convs}/"
            f"{report.convs}", "ort_kernels": report.kernels, "ort_vs_fake_quant_rel_error": report.ort.rel_error}
    return OrtModule(onnx_path, precise_int8=report.kernels == "precise"), info


def predict_boxes(net, x: torch.Tensor, img: np.ndarray, geometry: dict, fused, labels: list[str],
                  opts: InferOptions) -> tuple[np.ndarray, dict]:
    """Detections mapped back to the image's pixels, drawn, and listed."""
    from ..data.transforms import unletterbox_boxes

    det = detect(net, x, fused.strides, fused.reg_max, opts).numpy()
    det[:, :4] = unletterbox_boxes(det[:, :4], geometry["ratio"], geometry["pad"], img.shape[:2])
    boxes = [{"box": [round(float(v), 1) for v in d[:4]], "score": round(float(d[4]), 4), "label": labels[int(d[5])]}
             for d in det]
    return draw_boxes(img, det, labels), {"boxes": boxes}


@torch.no_grad()
def predict_mask(net, x: torch.Tensor, img: np.ndarray, labels: list[str]) -> tuple[np.ndarray, dict]:
    """The class map at the image's size (as the evaluation: logits resized bilinearly, then the argmax)."""
    logits = net(x)
    logits = logits[0] if isinstance(logits, (tuple, list)) else logits
    logits = torch.nn.functional.interpolate(logits.float(), size=img.shape[:2], mode="bilinear", align_corners=False)
    mask = logits[0].argmax(0).numpy().astype(np.int64)
    counts = np.bincount(mask.ravel(), minlength=len(labels))
    fractions = {labels[i]: round(float(c) / mask.size, 4) for i, c in enumerate(counts) if c}
    return draw_mask(img, mask), {"class_fractions": fractions}


@torch.no_grad()
def predict_labels(net, x: torch.Tensor, img: np.ndarray, labels: list[str], topk: int) -> tuple[np.ndarray, dict]:
    """The top-k classes with their probabilities."""
    probs = torch.softmax(net(x).float(), dim=1)[0]
    top = probs.topk(min(topk, probs.numel()))
    pairs = [(labels[int(i)], float(p)) for p, i in zip(top.values, top.indices)]
    return draw_labels(img, pairs), {"topk": [{"label": n, "prob": round(p, 4)} for n, p in pairs]}


def run_inference(opts: InferOptions) -> dict:
    """Predict on ``opts.images``, draw into ``opts.out`` and write predictions.json; returns its content."""
    fused, meta = load_fused(opts.checkpoint)
    row = get_task(meta["task"])
    if row.prepare_image is None:
        raise CheckpointError(f"{opts.checkpoint}: inference does not know {row.title} checkpoints")
    prepare = row.prepare_image(meta, opts.image_size or meta.get("image_size"), str(opts.checkpoint))
    preprocess = row.preprocess(meta)
    images = list_images(opts.images)
    names = output_names(images)
    prepared = [(path, read_rgb(path)) for path in images]
    with claim_output_folder(opts.out, images, [*names, "predictions.json", "model_int8.onnx"]) as claimed:
        result = _predict_all(fused, meta, prepare, preprocess, prepared, names, images, opts)
        claimed.seal()
    return result


def _predict_all(fused, meta: dict, prepare, preprocess, prepared: list, names: list[str], images: list[Path],
                 opts: InferOptions) -> dict:
    """Draw every image into the claimed ``opts.out`` and write predictions.json; returns its content."""
    task, net = meta["task"], fused
    prediction = get_task(task).prediction  # what to draw: labels, boxes or a mask
    result: dict = {"checkpoint": str(opts.checkpoint), "task": task, "precision": "int8" if opts.int8 else "fp32"}
    if opts.int8:
        calib_paths = list_images([opts.calib]) if opts.calib else images
        calib = [prepare(p, read_rgb(p))[0] for p in calib_paths[:opts.calib_images]]
        net, result["int8"] = int8_model(fused, calib, preprocess, opts.out / "model_int8.onnx", opts.ort_precision)
    labels = class_names(meta, meta["num_classes"])
    predict_one = {"boxes": lambda x, img, geo: predict_boxes(net, x, img, geo, fused, labels, opts),
                   "mask": lambda x, img, geo: predict_mask(net, x, img, labels),
                   "labels": lambda x, img, geo: predict_labels(net, x, img, labels, opts.topk)}[prediction]
    result["images"] = []
    for (path, img), name in zip(prepared, names):
        x, geometry = prepare(path, img)
        drawn, found = predict_one(preprocess(x[None]), img, geometry)
        entry: dict = {"image": str(path), "output": str(opts.out / name), **found}
        opts.out.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(entry["output"], cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR)):
            raise OSError(f"{entry['output']}: OpenCV could not write the image (unsupported extension?)")
        result["images"].append(entry)
    (opts.out / "predictions.json").write_text(json.dumps(result, indent=2))
    return result
