"""The one guard of every data generator / exporter: write only what we own, delete only what we wrote.

A generator that writes into ``out_dir`` names the paths it will create, relative to ``out_dir``
(folders or files: ``("train", "val")`` for an ImageFolder export, ``("images/train",
"annotations/instances_train.json", ...)`` for synthetic COCO). ``out_dir/manifest.json`` records
them before the first byte is written, so even a crashed export is known to be ours::

    {"writer": "qarep-dense export", "version": 2, "spec": {...}, "status": "incomplete" | "complete",
     "owned": ["train", "val"], "files": {"train": 120, "val": 24}, "counts": {...}}

Rules, enforced by :func:`begin_export`:

* a path that exists and is not listed in our manifest is never written into nor deleted: the
  export stops with ``FileExistsError`` naming it (it may be a user's real data);
* a ``manifest.json`` that is not ours is never replaced (the same error);
* on re-export only the paths our manifest lists are removed; nothing else in ``out_dir`` is touched.

:func:`export_is_current` tells whether a complete export of exactly ``spec`` is there (its file
counts intact), so generators skip finished work.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path, PurePosixPath
from typing import Sequence

from ..fileio import write_json_atomic

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
WRITER = "qarep-dense export"
VERSION = 2


def _read_manifest(out_dir: Path) -> dict | None:
    """Our manifest as a dict, ``None`` when there is none; raises when the file exists but is not ours."""
    path = out_dir / MANIFEST
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = None
    owned = data.get("owned") if isinstance(data, dict) else None
    if isinstance(data, dict) and data.get("writer") == WRITER and isinstance(owned, list) and all(isinstance(p, str) for p in owned):
        return data
    legacy = _legacy_owned(data) if isinstance(data, dict) else None
    if legacy is not None:  # an export of an earlier version of our generators: it owns what they wrote
        return {**data, "owned": legacy}
    raise FileExistsError(f"{path} exists but was not written by this exporter; choose another folder "
                          "(nothing was changed)")


def _legacy_owned(data: dict) -> list[str] | None:
    """The paths written under a manifest of an earlier version of our exporters, or None if it is none of them."""
    if set(data) <= {"spec", "status", "counts"} and "spec" in data and "status" in data:  # ImageFolder exports
        counts = data.get("counts")
        return sorted(counts) if isinstance(counts, dict) and counts else ["train", "val"]
    if set(data) == {"format", "num_train", "num_val", "image_size", "seed", "category_ids", "ext"}:  # synthetic COCO
        return ["images/train", "images/val", "annotations/instances_train.json", "annotations/instances_val.json"]
    return None


def _checked(out_dir: Path, rel: str) -> Path:
    """``out_dir / rel`` for a relative path that stays inside ``out_dir`` (a manifest is data, not trusted)."""
    pure = PurePosixPath(rel)
    if not rel or pure.is_absolute() or ".." in pure.parts or pure.parts[:1] == (MANIFEST,):
        raise ValueError(f"{out_dir / MANIFEST}: invalid owned path {rel!r} (must be relative, inside the folder)")
    return out_dir / pure


def _count_files(path: Path) -> int:
    if path.is_file():
        return 1
    return sum(1 for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _remove(path: Path) -> None:
    if path.is_symlink():
        raise FileExistsError(f"{path} is a symbolic link, not the folder this exporter wrote; not removing it")
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def export_is_current(out_dir: str | os.PathLike, spec: dict) -> bool:
    """True when ``out_dir`` holds a complete export of exactly ``spec`` with every recorded file present."""
    out_dir = Path(out_dir)
    try:
        manifest = _read_manifest(out_dir)
    except FileExistsError:
        return False  # begin_export will refuse with the reason
    if manifest is None or manifest.get("spec") != spec or manifest.get("status") != "complete":
        return False
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return False  # a legacy manifest: redo the export once, under the new manifest
    try:
        paths = {rel: _checked(out_dir, rel) for rel in files}
    except ValueError:
        return False
    return all(paths[rel].exists() and _count_files(paths[rel]) == n for rel, n in files.items())


def begin_export(out_dir: str | os.PathLike, spec: dict, splits: Sequence[str] = ("train", "val"),
                 adopt: Sequence[str] = ()) -> None:
    """Make ``out_dir`` ready for a fresh export that will write exactly the paths ``splits``.

    ``splits``: paths relative to ``out_dir`` (folders or files) the generator is about to create.
    Removes the paths a previous export of ours recorded (and only those), refuses with
    ``FileExistsError`` naming the path if any of ``splits`` exists without being ours, then records
    ``splits`` as owned (status "incomplete") before anything is written.
    ``adopt``: without a manifest, paths the caller has recognised as outputs of an earlier version of
    itself that kept no manifest (treated as recorded).
    """
    out_dir = Path(out_dir)
    wanted = [str(PurePosixPath(s)) for s in splits]
    for rel in [*wanted, *adopt]:
        _checked(out_dir, rel)
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir}: expected a folder for the export, found a file")
    manifest = _read_manifest(out_dir)
    recorded = list(adopt) if manifest is None else manifest["owned"]
    owned = [str(PurePosixPath(p)) for p in recorded]
    for rel in wanted:
        path = out_dir / rel
        if (path.exists() or path.is_symlink()) and rel not in owned:
            detail = f"no {MANIFEST}" if manifest is None else f"not listed in {out_dir / MANIFEST}"
            raise FileExistsError(f"{path} exists but was not written by this exporter ({detail}); choose another "
                                  "folder or remove it yourself")
    for rel in owned:
        path = _checked(out_dir, rel)
        if path.exists() or path.is_symlink():
            log.info("removing %s (written by an earlier export of other settings)", path)
            _remove(path)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_manifest(out_dir, {"spec": spec, "status": "incomplete", "owned": wanted})


def finish_export(out_dir: str | os.PathLike, spec: dict, counts: dict[str, int]) -> None:
    """Mark the export complete; records every owned path's file count for :func:`export_is_current`.

    ``counts``: the generator's own summary (e.g. images per split), stored as given.
    """
    out_dir = Path(out_dir)
    manifest = _read_manifest(out_dir)
    if manifest is None or manifest.get("status") != "incomplete":
        raise RuntimeError(f"{out_dir}: finish_export without begin_export")
    files = {rel: _count_files(_checked(out_dir, rel)) for rel in manifest["owned"]}
    _write_manifest(out_dir, {"spec": spec, "status": "complete", "owned": manifest["owned"], "files": files,
                              "counts": dict(counts)})


def _write_manifest(out_dir: Path, manifest: dict) -> None:
    write_json_atomic(out_dir / MANIFEST, {"writer": WRITER, "version": VERSION, **manifest}, sort_keys=True)
