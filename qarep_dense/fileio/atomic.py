"""Atomic small-file writes: write ``<name>.tmp`` beside the target, then rename over it, so a reader (or
a run killed half-way) never sees half a file. Standard library only: the demo, the data generators and
the tools use it without importing torch."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path: str | os.PathLike, data: Any, **dumps_kwargs: Any) -> None:
    """``data`` as JSON (``indent=2`` unless ``dumps_kwargs`` say otherwise), written atomically."""
    write_text_atomic(path, json.dumps(data, **{"indent": 2, **dumps_kwargs}))


def sha256_file(path: str | os.PathLike) -> str:
    """The file's SHA-256 (hex), read in 1 MiB blocks (checkpoints may be large)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
