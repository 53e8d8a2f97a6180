"""Typed configs: dataclasses loaded from TOML files, with inheritance and ``--set`` overrides.

A config file is a TOML document whose tables mirror the nested dataclasses of a config class::

    base = "imagenet_base.toml"     # optional; path relative to this file; a string or a list
    [optim]
    lr = 0.1

Bases are merged first (tables deep-merged, other values replaced), then the file itself, then the
``--set key=value`` overrides. Every file is checked against the dataclass on its own, so an
unknown key or a wrongly typed value is reported with the file that holds it::

    configs/cls/x.toml: unknown key 'optim.lrr' (did you mean 'optim.lr'?)

Supported field types: bool, int, float (an int is accepted), str, ``Literal[...]``, ``X | None``,
``tuple[X, ...]``, ``tuple[X, Y]``, ``list[X]``, ``dict[str, X]`` and nested dataclasses.
TOML has no null: an optional field is ``None`` by default or through ``--set key=none``.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, TypeVar, Union

T = TypeVar("T")

_BASE_KEY = "base"


class ConfigError(ValueError):
    """A config file, key or override is invalid; the message names the file (or ``--set``) and the key."""


class _Mismatch(Exception):
    """Internal: a value does not fit a type; ``expected`` describes the type."""

    def __init__(self, expected: str):
        super().__init__(expected)
        self.expected = expected


# --- schema -------------------------------------------------------------------------------------


def _field_types(cls: type) -> dict[str, Any]:
    """Resolved type hints of a dataclass's fields (``from __future__ import annotations`` makes them strings)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _leaf_keys(cls: type, prefix: str = "") -> list[str]:
    """Every dotted key of the schema, tables included (for 'did you mean' suggestions)."""
    keys = []
    for name, tp in _field_types(cls).items():
        key = prefix + name
        keys.append(key)
        if _is_dataclass_type(tp):
            keys.extend(_leaf_keys(tp, key + "."))
    return keys


def _suggest(key: str, cls: type) -> str:
    return suggest_key(key, _leaf_keys(cls))


def suggest_key(key: str, known: Iterable[str]) -> str:
    """' (did you mean KEY?)' for the known dotted key nearest to ``key``, or '' (also used for mmseg configs)."""
    known = list(known)
    match = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    if not match:  # a misplaced key: compare the last component only ('lr' -> 'optim.lr')
        leaf = key.rsplit(".", 1)[-1]
        by_leaf = {k.rsplit(".", 1)[-1]: k for k in known}
        close = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.75)
        match = [by_leaf[close[0]]] if close else []
    return f" (did you mean {match[0]!r}?)" if match else ""


def _describe(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " or ".join("none" if a is type(None) else _describe(a) for a in args)
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


# --- coercion -----------------------------------------------------------------------------------


def _coerce_scalar(value: Any, tp: type) -> Any:
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
    elif tp is Any:
        return value
    else:
        raise TypeError(f"config field type {tp!r} is not supported")
    raise _Mismatch(_describe(tp))


def _coerce(value: Any, tp: Any) -> Any:
    """Check ``value`` (as read from TOML) against ``tp`` and return it in the field's type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg)
            except _Mismatch:
                continue
        raise _Mismatch(_describe(tp))
    if origin is Literal:
        # `True == 1` in Python, so compare types too.
        if any(value == a and type(value) is type(a) for a in args):
            return value
        raise _Mismatch(_describe(tp))
    if origin in (tuple, list, dict):
        try:
            return _coerce_container(value, tp, origin, args)
        except _Mismatch as err:
            if err.expected.startswith(_describe(tp)):
                raise
            raise _Mismatch(f"{_describe(tp)} (an item expects {err.expected})") from None
    return _coerce_scalar(value, tp)


def _coerce_container(value: Any, tp: Any, origin: Any, args: tuple) -> Any:
    if origin is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise _Mismatch(_describe(tp))
        return {k: _coerce(v, args[1]) for k, v in value.items()}
    if not isinstance(value, (list, tuple)):
        raise _Mismatch(_describe(tp))
    if origin is list:
        return [_coerce(v, args[0]) for v in value]
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_coerce(v, args[0]) for v in value)
    if len(value) != len(args):
        raise _Mismatch(f"{_describe(tp)} ({len(args)} items)")
    return tuple(_coerce(v, a) for v, a in zip(value, args))


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_table(raw: dict, cls: type, source: str, root: type, prefix: str = "") -> dict:
    """Validate one file's (or override's) table against ``cls``; return it with values coerced."""
    types_ = _field_types(cls)
    out = {}
    for name, value in raw.items():
        key = prefix + name
        if name not in types_:
            raise ConfigError(f"{source}: unknown key {key!r}{_suggest(key, root)}")
        tp = types_[name]
        if _is_dataclass_type(tp):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: key {key!r} is a table; got {type(value).__name__} {_shown(value)}")
            out[name] = _check_table(value, tp, source, root, key + ".")
            continue
        try:
            out[name] = _coerce(value, tp)
        except _Mismatch as err:
            raise ConfigError(f"{source}: key {key!r} expects {err.expected}; "
                              f"got {type(value).__name__} {_shown(value)}") from None
    return out


# --- files and inheritance ----------------------------------------------------------------------


def _deep_merge(base: dict, top: dict) -> dict:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _read_toml(path: Path, referrer: str | None) -> dict:
    where = f" (base of {referrer})" if referrer else ""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found{where}")
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path}: invalid TOML: {err}") from None


def _load_raw(path: Path, cls: type, chain: tuple[Path, ...] = (), referrer: str | None = None) -> dict:
    """This file merged over its bases, every file validated on its own."""
    resolved = path.resolve()
    if resolved in chain:
        cycle = " -> ".join(str(p) for p in (*chain, resolved))
        raise ConfigError(f"{path}: 'base' inheritance cycle: {cycle}")
    raw = _read_toml(path, referrer)
    bases = raw.pop(_BASE_KEY, [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ConfigError(f"{path}: key 'base' expects a file name or a list of file names; got {_shown(bases)}")
    merged: dict = {}
    for base in bases:
        base_path = Path(os.path.normpath(path.parent / base))
        merged = _deep_merge(merged, _load_raw(base_path, cls, (*chain, resolved), str(path)))
    return _deep_merge(merged, _check_table(raw, cls, str(path), cls))


# --- overrides ----------------------------------------------------------------------------------


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _parse_text(text: str, tp: Any) -> Any:
    """Parse an override's text by the field's type (raises _Mismatch or ValueError)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        if text.strip().lower() in ("none", "null") and type(None) in args:
            return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _parse_text(text, arg)
            except (_Mismatch, ValueError):
                continue
        raise _Mismatch(_describe(tp))
    if origin is Literal:
        by_text = {str(a).lower() if isinstance(a, bool) else str(a): a for a in args}
        if text in by_text:
            return by_text[text]
        raise _Mismatch(_describe(tp))
    if origin in (tuple, list, dict):
        return _parse_container(text, tp, origin, args)
    if tp is bool:
        low = text.strip().lower()
        if low in _TRUE | _FALSE:
            return low in _TRUE
        raise _Mismatch("bool (true/false)")
    if tp is int:
        return int(text)
    if tp is float:
        return float(text)
    if tp in (str, Path):
        if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
            text = text[1:-1]  # allow --set data.root='"my dir"'
        return tp(text)
    return _coerce(text, tp)


def _parse_container(text: str, tp: Any, origin: Any, args: tuple) -> Any:
    """A TOML array/inline table ("[1, 2]", "{a = 1}") or, for sequences, bare "1,2"."""
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        if origin is dict:
            raise
        parts = text.split(",")
        item_types = [args[0]] * len(parts) if origin is list or args[-1] is Ellipsis else list(args)
        if len(parts) != len(item_types):
            raise _Mismatch(_describe(tp)) from None
        value = [_parse_text(p.strip(), t) for p, t in zip(parts, item_types)]
    return _coerce(value, tp)


def parse_override(item: str) -> tuple[str, str]:
    """Split ``"optim.lr=0.1"`` into ("optim.lr", "0.1")."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item}: expected KEY=VALUE with a dotted key, e.g. optim.lr=0.1")
    return key.strip(), value.strip()


def _override_table(item: str, cls: type) -> dict:
    """One ``key=value`` override as a nested, validated table."""
    key, text = parse_override(item)
    source = f"--set {item}"
    owner, parts = cls, key.split(".")
    for depth, part in enumerate(parts):
        types_ = _field_types(owner)
        if part not in types_:
            raise ConfigError(f"{source}: unknown key {key!r}{_suggest(key, cls)}")
        tp = types_[part]
        is_last = depth == len(parts) - 1
        if _is_dataclass_type(tp) and not is_last:
            owner = tp
            continue
        if _is_dataclass_type(tp) or not is_last:
            kind = "a table; set one of its keys" if is_last else "not a table"
            raise ConfigError(f"{source}: key {'.'.join(parts[:depth + 1])!r} is {kind}")
        try:
            value = _parse_text(text, tp)
        except (_Mismatch, ValueError, tomllib.TOMLDecodeError):
            raise ConfigError(f"{source}: key {key!r} expects {_describe(tp)}; cannot parse {text!r}") from None
    table: dict = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        table = {part: table}
    return table


# --- building -----------------------------------------------------------------------------------


def _build(cls: type[T], raw: dict, source: str, prefix: str = "") -> T:
    kwargs = {}
    for field in dataclasses.fields(cls):
        tp = _field_types(cls)[field.name]
        key = prefix + field.name
        if _is_dataclass_type(tp):
            kwargs[field.name] = _build(tp, raw.get(field.name, {}), source, key + ".")
        elif field.name in raw:
            kwargs[field.name] = raw[field.name]
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{source}: missing required key {key!r}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:  # a dataclass's own __post_init__ checks
        raise ConfigError(f"{source}: {err}") from None


def load_config(path: str | os.PathLike, cls: type[T], overrides: Iterable[str] = ()) -> T:
    """Load ``path`` (with its ``base`` chain) into an instance of the dataclass ``cls``.

    ``overrides``: ``"dotted.key=value"`` strings (``--set``), parsed by the field's type and
    applied last. Raises :class:`ConfigError` naming the file (or override) and the key.
    """
    if not _is_dataclass_type(cls):
        raise TypeError(f"load_config needs a dataclass type, got {cls!r}")
    path = Path(path)
    raw = _load_raw(path, cls)
    overrides = list(overrides)
    merged = [raw]  # merged[k]: the file with the first k overrides applied
    for item in overrides:
        merged.append(_deep_merge(merged[-1], _override_table(item, cls)))
    try:
        return _build(cls, merged[-1], str(path))
    except ConfigError as err:
        if not overrides:
            raise
        raise ConfigError(_blame_override(cls, path, overrides, merged, err)) from None


def _blame_override(cls: type, path: Path, overrides: list[str], merged: list[dict], err: ConfigError) -> str:
    """The message of a check that fails only with the overrides, naming the ``--set`` that broke it.

    The file alone failing too keeps the file's name; otherwise the first override after which the
    build fails is blamed (for a check across keys: the one that completed the bad combination).
    """
    problem = str(err).split(": ", 1)[1] if str(err).startswith(f"{path}: ") else str(err)
    for k in range(len(overrides) + 1):
        try:
            _build(cls, merged[k], str(path))
        except ConfigError:
            if k == 0:
                return str(err)
            return f"--set {overrides[k - 1]}: {problem}"
    return f"{path} with --set {' '.join(overrides)}: {problem}"


def config_from_dict(data: dict, cls: type[T], source: str = "<dict>") -> T:
    """Build ``cls`` from a plain dict (e.g. a checkpoint's stored config), with the same checks."""
    return _build(cls, _check_table(dict(data), cls, source, cls), source)


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    return value


def config_to_dict(cfg: Any) -> dict:
    """A plain dict (str/int/float/bool/None/list/dict only) safe for JSON and ``weights_only`` checkpoints."""
    if not (dataclasses.is_dataclass(cfg) and not isinstance(cfg, type)):
        raise TypeError(f"config_to_dict needs a dataclass instance, got {type(cfg).__name__}")
    return _plain(cfg)


def require(checks: Iterable[tuple[bool, str]]) -> None:
    """Raise ``ValueError`` with the message of the first failed (condition, message) pair.

    Config classes call it from ``__post_init__`` for checks that span several keys.
    """
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
