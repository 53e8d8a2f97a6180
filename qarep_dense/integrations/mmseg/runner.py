"""mmengine configs and Runner for the segmentation task: load with checked overrides, launch, resume safely.

* :func:`load_config`: ``Config.fromfile`` + ``--cfg-options``; a key the config does not have and its
  object does not take (a typo: ``tain_cfg.max_iters``, ``model.backbone.blok``) fails with the nearest key.
* :func:`resume_checkpoint`: the checkpoint ``--resume`` continues (never "start from 0 over iter_N.pth").
* :func:`check_resume_config`: a resumed run restores the model, optimizer and schedule from the
  checkpoint, so a changed key would be recorded but not run: it is refused, except run-context keys.
* :func:`check_launcher`: ``--launcher pytorch`` outside torchrun fails saying so (not ``KeyError: 'RANK'``).
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import re
from pathlib import Path
from typing import Any, Iterator

import mmengine.config.utils as mm_config_utils
from mmengine.config import Config
from mmengine.fileio import load as load_file
from mmengine.hooks import Hook

from ...config import suggest_key
from ...engine.checkpoint import check_resume_config as check_changes

log = logging.getLogger(__name__)

# Keys an object takes although its constructor does not list them: the optimizer-wrapper constructor's, and
# the RepOptimizerConstructor's (registrations.py) in paramwise_cfg.
_EXTRA_KEYS = {"optim_wrapper": ("constructor", "paramwise_cfg"), "optim_wrapper.paramwise_cfg": ("hs_checkpoint",)}


def _runner_keys() -> set[str]:
    from mmengine.runner import Runner

    return set(inspect.signature(Runner.__init__).parameters) - {"self"}


def _registered_class(type_name: Any):
    """The class a config's ``type`` names in mmseg's (or mmengine's) registries, or None."""
    if not isinstance(type_name, str):
        return type_name if inspect.isclass(type_name) else None
    from mmengine.registry import DefaultScope
    from mmseg import registry

    with DefaultScope.overwrite_default_scope("mmseg"):
        for name in ("MODELS", "DATASETS", "TRANSFORMS", "OPTIMIZERS", "OPTIM_WRAPPERS", "PARAM_SCHEDULERS",
                     "LOOPS", "HOOKS", "METRICS", "DATA_SAMPLERS", "VISUALIZERS", "VISBACKENDS", "LOG_PROCESSORS"):
            cls = getattr(registry, name).get(type_name)
            if cls is not None:
                return cls
    return None


def _takes(node: dict, key: str, path: str) -> tuple[bool, list[str]]:
    """Whether the object ``node`` describes accepts ``key``, and the keys it knows (for a suggestion)."""
    known = [k for k in node if k != "_delete_"]
    if path in _EXTRA_KEYS:
        known += _EXTRA_KEYS[path]
    cls = _registered_class(node.get("type")) if "type" in node else None
    if "type" in node and cls is None:
        return True, known  # a type we cannot look up: cannot judge
    if cls is not None:
        try:
            params = inspect.signature(cls).parameters
        except (TypeError, ValueError):
            return True, known
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return True, known  # it takes any keyword
        known += [p for p in params if p != "self"]
    return key in known, known


def check_cfg_options(cfg: Config, options: dict, source: str = "--cfg-options") -> None:
    """Refuse an override whose key the config does not have and its object does not take.

    A new key is accepted where it can be meant: a constructor argument of the object (``type``) it sits
    in, or a top-level key mmengine's Runner reads. Raises ValueError with the nearest known key.
    """
    plain = cfg.to_dict()
    top = set(plain) | _runner_keys()
    for key in options:
        parts, node, done = key.split("."), plain, []
        for part in parts:
            if isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
                node, done = node[int(part)], [*done, part]
                continue
            if not isinstance(node, dict):
                break  # overriding inside a plain value: mmengine's own error is clear enough
            if part in node:
                node, done = node[part], [*done, part]
                continue
            prefix = ".".join(done)
            if not done:
                ok, known = part in top, sorted(top)
            else:
                ok, known = _takes(node, part, prefix)
            if not ok:
                full = [f"{prefix}.{k}" if prefix else k for k in known]
                hint = suggest_key(".".join([*done, part]), full)
                raise ValueError(f"{source} {key}: unknown key {'.'.join([*done, part])!r}{hint}")
            break


@functools.lru_cache(maxsize=None)
def _package_configs(package_path: str) -> dict[str, dict]:
    """Every config named in an installed OpenMMLab package's metafiles, by name: what mmengine's
    ``_get_cfg_metainfo`` reads, read once per process.

    Why: mmengine parses every metafile of the package (212 YAML files for mmseg) each time it resolves one
    ``mmseg::`` base, then falls back to the package's ``configs/`` folder for a ``_base_/...`` path that no
    metafile names. A config with four ``mmseg::`` bases took 1.7 s to load, almost all of it in YAML.
    """
    index = load_file(os.path.join(package_path, ".mim", "model-index.yml"))
    configs: dict[str, dict] = {}
    for meta_path in index["Import"]:
        for model in load_file(os.path.join(package_path, ".mim", meta_path))["Models"]:
            if "Config" in model:  # mmengine skips (with a warning) a model without one
                configs.setdefault(model["Config"].partition("/")[-1], model)  # the first of several weights
    return configs


def _cfg_metainfo(package_path: str, cfg_path: str) -> dict:
    """mmengine's ``_get_cfg_metainfo`` over :func:`_package_configs`: the same answer, the same ValueError."""
    configs = _package_configs(package_path)
    if cfg_path not in configs:
        raise ValueError(f"Expected configs: {configs.keys()}, but got {cfg_path}")
    return configs[cfg_path]


@contextlib.contextmanager
def _metafiles_read_once() -> Iterator[None]:
    """mmengine resolves ``package::`` bases with :func:`_cfg_metainfo` while the block runs."""
    real = mm_config_utils._get_cfg_metainfo
    mm_config_utils._get_cfg_metainfo = _cfg_metainfo
    try:
        yield
    finally:
        mm_config_utils._get_cfg_metainfo = real


def load_config(path: str | Path, options: dict | None = None) -> Config:
    """``Config.fromfile`` with a clear error naming a missing file; ``options`` checked, then merged."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: config file not found")
    try:
        with _metafiles_read_once():
            cfg = Config.fromfile(str(path))
    except ModuleNotFoundError as err:
        if err.name == "pkg_resources":
            raise ModuleNotFoundError(f"{path}: mmengine needs pkg_resources to read `mmseg::` bases; install "
                                      "setuptools<81 (requirements.txt pins one)") from err
        raise
    if options:
        check_cfg_options(cfg, options)
        cfg.merge_from_dict(options)
    return cfg


def config_from_text(text: str) -> Config:
    """The config stored in a checkpoint's metadata (``Config.pretty_text``)."""
    return Config.fromstring(text, ".py")


# --- launch and resume ---------------------------------------------------------------------------

_TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def check_launcher(launcher: str) -> None:
    """``pytorch`` needs the environment torchrun sets; say so instead of mmengine's ``KeyError: 'RANK'``."""
    if launcher != "pytorch":
        return
    missing = [v for v in _TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise ValueError(f"--launcher pytorch: {', '.join(missing)} not set; this launcher runs under torchrun "
                         "(torchrun --nproc_per_node=N tools/train_seg.py CONFIG --launcher pytorch); "
                         "for one process drop --launcher")


def _iteration(path: Path) -> int:
    match = re.fullmatch(r"iter_(\d+)\.pth", path.name)
    return int(match.group(1)) if match else -1


def resume_checkpoint(work_dir: Path, resume: str | bool) -> Path:
    """The checkpoint ``--resume`` continues: the given file, else the one WORK_DIR/last_checkpoint names,
    else WORK_DIR's highest ``iter_<N>.pth`` (a checkpoint copied in without mmengine's pointer file:
    mmengine alone would start at iteration 0 and overwrite it). Nothing to resume is an error."""
    if resume not in (True, "auto"):
        return Path(resume)
    pointer = work_dir / "last_checkpoint"
    if pointer.is_file():
        named = Path(pointer.read_text().strip())
        if named.is_file():
            return named
        log.warning("%s names %s, which does not exist; looking for iter_*.pth instead", pointer, named)
    found = sorted((p for p in work_dir.glob("iter_*.pth") if _iteration(p) >= 0), key=_iteration)
    if found:
        return found[-1]
    raise FileNotFoundError(f"--resume: nothing to resume in {work_dir} (no last_checkpoint, no iter_<N>.pth); "
                            "start a new run without --resume, or pass --resume CHECKPOINT")


# What a resumed run takes from the config, not from the checkpoint: where it writes and reads, how it is
# launched and logged, its hooks, and how long the loop runs (mmengine rebuilds the loop and hooks from the
# config; the model, optimizer, parameter schedulers and RNG come from the checkpoint).
RESUME_CHANGEABLE = ("work_dir", "launcher", "resume", "load_from", "data_root", "*.data_root", "*.num_workers",
                     "*.persistent_workers", "train_cfg.max_iters", "train_cfg.val_interval", "default_hooks.*",
                     "env_cfg.*", "log_level", "visualizer.*", "log_processor.*")


def check_resume_config(path: Path, saved_text: str | None, cfg: Config) -> None:
    """Refuse a resume whose config differs from the one the checkpoint recorded, outside run context
    (:func:`~qarep_dense.engine.checkpoint.check_resume_config` with ``RESUME_CHANGEABLE``; a key added or removed
    counts). mmengine restores the model, optimizer (lr, momentum) and schedule from the checkpoint; a changed
    model or recipe would be written into the run's config but not run."""
    if not saved_text:
        log.warning("%s records no config; cannot check that --resume continues the same recipe", path)
        return
    saved = config_from_text(saved_text).to_dict()
    current = config_from_text(cfg.pretty_text).to_dict()  # the same round trip as the saved text
    for key, (old, new) in check_changes(path, saved, current, RESUME_CHANGEABLE, only_recorded=False).items():
        if key not in ("work_dir", "resume", "load_from"):
            log.info("resuming with %s changed: %r -> %r", key, old, new)


def build_runner(cfg: Config):
    """mmengine's ``Runner`` for ``cfg`` (training, validation, checkpoints, resume, DDP launchers)."""
    from mmengine.runner import Runner

    return Runner.from_cfg(cfg)


class StartIterHook(Hook):
    """Records the iteration training starts from (after a resume) into ``record["iter"]``."""

    priority = "LOWEST"

    def __init__(self, record: dict):
        self.record = record

    def before_train(self, runner) -> None:
        self.record["iter"] = runner.iter


__all__ = ["load_config", "check_cfg_options", "config_from_text", "check_launcher", "resume_checkpoint",
           "RESUME_CHANGEABLE", "check_resume_config", "build_runner", "StartIterHook"]
