"""Checkpoints: ``state_dict``s plus plain metadata, written atomically, loaded with weights_only=True.

Layout of a checkpoint file (a dict):
    format: "qarep-dense/1"
    meta:   plain dict (task, arch, block, num_classes, fused, preprocess, config ...)
    model:  model state_dict
    ...     any other states the trainer adds (optimizer, scheduler, scaler, ema, epoch, rng)
"""
from __future__ import annotations

import fnmatch
import glob
import logging
import os
import pickle
import re
import stat
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

FORMAT = "qarep-dense/1"
log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, of another format, or does not fit the model."""


# The temporary names save_checkpoint gives (tempfile.mkstemp: ".<name>." + 8 random characters + ".tmp").
_TMP_SUFFIX_CHARS = 8
# A temp file untouched for this long belongs to a write that died (a killed run), not to a write in progress.
STALE_TMP_SECONDS = 60.0


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask would set it to read it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def stale_temp_files(path: str | os.PathLike, min_age: float = STALE_TMP_SECONDS) -> list[Path]:
    """Temporary files of earlier :func:`save_checkpoint` calls for ``path`` that died before the rename.

    Only names of our own pattern in the same folder (``.<name>.XXXXXXXX.tmp``) untouched for ``min_age`` s.
    """
    path = Path(path)
    pattern = re.compile(re.escape(f".{path.name}.") + r"[A-Za-z0-9_]{%d}\.tmp" % _TMP_SUFFIX_CHARS)
    now = time.time()
    stale = []
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        try:
            info = candidate.lstat()
        except FileNotFoundError:
            continue
        if pattern.fullmatch(candidate.name) and stat.S_ISREG(info.st_mode) and now - info.st_mtime >= min_age:
            stale.append(candidate)
    return sorted(stale)


def save_checkpoint(path: str | os.PathLike, model_state: dict, meta: dict, **states: Any) -> Path:
    """Write atomically: to a temporary file in the same folder, fsync, then rename over ``path``.

    A run killed mid-write leaves the previous checkpoint intact; its temporary file is removed by the
    next write of the same checkpoint. The file gets the mode a plain ``open`` would give (0666 & ~umask),
    not mkstemp's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "meta": dict(meta), "model": model_state, **states}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for stale in stale_temp_files(path):
        log.info("removing %s, left by an interrupted checkpoint write", stale)
        stale.unlink(missing_ok=True)
    return path


# File names a checkpoint folder holds, most likely first: ours (deploy / train form), mmengine's, then any.
CHECKPOINT_PATTERNS = ("deploy.pt", "best.pt", "last.pt", "iter_*.pth", "epoch_*.pth", "*.pt", "*.pth", "*.safetensors")


def checkpoint_path_problem(path: str | os.PathLike, shown: int = 4) -> str | None:
    """What is wrong with ``path`` as a checkpoint *file*, as one message naming it (None when it is a file).

    The one check every loader shares (ours, the converters'), so a folder given where a file is expected
    is called a folder, with the checkpoints it holds, instead of "not found".
    """
    path = Path(path)
    if path.is_file():
        return None
    if path.is_dir():
        found: list[str] = []
        for pattern in CHECKPOINT_PATTERNS:
            names = [p.name for p in path.glob(pattern) if p.is_file() and p.name not in found]
            found += sorted(names, key=_natural_key, reverse=pattern[0] != "*")  # iter_600 before iter_2
        if not found:
            return f"{path}: is a folder, not a checkpoint file (it holds no .pt, .pth or .safetensors file)"
        more = f" (+{len(found) - shown} more)" if len(found) > shown else ""
        return (f"{path}: is a folder, not a checkpoint file; it holds {', '.join(found[:shown])}{more}: "
                f"pass one of them, e.g. {path / found[0]}")
    if path.exists():
        return f"{path}: is not a regular file (a device, socket or pipe), not a checkpoint"
    return f"{path}: checkpoint file not found"


def _natural_key(name: str) -> list:
    # iter_2.pth before iter_10.pth
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def read_torch_file(path: str | os.PathLike, role: str = "", map_location: str | torch.device = "cpu") -> object:
    """``torch.load(path, weights_only=True)`` with one message per failure, naming the file (after ``role``,
    e.g. "--resume", when given): a file that pickles Python objects (refused as unsafe, without torch's advice
    to load it with ``weights_only=False``), a text or other non-torch file, a truncated or corrupt one.

    The one torch reader of every checkpoint loader (ours, mmengine's, the converters')."""
    path, prefix = Path(path), f"{role} " if role else ""
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic[:1] != b"\x80" and magic != b"PK":  # torch writes a zip archive (before 1.6: a pickle); a truncated
        # zip still starts with its first entry's "PK" and is reported as truncated below
        raise CheckpointError(f"{prefix}{path}: not a PyTorch checkpoint ({_what_it_is(path)})")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only load failed" in str(err).lower():
            raise CheckpointError(prefix + _unsafe_message(path, err)) from None
        raise CheckpointError(f"{prefix}{path}: cannot read checkpoint (truncated or corrupt file?): "
                              f"{str(err).splitlines()[0]}") from None
    except (RuntimeError, OSError, EOFError, zipfile.BadZipFile, ValueError) as err:
        raise CheckpointError(f"{prefix}{path}: cannot read checkpoint (truncated or corrupt file?): {err}") from None
    except Exception as err:  # noqa: BLE001 - torch's legacy reader fails on non-torch bytes with whatever they
        # decode to (a text file: KeyError 101, the byte 'e'); the user needs to hear what the file is not
        raise CheckpointError(f"{prefix}{path}: not a PyTorch checkpoint ({_what_it_is(path)}; torch: "
                              f"{type(err).__name__} {err})") from None


def _what_it_is(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "an empty file, 0 bytes"
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "neither a torch zip archive nor a pickle"
    return "it is a text file"


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint this project wrote; raise :class:`CheckpointError` naming the file and the problem."""
    path = Path(path)
    problem = checkpoint_path_problem(path)
    if problem:
        raise CheckpointError(problem)
    payload = read_torch_file(path, map_location=map_location)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "model" not in payload:
        raise CheckpointError(f"{path}: not a qarep-dense checkpoint (expected format {FORMAT!r} with a 'model' entry)")
    return payload


def _unsafe_message(path: Path, err: Exception) -> str:
    # Keep torch's one line that names the refused object; drop its advice to load with weights_only=False.
    detail = next((line.strip() for line in str(err).splitlines() if "GLOBAL" in line or "Unsupported" in line), "")
    return (f"{path}: refused as unsafe: the file holds pickled Python objects (classes, functions) besides tensors "
            "and plain data, which this project never writes and never executes"
            + (f" ({detail})" if detail else "") + "; it is not a qarep-dense checkpoint")


def load_hs_model(path: str | os.PathLike, task: str, role: str = "repopt.hs_checkpoint", **expected: str
                  ) -> nn.Module:
    """The trained Hyper-Search ('hs') model whose scales drive RepOptimizer training: the unfused classifier
    (``task`` "cls") or detector ("det") at ``path``, in eval mode; ``expected``: its variant (``arch=...`` or
    ``scale=...``, the model being trained). The one loader of the classification and detection recipes and
    the mmseg RepOptimizer constructor; anything else is a :class:`CheckpointError` naming ``role`` and the file.
    """
    from ..models.from_meta import BUILDERS, REQUIRED_KEYS

    payload = load_checkpoint(path)
    meta = payload["meta"]
    wanted = {"task": task, "block": "hs", **expected}
    found = {k: meta.get(k) for k in wanted}
    if found != wanted or meta.get("fused") or any(k not in meta for k in REQUIRED_KEYS[task]):
        shown = ", ".join(f"{k} {v!r}" for k, v in found.items())
        raise CheckpointError(f"{role} {path}: expected an unfused Hyper-Search model ("
                              + ", ".join(f"{k} {v!r}" for k, v in wanted.items())
                              + f"), got {shown}{', fused' if meta.get('fused') else ''}")
    model = BUILDERS[task](meta)
    load_model_state(model, payload["model"], source=str(path))
    return model.eval()


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: data}


def check_resume_config(path: str | os.PathLike, saved: dict, current: dict, changeable: tuple[str, ...],
                        only_recorded: bool = True) -> dict[str, tuple[Any, Any]]:
    """The one resume check of every trainer (ours and mmengine's): compare the config a checkpoint recorded with
    this run's, key by dotted key. Returns {key: (recorded, new)} of the changes a resume applies (keys matching a
    ``changeable`` glob); raises :class:`CheckpointError` naming ``path`` and listing every other changed key, which
    the resumed run would restore from the checkpoint (or which shape its state): recorded but not run.

    only_recorded: compare only keys the checkpoint records (a typed config whose schema grew later); False
    (a free-form mmengine config): a key added or removed is a change too.
    """
    old, new = _flatten(saved), _flatten(current)
    keys = [k for k in new if k in old] if only_recorded else sorted(set(old) | set(new))
    changed = {k: (old.get(k, "<absent>"), new.get(k, "<absent>")) for k in keys
               if old.get(k, "<absent>") != new.get(k, "<absent>")}
    refused = {k: v for k, v in changed.items() if not any(fnmatch.fnmatchcase(k, p) for p in changeable)}
    if refused:
        listed = ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in sorted(refused.items())[:8])
        more = f" (+{len(refused) - 8} more)" if len(refused) > 8 else ""
        raise CheckpointError(f"--resume {path}: this config changes {listed}{more}; a resumed run restores these "
                              "from the checkpoint (or they shape its state), so the change would be recorded but "
                              "not run. Resume with the recorded values, or start a new run (another --work-dir, "
                              f"or --overwrite). Changeable on resume: {', '.join(changeable)}")
    return {k: v for k, v in changed.items() if k not in refused}


def load_model_state(model: nn.Module, state: dict, source: str = "checkpoint") -> None:
    """Strict load with a message that lists what is missing, unexpected or mis-shaped.

    ``strict=False`` loads are never used: they hide a checkpoint of another arch or block type.
    """
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mis_shaped = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or mis_shaped:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("shape mismatch", mis_shaped)):
            if keys:
                shown = ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
                parts.append(f"{len(keys)} {label}: {shown}")
        raise CheckpointError(f"{source} does not fit the model ({type(model).__name__}): " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def load_pretrained_trunk(trunk: nn.Module, path: str | os.PathLike) -> dict:
    """Load a train-form classification checkpoint's ``stages.*`` into ``trunk`` (a ``RepTrunk``), strictly.

    The trunk's ``arch`` and ``block`` must be the checkpoint's; its classifier head (``fc.*``) is dropped.
    Every other mismatch (a missing or mis-shaped stage key) raises :class:`CheckpointError` naming the file.
    Returns the checkpoint's metadata. Used by the detector's ``model.backbone_init`` and by the mmseg
    backbone's ``init_cfg=dict(type='Pretrained', ...)``: one way to start a dense model from a classifier.
    """
    payload = load_checkpoint(path)
    meta = payload["meta"]
    if meta.get("task") != "cls" or meta.get("fused"):
        raise CheckpointError(f"{path}: a pretrained backbone needs a train-form classification checkpoint; "
                              f"this one has task {meta.get('task')!r}, fused {meta.get('fused')!r}")
    for key in ("arch", "block"):
        if meta.get(key) != getattr(trunk, key):
            raise CheckpointError(f"{path}: checkpoint {key} {meta.get(key)!r} does not match the backbone's "
                                  f"{getattr(trunk, key)!r}")
    state = {k: v for k, v in payload["model"].items() if not k.startswith("fc.")}
    load_model_state(trunk, state, source=str(path))
    return meta
