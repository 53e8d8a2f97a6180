#!/usr/bin/env python
"""Run a checkpoint on your own images and draw what it sees: boxes (det), masks (seg) or top-k labels (cls).

    python tools/infer.py work_dirs/det/synthetic_qarepvgg/best.pt photos/ --out work_dirs/infer/fp32
    python tools/infer.py work_dirs/det/synthetic_qarepvgg/best.pt photos/*.jpg --int8 --calib calib_photos/ \
        --out work_dirs/infer/int8
    python tools/infer.py work_dirs/cls/digits_qarepvgg/deploy.pt digit.png --topk 3 --out work_dirs/infer/cls
    python tools/infer.py work_dirs/seg/<run>/deploy.pt street.png --int8 --out work_dirs/infer/seg

The float model runs in PyTorch (fused); ``--int8`` calibrates it (max calibration) on the given
images or on ``--calib FOLDER``, exports the QDQ ONNX model and runs that in onnxruntime with the
INT8 kernels chosen for this machine. Images are prepared exactly as evaluation prepares them
(detector: letterbox, then the evaluation's decode + NMS; classifier: the eval resize/crop;
segmentor: its mmseg config's test pipeline; then qarep_dense/data/preprocess.py).
Writes OUT/<image name> (drawn), OUT/predictions.json and, with --int8, OUT/model_int8.onnx.
Input images are never overwritten, nor any file in OUT this tool did not write itself.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
import torch

_ROOT = str(Path(__file__).resolve().parents[1])  # this checkout: `python tools/x.py` runs without an install
if sys.path[:1] != [_ROOT]:
    sys.path.insert(0, _ROOT)

from qarep_dense.data.preprocess import Preprocess  # noqa: E402
from qarep_dense.engine.checkpoint import CheckpointError  # noqa: E402
from qarep_dense.layers import reparameterize  # noqa: E402
from qarep_dense.tasks.registry import load_model  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MANIFEST = ".infer_written.json"  # the files this tool wrote into OUT (it overwrites only those)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("images", type=Path, nargs="+", help="image files and/or folders of images")
    p.add_argument("--out", type=Path, default=Path("work_dirs/infer"), help="output folder")
    p.add_argument("--int8", action="store_true", help="run the ONNX INT8 (QDQ) model in onnxruntime")
    p.add_argument("--calib", type=Path, default=None, help="calibration images for --int8 (default: the inputs)")
    p.add_argument("--calib-images", type=int, default=64, help="at most this many calibration images")
    p.add_argument("--ort-precision", choices=["auto", "default", "precise"], default="auto",
                   help="onnxruntime INT8 kernels (auto: chosen per machine)")
    p.add_argument("--image-size", type=int, default=None, help="default: the checkpoint's image_size")
    p.add_argument("--conf", type=float, default=0.25, help="det: score threshold of drawn boxes")
    p.add_argument("--iou", type=float, default=0.45, help="det: NMS IoU threshold")
    p.add_argument("--max-det", type=int, default=100, help="det: boxes per image")
    p.add_argument("--topk", type=int, default=5, help="cls: labels per image")
    args = p.parse_args(argv)
    if args.calib_images < 1 or args.topk < 1 or args.max_det < 1:
        p.error("--calib-images, --topk and --max-det must be >= 1")
    return args


# --- files ---------------------------------------------------------------------------------------


def list_images(paths: list[Path]) -> list[Path]:
    """Image files named or found (recursively, sorted) in the folders named; raises if none or missing."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(f for f in path.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such image file or folder")
    if not found:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {', '.join(map(str, paths))}")
    return found


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB, decoded by OpenCV as the detection dataset does; raises naming the file."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise OSError(f"{path}: cannot decode image (missing, truncated or not an image file)")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class OutputFolder:
    """Writes into OUT, refusing to replace an input image or any file it did not write itself.

    OUT/.infer_written.json keeps the SHA-256 of every file written: a file whose content changed
    since (or that was never written here) is not ours to replace.
    """

    def __init__(self, root: Path, inputs: list[Path]):
        self.root = root
        self.inputs = {p.resolve() for p in inputs}
        manifest = root / MANIFEST
        self.written: dict[str, str] = json.loads(manifest.read_text()) if manifest.is_file() else {}

    def check(self, names: list[str]) -> None:
        """Raise FileExistsError, before anything is written, if one of ``names`` may not be written."""
        for name in names:
            target = self.root / name
            if target.resolve() in self.inputs:
                raise FileExistsError(f"{target}: is one of the input images; choose another --out")
            if target.exists() and self.written.get(name) != _sha256(target):
                raise FileExistsError(f"{target}: exists and was not written by tools/infer.py (or was changed "
                                      "since); refusing to overwrite it (choose another --out or remove the file)")

    def record(self, name: str) -> None:
        """Remember that ``name`` was just written here."""
        self.written[name] = _sha256(self.root / name)
        (self.root / MANIFEST).write_text(json.dumps(self.written, indent=1, sort_keys=True))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def output_names(images: list[Path]) -> list[str]:
    """OUT file names: the image's own name, prefixed with its index where two inputs share a name."""
    names = [p.name for p in images]
    return [f"{i:04d}_{n}" if names.count(n) > 1 else n for i, n in enumerate(names)]


# --- tasks ---------------------------------------------------------------------------------------


def class_names(meta: dict, num_classes: int) -> list[str]:
    """Names from the checkpoint (det: meta["names"]), else the class folders of its training data (cls) or its
    dataset class's (seg), else indices."""
    names = meta.get("names") or meta.get("class_names")
    if not names and meta.get("task") == "cls":
        root = Path(meta.get("config", {}).get("data", {}).get("root", "")) / "train"
        if root.is_dir():
            names = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not names and meta.get("task") == "seg" and meta.get("mmseg_config"):
        from mmseg.registry import DATASETS

        from qarep_dense.integrations import mmseg as mm

        dataset = DATASETS.get(mm.config_from_text(meta["mmseg_config"]).test_dataloader.dataset.type)
        names = getattr(dataset, "METAINFO", {}).get("classes")
    return list(names) if names and len(names) == num_classes else [str(i) for i in range(num_classes)]


def make_prepare(task: str, size: int | None, meta: dict):
    """prepare(path, rgb) -> (uint8 (3, H, W) network image, geometry to map outputs back), exactly as
    evaluation prepares its images: det letterbox, cls eval resize/crop, seg mmseg's own test pipeline."""
    if task == "det":
        from qarep_dense.data.transforms import letterbox

        def prepare_det(path: Path, img: np.ndarray):
            boxed, ratio, pad = letterbox(img, size)
            return torch.from_numpy(np.ascontiguousarray(boxed.transpose(2, 0, 1))), {"ratio": ratio, "pad": pad}
        return prepare_det
    if task == "cls":
        from qarep_dense.data.imagefolder import cls_transforms

        transform = cls_transforms(size, train=False)
        return lambda path, img: (transform(torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))), {})
    if task == "seg":
        return seg_prepare(meta)
    raise ValueError(f"task {task!r}: tools/infer.py knows det, cls and seg checkpoints")


def seg_prepare(meta: dict):
    """The checkpoint's mmseg test pipeline without its annotation steps (the evaluation's resize)."""
    from mmengine.dataset import Compose
    from mmengine.registry import DefaultScope

    from qarep_dense.integrations import mmseg as mm

    cfg = mm.config_from_text(meta["mmseg_config"])
    steps = [s for s in cfg.test_dataloader.dataset.pipeline if s["type"] not in ("LoadAnnotations", "CheckSegLabels")]
    with DefaultScope.overwrite_default_scope("mmseg"):
        pipeline = Compose(steps)

    def prepare_seg(path: Path, img: np.ndarray):
        with DefaultScope.overwrite_default_scope("mmseg"):
            item = pipeline({"img_path": str(path)})
        return item["inputs"].flip(0), {}  # mmseg loads BGR; the model takes RGB (as its evaluation loader)
    return prepare_seg


@torch.no_grad()
def detect(model, x: torch.Tensor, strides: tuple[int, ...], reg_max: int, args: argparse.Namespace) -> torch.Tensor:
    """(K, 6) [x1, y1, x2, y2, score, class] in letterboxed pixels, with the evaluation's decode + NMS."""
    from qarep_dense.models.postprocess import decode, nms
    from qarep_dense.ops import make_anchor_points

    cls_logits, reg = model(x)
    h, w = x.shape[-2:]
    points, stride_tensor = make_anchor_points([(h // s, w // s) for s in strides], list(strides))
    boxes, scores = decode(cls_logits.float(), reg.float(), points, stride_tensor, reg_max)
    return nms(boxes, scores, args.conf, args.iou, args.max_det, multi_label=False)[0]


def draw_boxes(img: np.ndarray, det: np.ndarray, names: list[str]) -> np.ndarray:
    out = img.copy()
    for x1, y1, x2, y2, score, cls in det:
        color = palette_color(int(cls))
        cv2.rectangle(out, (int(x1), int(y1)), (int(x2), int(y2)), color, 2)
        cv2.putText(out, f"{names[int(cls)]} {score:.2f}", (int(x1), max(int(y1) - 3, 10)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.4, color, 1, cv2.LINE_AA)
    return out


def palette_color(index: int) -> tuple[int, int, int]:
    return tuple(int(c) for c in np.random.default_rng(int(index)).integers(40, 256, 3))


def draw_mask(img: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``img`` with the (H, W) class map blended in at 50 %."""
    colors = np.array([palette_color(i) for i in range(int(mask.max()) + 1)], np.uint8)
    return cv2.addWeighted(img, 0.5, colors[mask], 0.5, 0)


def draw_labels(img: np.ndarray, labels: list[tuple[str, float]]) -> np.ndarray:
    """Top-k "label prob" lines on a dark band; images under 256 px high are enlarged (nearest) to be legible."""
    factor = max(1.0, 256 / img.shape[0])
    out = cv2.resize(img, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST) if factor > 1 else img.copy()
    cv2.rectangle(out, (0, 0), (out.shape[1], 8 + 18 * len(labels)), (0, 0, 0), -1)
    for i, (name, p) in enumerate(labels):
        cv2.putText(out, f"{name} {p:.2f}", (4, 20 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return out


# --- models --------------------------------------------------------------------------------------


def int8_model(fused: torch.nn.Module, calib: list[torch.Tensor], preprocess: Preprocess, onnx_path: Path,
               precision: str) -> tuple[torch.nn.Module, dict]:
    """Max-calibrated QDQ export of ``fused`` run in onnxruntime; calib: uint8 (3, H, W) images
    (batched by 8 where sizes agree; any input size runs when they differ, as for a segmentor)."""
    from qarep_dense.deploy.ort import OrtModule
    from qarep_dense.quant import QuantConfig, check_ort_int8, export_qdq_onnx, quantize_ptq

    batches: list[torch.Tensor] = []
    for image in calib:
        if batches and batches[-1].shape[1:] == image.shape and len(batches[-1]) < 8:
            batches[-1] = torch.cat([batches[-1], image[None]])
        else:
            batches.append(image[None])
    any_size = len({tuple(b.shape[1:]) for b in batches}) > 1
    qmodel, _ = quantize_ptq(fused, batches, preprocess, QuantConfig(calibrator="max", num_calib_batches=len(batches)),
                             progress=False)
    example = preprocess(batches[0])
    with tempfile.TemporaryDirectory() as tmp:  # the checks write side files: keep them out of OUT
        path = export_qdq_onnx(qmodel, example, Path(tmp) / "model_int8.onnx", dynamic_hw=any_size)
        with torch.no_grad():
            check = check_ort_int8(path, example, qmodel(example), pre_process=False, precision=precision)
        onnx_path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, onnx_path)
    info = {"onnx": str(onnx_path), "calib_images": len(calib), "integer_convs": f"{check.integer_convs}/"
            f"{check.convs_total}", "ort_kernels": check.kernels, "ort_vs_fake_quant_rel_error": check.rel_error}
    return OrtModule(onnx_path, precise_int8=check.kernels == "precise"), info


def run(args: argparse.Namespace) -> dict:
    model, meta = load_model(args.checkpoint)
    task = meta["task"]
    fused = (model if meta.get("fused") else reparameterize(model)).eval()
    size = args.image_size or meta.get("image_size")
    if not size and task != "seg":  # a segmentor's test pipeline carries its own resize
        raise CheckpointError(f"{args.checkpoint}: no image_size in the checkpoint; pass --image-size")
    prepare = make_prepare(task, size, meta)
    preprocess = Preprocess(**meta["preprocess"]) if meta.get("preprocess") else Preprocess()
    images = list_images(args.images)
    folder = OutputFolder(args.out, images)
    names = output_names(images)
    folder.check(names + ["predictions.json"] + (["model_int8.onnx"] if args.int8 else []))
    prepared = [(path, read_rgb(path)) for path in images]
    net = fused
    result: dict = {"checkpoint": str(args.checkpoint), "task": task, "precision": "int8" if args.int8 else "fp32"}
    if args.int8:
        calib_paths = list_images([args.calib]) if args.calib else images
        calib = [prepare(p, read_rgb(p))[0] for p in calib_paths[:args.calib_images]]
        net, result["int8"] = int8_model(fused, calib, preprocess, args.out / "model_int8.onnx", args.ort_precision)
        folder.record("model_int8.onnx")
    labels = class_names(meta, meta["num_classes"])
    result["images"] = []
    for (path, img), name in zip(prepared, names):
        x, geometry = prepare(path, img)
        x = preprocess(x[None])
        entry: dict = {"image": str(path), "output": str(args.out / name)}
        if task == "det":
            from qarep_dense.data.transforms import unletterbox_boxes

            det = detect(net, x, fused.strides, fused.reg_max, args).numpy()
            det[:, :4] = unletterbox_boxes(det[:, :4], geometry["ratio"], geometry["pad"], img.shape[:2])
            drawn = draw_boxes(img, det, labels)
            entry["boxes"] = [{"box": [round(float(v), 1) for v in d[:4]], "score": round(float(d[4]), 4),
                               "label": labels[int(d[5])]} for d in det]
        elif task == "seg":
            with torch.no_grad():
                logits = net(x)
                logits = logits[0] if isinstance(logits, (tuple, list)) else logits
                # As the evaluation: logits resized bilinearly to the image, then the argmax.
                logits = torch.nn.functional.interpolate(logits.float(), size=img.shape[:2], mode="bilinear",
                                                         align_corners=False)
            mask = logits[0].argmax(0).numpy().astype(np.int64)
            drawn = draw_mask(img, mask)
            counts = np.bincount(mask.ravel(), minlength=len(labels))
            entry["class_fractions"] = {labels[i]: round(float(c) / mask.size, 4) for i, c in enumerate(counts) if c}
        else:
            with torch.no_grad():
                probs = torch.softmax(net(x).float(), dim=1)[0]
            top = probs.topk(min(args.topk, probs.numel()))
            pairs = [(labels[int(i)], float(p)) for p, i in zip(top.values, top.indices)]
            drawn = draw_labels(img, pairs)
            entry["topk"] = [{"label": n, "prob": round(p, 4)} for n, p in pairs]
        args.out.mkdir(parents=True, exist_ok=True)
        if not cv2.imwrite(entry["output"], cv2.cvtColor(drawn, cv2.COLOR_RGB2BGR)):
            raise OSError(f"{entry['output']}: OpenCV could not write the image (unsupported extension?)")
        folder.record(name)
        result["images"].append(entry)
    (args.out / "predictions.json").write_text(json.dumps(result, indent=2))
    folder.record("predictions.json")
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        result = run(args)
    except (CheckpointError, ValueError, FileNotFoundError, FileExistsError, OSError, ImportError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(args.out), "images": len(result["images"]), **({"int8": result["int8"]}
                                                                              if "int8" in result else {})}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
