"""Inputs and outputs of inference on a user's images: finding and decoding the images, and an output
folder that replaces only files it wrote itself (never an input image, never a user's file)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
MANIFEST = ".infer_written.json"  # the files this tool wrote into OUT (it overwrites only those)


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


class OutputFolder:
    """Writes into OUT, refusing to replace an input image or any file it did not write itself.

    OUT/.infer_written.json keeps the SHA-256 of every file written: a file whose content changed
    since (or that was never written here) is not ours to replace.
    """

    def __init__(self, root: Path, inputs: list[Path]):
        check_output_folder(root)
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
                raise FileExistsError(f"{target}: exists and was not written by this tool (or was changed "
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
