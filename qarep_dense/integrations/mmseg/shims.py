"""Adapters that let mmseg 1.x run in this project's environment (mmcv-lite, current setuptools).

Imported first by the package: mmseg imports ``mmcv.ops`` when it is imported, and mmengine's config
loader looks up ``mmseg::`` bases when a config is read.

* ``mmcv.ops``: mmcv-lite has no compiled ops, so its ``mmcv.ops`` package fails on the missing
  ``mmcv._ext``. The project environment installs ``shims/mmcv-lite-ops`` (a finder, registered by a
  ``.pth`` file at interpreter start, that serves the pure-PyTorch ``point_sample``), so that mmseg's own
  entry points (``from mmseg.apis import init_model``) import without this package. Here we only make
  sure the finder is active, and fail with the fix when neither full mmcv nor the shim is installed.
* ``pkg_resources``: mmengine 0.10 resolves ``mmseg::`` config bases through it; setuptools >= 81 no
  longer ships it. requirements.txt pins a setuptools that does; in another environment without it the
  two lookups mmengine's config module uses are replaced by ``importlib.metadata`` equivalents.
"""
from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

SHIM_HINT = ("install the project's shim (pip install ./shims/mmcv-lite-ops from the repo root; scripts/env.sh does) "
             "or full mmcv with its compiled ops")


def ensure_mmcv_ops() -> bool:
    """Make ``import mmcv.ops`` work; returns True when it is the mmcv-lite adapter (not full mmcv)."""
    try:
        ops = importlib.import_module("mmcv.ops")
        return bool(getattr(ops, "ADAPTED", False))
    except ImportError as err:
        first_error = err
    try:
        import qarep_mmcv_lite_ops
    except ImportError:
        raise ImportError(f"mmseg needs mmcv.ops, which fails under mmcv-lite ({first_error}); {SHIM_HINT}") from None
    import sys

    for name in [m for m in sys.modules if m == "mmcv.ops" or m.startswith("mmcv.ops.")]:
        del sys.modules[name]  # the half-imported package of the failed attempt
    qarep_mmcv_lite_ops.install()  # the .pth did not run (e.g. python -S): register the finder now
    return bool(getattr(importlib.import_module("mmcv.ops"), "ADAPTED", False))


def patch_package_lookup() -> bool:
    """Let mmengine resolve ``mmseg::`` config bases without ``pkg_resources``; True if patched.

    Only when ``pkg_resources`` is missing (not in the project environment, which pins setuptools < 81).
    """
    if importlib.util.find_spec("pkg_resources") is not None:
        return False
    import importlib.metadata as metadata

    import mmengine.config.config as config_module

    def is_installed(package: str) -> bool:
        try:
            metadata.distribution(package)
            return True
        except metadata.PackageNotFoundError:
            spec = importlib.util.find_spec(package)
            return spec is not None and spec.origin is not None

    def get_installed_path(package: str) -> str:
        try:
            dist = metadata.distribution(package)
        except metadata.PackageNotFoundError:
            spec = importlib.util.find_spec(package)
            if spec is None or spec.origin is None:
                raise
            return str(Path(spec.origin).parent)
        location = Path(dist.locate_file(""))
        if (location / package).exists():
            return str(location / package)
        top_level = (dist.read_text("top_level.txt") or "").split()
        if not top_level:
            raise ValueError(f"cannot infer the module name of {package}")
        return str(location / top_level[0])

    config_module.is_installed = is_installed
    config_module.get_installed_path = get_installed_path
    return True


POINT_SAMPLE_ADAPTED = ensure_mmcv_ops()
PACKAGE_LOOKUP_PATCHED = patch_package_lookup()

__all__ = ["POINT_SAMPLE_ADAPTED", "PACKAGE_LOOKUP_PATCHED", "ensure_mmcv_ops", "patch_package_lookup"]
