"""Read the tensors of a pickled whole-model checkpoint without running anything from the file.

YOLOv6 release files (``torch.save({"model": Model, "ema": ...})``) pickle the whole ``nn.Module``
tree, so ``torch.load(weights_only=True)`` refuses them and ``weights_only=False`` would import
YOLOv6 and execute whatever the file names. :func:`read_pickled_modules` instead unpickles with a
restricted :class:`pickle.Unpickler`:

* only the tensor-rebuilding functions torch's zip format uses are honoured, by our own
  implementations (a strided view of the file's raw storage bytes, copied);
* every other class or function the pickle names -- ``yolov6.models.yolo.Model``, ``torch.nn.Conv2d``,
  but also ``os.system`` or ``builtins.exec`` in a crafted file -- becomes an inert :class:`Record`
  that only stores the arguments and state it was given. Nothing is imported, called or executed.

:func:`module_state` then walks the records of ``nn.Module`` objects (their ``_parameters``,
``_buffers`` and ``_modules`` dicts) into a flat ``state_dict`` with the original key names.
"""
from __future__ import annotations

import _compat_pickle
import io
import math
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch


class UnsafeFileError(ValueError):
    """The file is not a torch zip checkpoint whose tensors can be read safely."""


class Record:
    """Inert stand-in for a class or function named in a pickle: stores what it was built with.

    ``name`` is "module.qualname" as written in the file; ``args`` the constructor / reduce arguments;
    ``state`` what ``BUILD`` set; ``items`` / ``list_items`` what ``SETITEMS`` / ``APPENDS`` added.
    """

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> "Record":
        obj = object.__new__(cls)
        object.__setattr__(obj, "args", args)
        object.__setattr__(obj, "state", None)
        object.__setattr__(obj, "items", {})
        object.__setattr__(obj, "list_items", [])
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # accepts anything, does nothing
        pass

    def __setstate__(self, state: Any) -> None:
        object.__setattr__(self, "state", state)

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.list_items.append(value)

    def extend(self, values: Any) -> None:
        self.list_items.extend(values)

    def __repr__(self) -> str:
        return f"Record({self.qualname})"


_RECORD_TYPES: dict[str, type] = {}


def _record_type(module: str, name: str) -> type:
    """One inert subclass of :class:`Record` per name, so NEWOBJ (``cls.__new__(cls)``) works too."""
    qualname = f"{module}.{name}"
    if qualname not in _RECORD_TYPES:
        _RECORD_TYPES[qualname] = type("Record", (Record,), {"qualname": qualname, "__module__": __name__})
    return _RECORD_TYPES[qualname]


class _StorageType:
    """Marker for ``torch.<X>Storage`` in a persistent id: only the element type matters."""

    def __init__(self, dtype: torch.dtype):
        self.dtype = dtype


_STORAGE_DTYPES = {
    "HalfStorage": torch.float16, "FloatStorage": torch.float32, "DoubleStorage": torch.float64,
    "BFloat16Storage": torch.bfloat16, "LongStorage": torch.int64, "IntStorage": torch.int32,
    "ShortStorage": torch.int16, "CharStorage": torch.int8, "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool, "UntypedStorage": torch.uint8,
}


def _rebuild_tensor(storage: Any, offset: int, size: tuple, stride: tuple, *_ignored: Any) -> torch.Tensor:
    """A tensor of ``size``/``stride`` at ``offset`` in a flat storage; bounds checked, memory copied."""
    if not isinstance(storage, torch.Tensor) or storage.dim() != 1:
        raise UnsafeFileError(f"tensor record refers to something that is not a storage: {storage!r}")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or int(offset) < 0 or any(s < 0 for s in size + stride):
        raise UnsafeFileError(f"invalid tensor layout: offset {offset}, size {size}, stride {stride}")
    if math.prod(size) == 0:
        return torch.empty(size, dtype=storage.dtype)
    last = int(offset) + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.numel():
        raise UnsafeFileError(f"tensor (offset {offset}, size {size}, stride {stride}) reaches past its storage "
                              f"of {storage.numel()} elements")
    return storage.as_strided(size, stride, int(offset)).clone()


def _rebuild_parameter(data: Any, *_ignored: Any) -> Any:
    """``nn.Parameter`` -> its plain tensor (requires_grad and hooks are irrelevant here)."""
    return data


def _rebuild_from_type(func: Any, _new_type: Any, args: tuple, _state: Any) -> Any:
    """Tensor subclasses: rebuild the base tensor only if ``func`` is one of ours, else stay inert."""
    if func in (_rebuild_tensor, _rebuild_parameter):
        return func(*args)
    return _record_type("torch._tensor", "_rebuild_from_type_v2")(func, _new_type, args, _state)


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
}


def _load_build(unpickler: "RestrictedUnpickler") -> None:
    # BUILD sets the state of the object on the stack. Only records take a state: applied to a
    # rebuilt tensor it would reach Tensor.__setstate__ (backward hooks, storage swaps).
    state = unpickler.stack.pop()
    inst = unpickler.stack[-1]
    if isinstance(inst, OrderedDict):
        return  # a state_dict's ``_metadata`` attribute (per-module versions): not needed, not applied
    if not isinstance(inst, Record):
        raise UnsafeFileError(f"pickle sets the state of a {type(inst).__name__}; only module records take one")
    inst.__setstate__(state)


class RestrictedUnpickler(pickle._Unpickler):  # the Python implementation: its opcode table can be narrowed
    """Unpickler that rebuilds tensors from ``storages`` and turns every other global into a Record."""

    dispatch = {**pickle._Unpickler.dispatch, pickle.BUILD[0]: _load_build}

    def __init__(self, file: io.BufferedIOBase, read_storage):
        super().__init__(file)
        self._read_storage = read_storage
        self._storages: dict[str, torch.Tensor] = {}

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3:  # protocol-2 files (torch.save's default) name builtins the Python 2 way
            module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
            module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(_STORAGE_DTYPES[name])
        return _record_type(module, name)

    def persistent_load(self, pid: Any) -> torch.Tensor:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise UnsafeFileError(f"unsupported persistent id in the pickle: {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise UnsafeFileError(f"storage of unknown type {storage_type!r}")
        key = str(key)
        if key not in self._storages:
            self._storages[key] = self._read_storage(key, storage_type.dtype, int(numel))
        return self._storages[key]


def read_pickled_checkpoint(path: str | os.PathLike) -> Any:
    """Unpickle a torch zip checkpoint (``torch.save`` since torch 1.6) without executing anything.

    Returns the top-level object with tensors rebuilt and every other object an inert :class:`Record`.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise UnsafeFileError(f"{path}: not a torch zip checkpoint (torch.save >= 1.6 writes a zip archive); "
                              "legacy and plain-pickle files are not read")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise UnsafeFileError(f"{path}: expected one '<name>/data.pkl' record in the archive, found {pickles}")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = prefix + "byteorder"
        if byteorder in names and archive.read(byteorder).decode() != "little":
            raise UnsafeFileError(f"{path}: big-endian checkpoints are not supported")

        def read_storage(key: str, dtype: torch.dtype, numel: int) -> torch.Tensor:
            name = f"{prefix}data/{key}"
            if name not in names:
                raise UnsafeFileError(f"{path}: storage record {name!r} is missing")
            raw = archive.read(name)
            itemsize = torch.empty((), dtype=dtype).element_size()
            if len(raw) < numel * itemsize:
                raise UnsafeFileError(f"{path}: storage {key} holds {len(raw)} bytes, {numel * itemsize} expected")
            return torch.frombuffer(bytearray(raw[: numel * itemsize]), dtype=dtype) if numel else \
                torch.empty(0, dtype=dtype)

        with archive.open(pickles[0]) as f:
            data = io.BytesIO(f.read())
        try:
            return RestrictedUnpickler(data, read_storage).load()
        except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, KeyError, IndexError) as err:
            raise UnsafeFileError(f"{path}: cannot unpickle: {type(err).__name__}: {err}") from err


def is_module_record(obj: Any) -> bool:
    """True for the record of a pickled ``nn.Module`` (its state holds ``_parameters``/``_modules``)."""
    return isinstance(obj, Record) and isinstance(obj.state, dict) and "_modules" in obj.state \
        and "_parameters" in obj.state


def module_state(root: Any, source: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Flatten a module record tree: (state_dict with the original keys, {module path: class name}).

    Parameters and persistent buffers are collected exactly as ``nn.Module.state_dict`` names them.
    """
    if not is_module_record(root):
        raise UnsafeFileError(f"{source}: the selected object is not a pickled nn.Module ({root!r:.80})")
    tensors: dict[str, torch.Tensor] = {}
    classes: dict[str, str] = {}

    def walk(record: Record, prefix: str) -> None:
        classes[prefix.rstrip(".")] = record.qualname
        state = record.state
        skip = state.get("_non_persistent_buffers_set") or set()
        if not isinstance(skip, (set, frozenset)):
            raise UnsafeFileError(f"{source}: {prefix or 'model'} has a malformed buffer set ({skip!r:.60})")
        for table in ("_parameters", "_buffers"):
            for name, value in (state.get(table) or {}).items():
                if value is None or (table == "_buffers" and name in skip):
                    continue
                if not isinstance(value, torch.Tensor):
                    raise UnsafeFileError(f"{source}: {prefix}{name} is not a tensor ({value!r:.60})")
                tensors[prefix + name] = value
        for name, child in (state.get("_modules") or {}).items():
            if child is None:
                continue
            if not is_module_record(child):
                raise UnsafeFileError(f"{source}: submodule {prefix}{name} is not a pickled nn.Module")
            walk(child, f"{prefix}{name}.")

    walk(root, "")
    return tensors, classes
