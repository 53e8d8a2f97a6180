"""A digest of what a config file says, for the main job's record of its settings.

A results folder's finished stages are reused only under the settings they ran with; the config files the
stages train with are part of those settings, so a changed recipe (say a detector's ``lr0``) must not reuse a
detector trained under the old one. The digest covers the file and, recursively, the local files it builds
on (TOML ``base = "..."``, mmengine ``_base_``), without their comment lines, so that rewording a comment
keeps a folder reusable. Bases inside an installed package (``mmseg::...``) are pinned by requirements.txt.
"""
from __future__ import annotations

import ast
import hashlib
import tomllib
from pathlib import Path


def _bases(path: Path, text: str) -> list[Path]:
    """The local files ``path`` builds on, in the order it names them."""
    if path.suffix == ".toml":
        base = tomllib.loads(text).get("base")
        names = [base] if isinstance(base, str) else list(base or [])
    else:
        names = []
        for node in ast.parse(text, filename=str(path)).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_base_" for t in node.targets):
                value = ast.literal_eval(node.value)
                names = [value] if isinstance(value, str) else list(value)
    return [path.parent / n for n in names if "::" not in n]


def _meaningful_lines(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.splitlines()
                     if line.strip() and not line.lstrip().startswith("#"))


def config_digest(path: str | Path) -> str:
    """16 hex digits over ``path`` and its local bases, comment lines and blank lines left out.

    Raises FileNotFoundError naming the file when it or one of its bases is missing.
    """
    digest = hashlib.sha256()
    pending, seen = [Path(path)], set()
    while pending:
        current = pending.pop(0).resolve()
        if current in seen:
            continue
        seen.add(current)
        if not current.is_file():
            raise FileNotFoundError(f"{current}: config file not found (named by {path})")
        text = current.read_text()
        digest.update(current.name.encode() + b"\0" + _meaningful_lines(text).encode() + b"\0")
        pending.extend(_bases(current, text))
    return digest.hexdigest()[:16]
