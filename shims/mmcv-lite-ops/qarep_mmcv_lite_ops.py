"""``import mmcv.ops`` under mmcv-lite, so that mmseg 1.x (``from mmseg.apis import init_model``) imports.

mmseg imports ``mmcv.ops.point_sample`` at import time. mmcv-lite ships that pure-PyTorch file, but its
``mmcv/ops/__init__.py`` also loads every compiled op and fails on the missing ``mmcv._ext``. This
module's finder answers ``import mmcv.ops`` only when ``mmcv._ext`` does not exist (with full mmcv it
does nothing) with a package whose pure-Python files stay importable, ``point_sample`` at its top, and
every compiled op raising ``ModuleNotFoundError`` when asked for (mmseg guards its optional ops with
``except ModuleNotFoundError``).

The ``.pth`` file installed beside this module calls :func:`install` at interpreter start; it only adds
a finder to ``sys.meta_path`` (no import of mmcv or torch), so Pythons that never import mmcv pay nothing.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path

__all__ = ["install", "MmcvLiteOpsFinder"]


def _sigmoid_focal_loss(*args, **kwargs):
    raise RuntimeError("mmcv.ops.sigmoid_focal_loss needs mmcv's compiled ops (mmcv-lite is installed); "
                       "mmseg uses its pure-PyTorch focal loss on CPU")


def _missing(name: str):
    if name.startswith("_"):
        raise AttributeError(name)
    raise ModuleNotFoundError(f"mmcv.ops.{name} needs mmcv's compiled ops; mmcv-lite is installed")


class _Loader(importlib.abc.Loader):
    def create_module(self, spec):
        return None  # the default module object

    def exec_module(self, module) -> None:
        import mmcv

        module.__doc__ = "mmcv-lite adapter (qarep-mmcv-lite-ops): only mmcv's pure-PyTorch ops are here."
        module.ADAPTED = True
        mmcv.ops = module
        module.point_sample = importlib.import_module("mmcv.ops.point_sample").point_sample
        module.sigmoid_focal_loss = _sigmoid_focal_loss
        module.__getattr__ = _missing


class MmcvLiteOpsFinder(importlib.abc.MetaPathFinder):
    """Finds ``mmcv.ops`` when mmcv has no compiled extension; declines every other name."""

    def find_spec(self, name, path=None, target=None):
        if name != "mmcv.ops" or not path:
            return None
        ops_dir = Path(path[0]) / "ops"
        if not ops_dir.is_dir() or any(next(Path(p).glob("_ext*"), None) for p in path):
            return None  # not mmcv's layout, or full mmcv with its compiled ops: import normally
        spec = importlib.machinery.ModuleSpec(name, _Loader(), is_package=True)
        spec.submodule_search_locations = [str(ops_dir)]
        return spec


def install() -> bool:
    """Put the finder first on ``sys.meta_path`` (once). Returns True if it was added now."""
    if any(isinstance(f, MmcvLiteOpsFinder) for f in sys.meta_path):
        return False
    sys.meta_path.insert(0, MmcvLiteOpsFinder())
    return True
