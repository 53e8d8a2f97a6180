"""Inputs and outputs of inference on a user's images: finding and decoding the images, and an output
folder that replaces only files it wrote itself (never an input image, never a user's file)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from ..fileio import Claim, claim

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


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


def check_output_folder(root: Path) -> None:
    """Raise NotADirectoryError naming ``root`` when it, or the first of its parents that exists, is a file:
    --out is a folder (one drawn image per input, predictions.json), never a file to replace."""
    existing = next((p for p in (root, *root.absolute().parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        where = "is a file" if existing == root else f"cannot be created: {existing} is a file"
        raise NotADirectoryError(f"--out {root}: {where}; --out must be a folder (it receives one drawn image per "
                                 "input and predictions.json)")


def claim_output_folder(root: Path, inputs: list[Path], names: list[str]) -> Claim:
    """Claim OUT (:mod:`qarep_dense.fileio.ownership`) before anything is written: a folder holding files this
    tool did not write, or an input image inside OUT, is refused; a rerun replaces only the files it recorded."""
    check_output_folder(root)
    inside = [p for p in inputs if root.resolve() in p.resolve().parents]
    if inside:
        raise FileExistsError(f"{inside[0]}: an input image inside --out {root}; choose another --out")
    return claim(root, "infer", writes=names, label="--out")


def output_names(images: list[Path]) -> list[str]:
    """OUT file names: the image's own name, prefixed with its index where two inputs share a name."""
    names = [p.name for p in images]
    return [f"{i:04d}_{n}" if names.count(n) > 1 else n for i, n in enumerate(names)]
