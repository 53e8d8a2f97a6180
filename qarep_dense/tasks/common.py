"""Pieces every task's ``train()`` shares: seeding, determinism, work-dir and resume checks, result files."""
from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from ..config import config_to_dict
from ..engine.checkpoint import CheckpointError, load_checkpoint
from ..engine.checkpoint import check_resume_config as check_changes
from ..engine.distributed import DistInfo, cleanup_distributed, init_distributed
from ..engine.logging import log_error_to_file, setup_logging
from ..engine.trainer import Trainer
from ..fileio import Claim, claim, write_json_atomic

log = logging.getLogger(__name__)


# --- config sections every training task shares ------------------------------------------------


@dataclass
class RepOptConfig:
    hs_checkpoint: str = ""         # a trained "hs" model: its scales drive RepOptimizer training of "repopt"


@dataclass
class TrainConfig:
    """Run settings of a training task; a task subclasses it for its own defaults and extra keys."""

    device: str = "auto"            # auto | cpu | cuda | cuda:N (the CLI's --device overrides)
    amp: bool = True                # CUDA only
    seed: int = 0
    eval_interval: int = 1
    deterministic: bool = False
    ema: bool = False
    ema_decay: float = 0.9999
    ema_tau: float = 2000.0
    log_interval: int = 50
    keep_every: int = 0             # also keep epoch_<k>.pt every k epochs (0: only last/best)
    tensorboard: bool = False
    progress: bool = True
    # How the same training runs faster (timm's --channels-last and --torchcompile); the kernels round
    # differently, so a run's numbers differ slightly from the default eager NCHW run of the same seed.
    channels_last: bool = False     # weights (and so activations) in channels-last memory order
    compile: bool = False           # torch.compile the training forward (needs a C++ compiler on CPU)


# Every metric in results.json, eval JSON and tables is a percentage (top-1, COCO AP, mIoU); the files say so.
METRICS_UNIT = "percent"


def finalize_run(trainer: Trainer, evaluate: Callable[[torch.nn.Module], dict], work_dir: Path, headline: str,
                 identity: dict) -> tuple[torch.nn.Module, dict, dict]:
    """The end of every training run: fuse the evaluated (EMA or final) model, evaluate both forms, write
    ``deploy.pt`` and ``results.json``.

    headline: the metric the best checkpoint is chosen by ("top1", "AP"); identity: the results keys that
    say what was trained (task, arch/scale, block). Returns (deploy model, train-form metrics, results);
    the caller may add keys to ``results`` and rewrite it with :func:`write_json_atomic`.
    """
    from ..engine.checkpoint import save_checkpoint
    from ..engine.hooks import CheckpointHook
    from ..layers import reparameterize

    model = trainer.eval_model
    train_form = trainer.metrics if trainer.metrics_epoch == trainer.max_epochs - 1 else evaluate(model)
    deploy = reparameterize(model, fold_bn=True)
    deploy_metrics = evaluate(deploy)
    meta = {**trainer.meta, "fused": True, "fold_bn": True}
    save_checkpoint(work_dir / "deploy.pt", deploy.state_dict(), meta, metrics=deploy_metrics)
    ckpt = next(h for h in trainer.hooks if isinstance(h, CheckpointHook))
    results = {**identity, "metrics_unit": METRICS_UNIT, "epochs": trainer.max_epochs,
               "weights": "ema" if trainer.ema is not None else "final",
               "train_form": dict(train_form), "deploy": dict(deploy_metrics),
               "best": {headline: ckpt.best, "epoch": None if ckpt.best_epoch is None else ckpt.best_epoch + 1},
               "files": {k: str(work_dir / f) for k, f in (("last", "last.pt"), ("best", "best.pt"),
                                                           ("deploy", "deploy.pt"))},
               "config": meta["config"]}
    write_json_atomic(work_dir / "results.json", results)
    return deploy, train_form, results


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def set_determinism(deterministic: bool) -> None:
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it for determinism
        # warn_only: some CUDA backward kernels (adaptive avg-pool) have no deterministic variant;
        # on CPU every op used here is deterministic, which the exact-resume tests rely on.
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def check_resume_meta(path: Path, saved: dict, expected: dict, keys: Iterable[str],
                      unrecorded: dict[str, Any] | None = None) -> None:
    """Refuse to resume a run whose checkpoint was written for another model. ``unrecorded`` gives the value
    a key had in checkpoints written before it was recorded (what those runs actually trained with)."""
    unrecorded = unrecorded or {}
    for key in keys:
        old = saved.get(key, unrecorded.get(key))
        if old != expected.get(key):
            raise CheckpointError(f"{path} was written for {key}={old!r} but this config has "
                                  f"{key}={expected.get(key)!r}; resume with the same model settings or use another "
                                  "--work-dir")


# Files a training run writes into its work dir; a fresh run refuses to start over the first three.
RUN_CHECKPOINTS = ("last.pt", "best.pt", "deploy.pt")
RUN_OUTPUTS = (*RUN_CHECKPOINTS, "results.json", "train.csv", "val.csv", "train_iter.csv")

# Config keys whose new value a resumed run applies from its next epoch (the schedule follows the new
# epoch count, hooks and loaders are rebuilt from the config). Every other key is restored from, or baked
# into, the checkpoint's state (optimizer lr and momentum, batch size, model, augmentation draws): changing
# them on --resume would record a value that does not run, so it is refused.
RESUME_CHANGEABLE = ("optim.epochs", "train.eval_interval", "train.log_interval", "train.progress",
                     "train.tensorboard", "train.keep_every", "train.device", "train.deterministic",
                     "data.workers", "data.root")


class WorkDirExistsError(FileExistsError):
    """A fresh run was started in a work dir that holds an earlier run's checkpoints."""


# What a training of an earlier version (before work dirs were recorded) left in its work dir: adopted as ours.
WORK_DIR_FILES = (*RUN_OUTPUTS, "epoch_*.pt", "config.json", "train.log", "tensorboard/*")


def claim_work_dir(work_dir: Path, resume: bool | str, overwrite: bool, owner: str,
                   checkpoints: tuple[str, ...] = RUN_CHECKPOINTS, adopt: tuple[str, ...] = WORK_DIR_FILES) -> Claim:
    """The trainers' one "refuse an occupied work dir", as a claim (:mod:`qarep_dense.fileio.ownership`).

    A fresh run over an earlier run's ``checkpoints`` (name patterns) is refused unless ``overwrite``, which
    removes the files the earlier run recorded (only those: a user's file in the work dir stays), so no stale
    best model, results or CSV rows survive. ``resume`` keeps them. A second run in the same work dir, e.g. a
    leftover of a killed main job, is refused while the first lives ("in use by pid N"). The files are
    recorded without hashes: a resumed run rewrites checkpoints and appends to logs.
    """
    existing = list(dict.fromkeys(p.name for pattern in checkpoints for p in sorted(work_dir.glob(pattern))
                                  if p.is_file()))
    if existing and not resume and not overwrite:
        raise WorkDirExistsError(f"{work_dir} already holds {', '.join(existing)} of an earlier run; use --resume to "
                                 "continue it, or --overwrite to start over (replacing its checkpoints), or another "
                                 "--work-dir")
    if existing and overwrite and not resume:
        log.warning("--overwrite: removing the files the earlier run in %s recorded", work_dir)
    return claim(work_dir, owner, keep=bool(resume), label="--work-dir", unhashed=("*",), adopt=adopt)


def check_resume_config(path: Path, saved: dict | None, current: dict) -> dict[str, tuple[Any, Any]]:
    """:func:`~qarep_dense.engine.checkpoint.check_resume_config` with the typed recipes' ``RESUME_CHANGEABLE``;
    a checkpoint that records no config is refused (nothing to check the resume against)."""
    if not isinstance(saved, dict):
        raise CheckpointError(f"{path}: the checkpoint records no training config; cannot check that --resume "
                              "continues the same recipe")
    return check_changes(path, saved, current, RESUME_CHANGEABLE)


BuildFn = Callable[[DistInfo, torch.device], tuple[Trainer, Callable[[Trainer], dict]]]


def run_training(cfg: Any, work_dir: str | os.PathLike, resume: bool, device: str | None, build: BuildFn,
                 resume_keys: tuple[str, ...], overwrite: bool = False,
                 unrecorded: dict[str, Any] | None = None) -> dict:
    """The shared life of a training run, plain or under torchrun:

    init the process group -> claim the work dir (:func:`claim_work_dir`) ->
    logging -> determinism and seeds -> ``build(dist, device)`` returns (trainer, finish) -> optional
    exact resume from WORK_DIR/last.pt (refused if ``resume_keys`` of the checkpoint's meta differ, read
    through ``unrecorded`` for older checkpoints, or a config key it cannot apply changed) -> config.json -> train -> ``finish(trainer)`` on rank 0
    (``{}`` elsewhere). An error that stops the run is written with its traceback to train.log.
    """
    import torch.distributed as tdist

    work_dir = Path(work_dir)
    owns_group = not (tdist.is_available() and tdist.is_initialized())
    dist, dev = init_distributed(device or cfg.train.device)
    claimed = None
    try:
        claimed = claim_work_dir(work_dir, resume, overwrite, "train") if dist.is_main else None
        setup_logging(work_dir, dist.is_main)
        if dist.distributed:  # in train.log: the record that this run went through DDP
            log.info("distributed: rank %d of %d, backend %s, device %s", dist.rank, dist.world_size,
                     tdist.get_backend(), dev)
        try:
            results = _train_logged(cfg, work_dir, resume, dist, dev, build, resume_keys, unrecorded)
            if claimed is not None:
                claimed.seal()
            return results
        except BaseException as err:
            label = "interrupted" if isinstance(err, KeyboardInterrupt) else "stopped by an error"
            log_error_to_file(f"run {label}: {type(err).__name__}: {err}", err)
            raise
    finally:
        if claimed is not None:
            claimed.release()
        if owns_group:
            cleanup_distributed()


def _train_logged(cfg: Any, work_dir: Path, resume: bool, dist: DistInfo, dev: torch.device, build: BuildFn,
                  resume_keys: tuple[str, ...], unrecorded: dict[str, Any] | None) -> dict:
    set_determinism(cfg.train.deterministic)
    seed_all(cfg.train.seed + dist.rank)
    trainer, finish = build(dist, dev)
    last = work_dir / "last.pt"
    config = config_to_dict(cfg)
    if resume:
        if not last.is_file():
            raise FileNotFoundError(f"--resume: {last} not found (nothing to resume in {work_dir})")
        payload = load_checkpoint(last)  # on CPU: RNG states must stay CPU tensors
        check_resume_meta(last, payload["meta"], trainer.meta, resume_keys, unrecorded)
        for key, (old, new) in check_resume_config(last, payload["meta"].get("config"), config).items():
            log.info("resuming with %s changed: %r -> %r (applies from the next epoch)", key, old, new)
        trainer.resume(payload, source=str(last))
    if dist.is_main:
        write_json_atomic(work_dir / "config.json", config)
    trainer.train()
    return finish(trainer) if dist.is_main else {}
