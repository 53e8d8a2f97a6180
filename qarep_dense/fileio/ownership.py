"""The one ownership rule: a run writes only into a path it claimed, and a rerun replaces only the files an
earlier run recorded. Every writer of the project uses it (data generators, trainers' work dirs, the quantize
pipeline, the PTQ table, exports, the main job).

*claim* (:func:`claim` for a folder, :func:`claim_file` for one output file) takes a path for writing:

* a folder with no record of ours must be empty (``shared``: a dataset root, where only the ``writes``
  paths must be): otherwise :class:`ClaimError` names the path and its first foreign files and nothing is
  changed. A record of another writer (``owner``) is refused the same way, and so is a complete dataset
  (``shared``) of other settings, which another run may be reading;
* a lock (``fcntl.flock`` on ``.written.lock`` beside the record) keeps a second run out while the first
  holds the claim: it gets ``in use by pid N``. The kernel drops the lock when its process ends, however
  it ends, so a killed run never blocks the next one;
* the files the last run recorded are removed (``keep=True``, a resumed training: kept); only those files,
  never a folder whole (an emptied folder is removed with ``rmdir``, which cannot remove content).
  Files a user added beside or inside ours are left alone, and a file of ours edited since is refused;
* the record is rewritten as ``incomplete`` before the first byte is written, listing the files that
  were there and not ours: if the run dies, the next claim knows every other file is the dead run's.

*seal* (:meth:`Claim.seal`) records every file the run wrote (relative path and SHA-256) atomically and
marks the folder complete; :func:`sealed` tells a reader whether a complete result is there.

The record, ``FOLDER/.written.json`` (one file: ``FOLDER/.NAME.written.json``)::

    {"writer": "qarep-dense", "version": 3, "owner": "quantize", "spec": {...}, "status": "complete",
     "files": {"report.json": "<sha256>", ...}, "foreign": ["diagnosis/my_notes.txt"], "info": {...}}

Folders written by earlier versions (``manifest.json`` of the data generators, ``tools/quantize.py`` and
``tools/ptq_eval.py``, ``.demo_written.json``, ``.infer_written.json``) are adopted when their files are
exactly what that version recorded, else refused with what to do.
"""
from __future__ import annotations

import errno
import fcntl
import fnmatch
import json
import os
import time
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from .atomic import sha256_file, write_json_atomic

RECORD = ".written.json"
LOCK = ".written.lock"
WRITER = "qarep-dense"
VERSION = 3
_SHOWN = 3  # foreign files named in a refusal


class ClaimError(FileExistsError):
    """A path this run may not write: someone else's files, another run holds it, or it cannot be written."""


def _where(label: str, path: Path) -> str:
    return f"{label} {path}" if label else str(path)


def _first(paths: list[str]) -> str:
    more = f" and {len(paths) - _SHOWN} more" if len(paths) > _SHOWN else ""
    return ", ".join(paths[:_SHOWN]) + more


def _own_file(name: str) -> bool:
    """The record, lock and temp files of claims (a folder's and its single-file claims')."""
    return name in (RECORD, LOCK, RECORD + ".tmp") or name.endswith((".written.json", ".written.lock",
                                                                       ".written.json.tmp"))


def _files(root: Path, only: str | None) -> set[str]:
    """Relative paths of the files in the claimed scope. Subfolders holding a record of their own belong to
    another claim (a training's work dir inside the main job's folder) and are skipped."""
    if only is not None:
        return {only} if (root / only).is_file() or (root / only).is_symlink() else set()
    found = set()
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not (Path(folder, d) / RECORD).exists()]
        rel = Path(folder).relative_to(root)
        found.update((rel / n).as_posix() for n in names if not _own_file(n))
    return found


def _lock(path: Path, where: str) -> int:
    """Hold an exclusive lock on ``path`` (created if needed) and write our pid into it; return its fd."""
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ClaimError(f"{where}: cannot write there ({err.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ClaimError(f"{where}: in use by pid {pid} (another run is writing there); wait for it to end, "
                             "or stop it, or choose another path") from None
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:  # the holder released (and removed) it between our open and our lock
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        os.close(fd)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _read_record(path: Path, where: str) -> dict | None:
    if not path.exists():
        return None
    data = _read_json(path)
    if not (isinstance(data, dict) and data.get("writer") == WRITER and isinstance(data.get("files"), dict)):
        raise ClaimError(f"{where}: {path.name} exists but was not written by this project; choose another path "
                         "(nothing was changed)")
    return data


def _legacy_record(root: Path, where: str) -> dict | None:
    """The record an earlier version kept, as a record of ours (owner unknown), or None if there is none."""
    for name in (".demo_written.json", ".infer_written.json"):  # {file: sha256} of the files written
        data = _read_json(root / name)
        if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()):
            ours = {rel: h for rel, h in data.items() if (root / rel).is_file() and sha256_file(root / rel) == h}
            return {"owner": None, "status": "complete", "files": {**ours, name: None}}
    data = _read_json(root / "manifest.json")
    if not (isinstance(data, dict) and data.get("writer") == "qarep-dense export"):
        return None
    owned, counts = data.get("owned") or [], data.get("files") or {}
    files: dict[str, None] = {"manifest.json": None}
    present = _files(root, None)
    for rel in owned:
        under = {f for f in present if _inside(f, [rel])}
        if data.get("status") != "complete" or len(under) != counts.get(rel):
            raise ClaimError(f"{where}: written by an earlier version of this project, but {root / rel} no longer "
                             f"holds exactly the {counts.get(rel, '?')} files it wrote there: move the files you "
                             f"added away, or delete {root / rel} and manifest.json, and rerun (nothing was changed)")
        files.update(dict.fromkeys(under))
    spec = data.get("spec") if isinstance(data.get("spec"), dict) else {}
    return {"owner": spec.get("tool") or spec.get("dataset"), "status": "complete", "files": files}


def _ours(record: dict, present: set[str], root: Path, where: str, unhashed: tuple[str, ...]) -> set[str]:
    """The present files an earlier run of ours wrote. A complete record's file edited since is refused."""
    files = record["files"]
    if record.get("status") != "complete":  # that run died: what it recorded and everything not there before it
        before = set(record.get("foreign") or [])
        return {rel for rel in present if rel in files or rel not in before}
    changed = [rel for rel, digest in files.items() if rel in present and digest is not None
               and not _matches(rel, unhashed) and sha256_file(root / rel) != digest]
    if changed:
        raise ClaimError(f"{where}: {_first(changed)} was written by an earlier run and changed since; move it away "
                         "(or delete it) to rerun (nothing was changed)")
    return {rel for rel in files if rel in present}


def _as_json(data: Any) -> Any:
    """``data`` as it reads back from the record (tuples as lists, paths as strings)."""
    return json.loads(json.dumps(data, default=str))


def _changed(recorded: Any, asked: Any) -> str:
    """The settings that differ, ``key recorded -> asked`` (the whole specs when they are not dicts)."""
    if not isinstance(recorded, dict) or not isinstance(asked, dict):
        return f"{recorded} -> {asked}"
    keys = sorted(set(recorded) | set(asked), key=str)
    return ", ".join(f"{k} {recorded.get(k)} -> {asked.get(k)}" for k in keys if recorded.get(k) != asked.get(k))


def _matches(rel: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatch(PurePosixPath(rel).name, p) for p in patterns)


def _adopted(present: set[str], patterns: tuple[str, ...]) -> set[str]:
    return {f for f in present if any(fnmatch.fnmatch(f, p) for p in patterns)}


def _inside(rel: str, writes: Iterable[str]) -> bool:
    return any(rel == w or rel.startswith(w.rstrip("/") + "/") for w in writes)


class Claim:
    """A claimed folder (or file): write into it, then :meth:`seal`. Released by ``seal``, ``release``, the
    end of a ``with`` block, or the end of the process. ``path(rel)`` is where to write ``rel``."""

    def __init__(self, root: Path, only: str | None, owner: str, spec: Any, fd: int, foreign: set[str],
                 unhashed: tuple[str, ...]):
        self.root, self.only, self.owner, self.spec = root, only, owner, _as_json(spec)
        self.foreign, self.unhashed, self._fd = foreign, unhashed, fd
        stem = "" if only is None else f".{only}"
        self.record_path = root / (f"{stem}{RECORD}" if only is None else f"{stem}.written.json")
        self.lock_path = root / (LOCK if only is None else f"{stem}.written.lock")

    def path(self, rel: str = "") -> Path:
        return self.root / (rel or self.only or "")

    def _write(self, status: str, files: dict, info: Any = None) -> dict:
        record = {"writer": WRITER, "version": VERSION, "owner": self.owner, "spec": self.spec, "status": status,
                  "files": files, "foreign": sorted(self.foreign), "pid": os.getpid(), "time": time.time()}
        if info is not None:
            record["info"] = info
        write_json_atomic(self.record_path, record, sort_keys=True, default=str)
        return record

    def seal(self, info: Any = None) -> dict:
        """Record every file written (not there as someone else's at the claim) and mark it complete."""
        if self._fd is None:
            raise RuntimeError(f"{self.path()}: sealed twice, or after release")
        files = {rel: None if _matches(rel, self.unhashed) else sha256_file(self.root / rel)
                 for rel in sorted(_files(self.root, self.only) - self.foreign)}
        record = self._write("complete", files, info)
        self.release()
        return record

    def release(self) -> None:
        """Give the lock back (the record stays as it is: incomplete unless sealed)."""
        if self._fd is not None:
            try:
                self.lock_path.unlink()
            except FileNotFoundError:
                pass
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "Claim":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


def _prepare(root: Path, where: str, want_dir: bool) -> None:
    """Create ``root`` (the claimed folder, or a claimed file's folder) or say why it cannot be written."""
    if root.exists() and not root.is_dir():
        raise ClaimError(f"{where}: is a file, not a folder" if want_dir else f"{where}: {root} is a file, not a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        reason = "a parent is a file" if err.errno in (errno.ENOTDIR, errno.EEXIST) else err.strerror
        raise ClaimError(f"{where}: cannot create the folder ({reason})") from None
    if not os.access(root, os.W_OK | os.X_OK):
        raise ClaimError(f"{where}: cannot write there (permission denied)")


def claim(root: str | os.PathLike, owner: str, spec: Any = None, *, writes: Iterable[str] | None = None,
          keep: bool = False, label: str = "", unhashed: Iterable[str] = (), adopt: Iterable[str] = (),
          shared: bool = False) -> Claim:
    """Claim the folder ``root`` for ``owner`` (a tool or generator name; another owner's folder is refused).

    writes: the paths (relative, files or folders) the run writes: a file of someone else's there is refused.
    shared: the folder may hold other files (a dataset root beside a user's files): without a record only the
    ``writes`` paths must be free of them. A generated dataset is also never regenerated in place with other
    settings (a complete record of another ``spec`` is refused): another run may be reading it.
    keep: keep the files of the earlier run (a resumed training) instead of removing them.
    label: the option that named the path (``--out``), for messages. unhashed: name patterns of files
    recorded without a hash (logs a run appends to). adopt: relative-path patterns of files only this writer
    makes (a training's checkpoints): they count as ours even when no record lists them (an earlier version).
    """
    root, where = Path(root), _where(label, Path(root))
    writes = None if writes is None else [PurePosixPath(w).as_posix() for w in writes]
    _prepare(root, where, want_dir=True)
    fd = _lock(root / LOCK, where)
    try:
        return _take(root, None, owner, spec, fd, where, writes, keep, tuple(unhashed), adopt=tuple(adopt),
                     shared=shared)
    except BaseException:
        _release_fd(root / LOCK, fd)
        raise


def claim_file(path: str | os.PathLike, owner: str, spec: Any = None, *, label: str = "",
               overwrite: bool = False) -> Claim:
    """Claim one output file: refused if it is a folder, or if it exists and no claim of ours wrote it
    (``overwrite``: the user asked to replace it). The writer replaces it atomically; nothing is removed
    beforehand."""
    path = Path(path)
    where = _where(label, path)
    if path.is_dir():
        raise ClaimError(f"{where}: is a folder; give a file path, e.g. {path / 'out'}")
    _prepare(path.parent, where, want_dir=False)
    lock = path.parent / f".{path.name}.written.lock"
    fd = _lock(lock, where)
    try:
        return _take(path.parent, path.name, owner, spec, fd, where, [path.name], True, (), overwrite)
    except BaseException:
        _release_fd(lock, fd)
        raise


def _release_fd(lock: Path, fd: int) -> None:
    lock.unlink(missing_ok=True)
    os.close(fd)


def _take(root: Path, only: str | None, owner: str, spec: Any, fd: int, where: str, writes: list[str] | None,
          keep: bool, unhashed: tuple[str, ...], overwrite: bool = False, adopt: tuple[str, ...] = (),
          shared: bool = False) -> Claim:
    record_path = root / (RECORD if only is None else f".{only}.written.json")
    record = _read_record(record_path, where) or (_legacy_record(root, where) if only is None else None)
    present = _files(root, only)
    if record is None and overwrite:
        mine = set(present)
    elif record is None:
        mine = _adopted(present, adopt)
        theirs = sorted(({f for f in present if _inside(f, writes)} if shared else present) - mine)
        if theirs:
            what = ("exists; choose another path, or move it away" if only is not None else
                    f"holds files this project did not write ({_first(theirs)}); choose another path, or move them away")
            raise ClaimError(f"{where}: {what} (nothing was changed)")
    else:
        if record.get("owner") not in (None, owner):
            raise ClaimError(f"{where}: holds the output of {record['owner']!r}, not of {owner!r}; choose another "
                             "path (nothing was changed)")
        asked = _as_json(spec)
        if shared and record.get("status") == "complete" and "spec" in record and record["spec"] != asked:
            raise ClaimError(f"{where}: holds {owner} data generated with other settings ({_changed(record['spec'], asked)});"
                             " regenerating it in place would change the files under any run reading them: choose "
                             "another path for these settings, or move this folder away (nothing was changed)")
        mine = _ours(record, present, root, where, unhashed) | _adopted(present, adopt)
        clash = sorted(w for w in writes or () if w in present - mine)
        if clash:
            raise ClaimError(f"{where}: {_first(clash)} exists and was not written by this project; move it away "
                             "or choose another path (nothing was changed)")
    kept = mine if keep else set()
    for rel in sorted(mine - kept):
        _remove_file(root, rel)
    c = Claim(root, only, owner, spec, fd, present - mine, unhashed)
    c._write("incomplete", {rel: None for rel in sorted(kept)})
    return c


def _remove_file(root: Path, rel: str) -> None:
    """Remove one recorded file, then its folders up to ``root`` while they are empty (rmdir: never content)."""
    path = root / rel
    path.unlink(missing_ok=True)
    for parent in path.parents:
        if parent == root or root not in parent.parents:
            break
        try:
            parent.rmdir()
        except OSError:
            break


def sealed(root: str | os.PathLike, owner: str | None = None, spec: Any = None, verify: bool = True,
           name: str | None = None) -> dict | None:
    """The complete record of ``root`` (or of its file ``name``) when ``owner``/``spec`` match and every
    recorded file is there (with its hash when ``verify``); else None."""
    root = Path(root)
    try:
        record = _read_record(root / (RECORD if name is None else f".{name}.written.json"), str(root))
    except ClaimError:
        return None
    if record is None or record.get("status") != "complete":
        return None
    if (owner is not None and record.get("owner") != owner) or (spec is not None and
                                                                 record.get("spec") != _as_json(spec)):
        return None
    for rel, digest in record["files"].items():
        path = root / rel
        if not path.is_file() or (verify and digest is not None and sha256_file(path) != digest):
            return None
    return record
