"""Trainer hooks: LR schedules, EMA, evaluation, logging, checkpoints and one-off epoch callbacks.

Hooks run in ``priority`` order (lower first) at each event. The defaults give the order a
detector needs: LR (10) -> EMA (20) -> epoch callbacks (30) -> eval (50) -> log (80) -> checkpoint (90),
so a checkpoint is written last, after the metric that picks ``best.pt`` exists, and the RNG state
it stores is the state the next epoch starts from.

A hook with a non-empty ``name`` has its ``state_dict()`` saved in checkpoints under ``hooks[name]``.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from .checkpoint import load_model_state, save_checkpoint
from .distributed import broadcast_object

if TYPE_CHECKING:
    from .trainer import Trainer

log = logging.getLogger(__name__)


class Hook:
    """Base class: override the events you need; all default to no-ops."""

    name: str = ""
    priority: int = 50

    def attach(self, trainer: Trainer) -> None:
        """Called once when the trainer is built (before any resume)."""

    def before_train(self, trainer: Trainer) -> None: ...
    def after_train(self, trainer: Trainer) -> None: ...
    def before_epoch(self, trainer: Trainer) -> None: ...
    def after_epoch(self, trainer: Trainer) -> None: ...
    def before_step(self, trainer: Trainer) -> None: ...
    def after_step(self, trainer: Trainer) -> None: ...

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        """Training stopped with ``error``: release resources; never write checkpoints here."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict`` returned (on resume)."""


# --- learning-rate schedules ---------------------------------------------------------------------


def warmup_iters(warmup_epochs: float, iters_per_epoch: int, warmup_min_iters: int = 0) -> int:
    """max(warmup_epochs * iters_per_epoch, warmup_min_iters) iterations (YOLOv6: max(3 epochs, 1000))."""
    if warmup_epochs <= 0 and warmup_min_iters <= 0:
        return 0
    return max(int(round(warmup_epochs * iters_per_epoch)), int(warmup_min_iters))


def cosine_factor(progress: float, lrf: float) -> float:
    """Half-cosine from 1 (progress 0) to ``lrf`` (progress 1)."""
    progress = min(max(progress, 0.0), 1.0)
    return lrf + (1.0 - lrf) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _remember_initial_lr(optimizer: torch.optim.Optimizer) -> None:
    # Each group's own base lr, so per-group lr multipliers survive the schedule.
    for group in optimizer.param_groups:
        group.setdefault("initial_lr", group["lr"])


class WarmupCosineLRHook(Hook):
    """Per-iteration schedule for classification: linear warm-up, then cosine to ``lr * lrf``.

    lr(it) = lr * (start + (1 - start) * (it + 1) / W) for it < W (W = warm-up iterations),
    then lr * cosine_factor((it - W) / (T - W), lrf) with T = epochs * iters_per_epoch.
    Stateless: lr is a function of the trainer's iteration, so resume needs nothing saved.
    """

    priority = 10

    def __init__(self, warmup_epochs: float = 0.0, lrf: float = 0.0, warmup_min_iters: int = 0,
                 warmup_start: float = 0.0):
        self.warmup_epochs, self.lrf = warmup_epochs, lrf
        self.warmup_min_iters, self.warmup_start = warmup_min_iters, warmup_start

    def before_train(self, trainer: Trainer) -> None:
        _remember_initial_lr(trainer.optimizer)

    def factor(self, it: int, total: int, iters_per_epoch: int) -> float:
        warm = min(warmup_iters(self.warmup_epochs, iters_per_epoch, self.warmup_min_iters), total)
        if it < warm:
            return self.warmup_start + (1.0 - self.warmup_start) * (it + 1) / warm
        return cosine_factor((it - warm) / max(total - warm, 1), self.lrf)

    def before_step(self, trainer: Trainer) -> None:
        f = self.factor(trainer.iter, trainer.max_epochs * trainer.iters_per_epoch, trainer.iters_per_epoch)
        for group in trainer.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * f


class YoloV6LRHook(Hook):
    """YOLOv6's schedule: per-epoch cosine ``lf(e) = 1 + (lrf - 1) * (1 - cos(pi * e / epochs)) / 2``
    after a linear warm-up of max(warmup_epochs * iters, warmup_min_iters) iterations during which
    momentum ramps warmup_momentum -> momentum and the "bias" group's lr ramps down from
    ``warmup_bias_lr`` (other groups ramp up from 0) to ``initial_lr * lf(epoch)``.

    The bias group is the optimizer group whose "name" is ``bias_group`` (see ``qarep_dense.optim.param_groups``).
    """

    priority = 10

    def __init__(self, lrf: float = 0.01, warmup_epochs: float = 3.0, warmup_min_iters: int = 1000,
                 warmup_momentum: float = 0.8, momentum: float = 0.937, warmup_bias_lr: float = 0.1,
                 bias_group: str = "bias"):
        self.lrf, self.warmup_epochs, self.warmup_min_iters = lrf, warmup_epochs, warmup_min_iters
        self.warmup_momentum, self.momentum = warmup_momentum, momentum
        self.warmup_bias_lr, self.bias_group = warmup_bias_lr, bias_group

    def before_train(self, trainer: Trainer) -> None:
        _remember_initial_lr(trainer.optimizer)

    def lf(self, epoch: int, epochs: int) -> float:
        return 1.0 + (self.lrf - 1.0) * (1.0 - math.cos(epoch * math.pi / epochs)) / 2.0

    def before_step(self, trainer: Trainer) -> None:
        it, lf = trainer.iter, self.lf(trainer.epoch, trainer.max_epochs)
        warm = warmup_iters(self.warmup_epochs, trainer.iters_per_epoch, self.warmup_min_iters)
        t = it / warm if it < warm else 1.0
        for group in trainer.optimizer.param_groups:
            target = group["initial_lr"] * lf
            start = self.warmup_bias_lr if group.get("name") == self.bias_group else 0.0
            group["lr"] = start + (target - start) * t
            if "momentum" in group:
                group["momentum"] = self.warmup_momentum + (self.momentum - self.warmup_momentum) * t


# --- EMA -----------------------------------------------------------------------------------------


class ModelEMA:
    """Exponential moving average of a model's weights and float buffers.

    decay(updates) = decay * (1 - exp(-updates / tau)): small early, so the average follows the
    fast-changing young model, approaching ``decay`` later. ``module`` is an eval-mode copy.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0):
        if not 0.0 <= decay < 1.0 or tau <= 0:
            raise ValueError(f"EMA needs 0 <= decay < 1 and tau > 0; got decay={decay}, tau={tau}")
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, 0

    def current_decay(self) -> float:
        return self.decay * (1.0 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.current_decay()
        source = model.state_dict()
        for key, value in self.module.state_dict().items():
            if value.dtype.is_floating_point:
                value.mul_(d).add_(source[key].detach(), alpha=1.0 - d)
            else:  # e.g. BN num_batches_tracked
                value.copy_(source[key])

    def state_dict(self) -> dict:
        return {"model": self.module.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict, source: str = "EMA state") -> None:
        load_model_state(self.module, state["model"], source=source)
        self.updates = int(state["updates"])


class EMAHook(Hook):
    """Keeps ``trainer.ema`` (a :class:`ModelEMA`), updated after every optimizer step.

    The trainer evaluates and saves ``trainer.eval_model``, which is the EMA module when this hook is present.
    """

    priority = 20

    def __init__(self, decay: float = 0.9999, tau: float = 2000.0):
        self.decay, self.tau = decay, tau

    def attach(self, trainer: Trainer) -> None:
        trainer.ema = ModelEMA(trainer.unwrapped_model, self.decay, self.tau)

    def after_step(self, trainer: Trainer) -> None:
        if trainer.stepped:
            trainer.ema.update(trainer.unwrapped_model)


# --- evaluation, logging, epoch callbacks -----------------------------------------------------------


class EvalHook(Hook):
    """Every ``interval`` epochs (and after the last) run ``evaluate(trainer.eval_model) -> {metric: value}``.

    With ``main_only`` (default) only rank 0 evaluates (on the whole validation set) and the result
    is broadcast, so every rank sees the same ``trainer.metrics``.
    """

    priority = 50

    def __init__(self, evaluate: Callable[[nn.Module], dict], interval: int = 1, main_only: bool = True):
        if interval < 1:
            raise ValueError(f"eval interval must be >= 1, got {interval}")
        self.evaluate, self.interval, self.main_only = evaluate, interval, main_only

    def due(self, trainer: Trainer) -> bool:
        done = trainer.epoch + 1
        return done % self.interval == 0 or done == trainer.max_epochs

    def after_epoch(self, trainer: Trainer) -> None:
        if not self.due(trainer):
            return
        metrics = None
        if trainer.dist.is_main or not self.main_only:
            metrics = self.evaluate(trainer.eval_model)
        if self.main_only:
            metrics = broadcast_object(metrics)
        trainer.metrics, trainer.metrics_epoch = dict(metrics), trainer.epoch
        trainer.logger.log("val", trainer.epoch + 1, metrics)
        shown = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        log.info("epoch %d/%d eval: %s", trainer.epoch + 1, trainer.max_epochs, shown)


class LoggerHook(Hook):
    """Per-epoch means of the step's log items (and lr) to ``train.csv``; every ``interval`` steps to
    ``train_iter.csv``. On resume, rows written after the checkpoint are dropped first."""

    priority = 80

    def __init__(self, interval: int = 50):
        self.interval = interval

    def before_train(self, trainer: Trainer) -> None:
        if trainer.start_epoch > 0:
            for group in ("train", "val"):
                trainer.logger.truncate(group, trainer.start_epoch)
            trainer.logger.truncate("train_iter", trainer.iter)

    def after_step(self, trainer: Trainer) -> None:
        if self.interval and trainer.iter % self.interval == 0:
            trainer.logger.log("train_iter", trainer.iter, {"epoch": trainer.epoch + 1, **trainer.step_items,
                                                            "lr": trainer.current_lr()})

    def after_epoch(self, trainer: Trainer) -> None:
        means = {**trainer.epoch_items, "lr": trainer.current_lr()}
        trainer.logger.log("train", trainer.epoch + 1, means)
        shown = ", ".join(f"{k} {v:.4g}" for k, v in means.items())
        log.info("epoch %d/%d train: %s", trainer.epoch + 1, trainer.max_epochs, shown)

    def after_train(self, trainer: Trainer) -> None:
        trainer.logger.close()

    def on_exception(self, trainer: Trainer, error: BaseException) -> None:
        trainer.logger.close()


class EpochCallbackHook(Hook):
    """Call ``fn(trainer)`` once, before the first epoch whose index is >= ``epoch`` (0-based).

    ">=" rather than "==" so a run resumed past ``epoch`` still applies the change (mosaic off,
    assigner switch): use it for callbacks that set state, and keep them free of random draws
    if bit-exact resume matters.
    """

    priority = 30

    def __init__(self, epoch: int, fn: Callable[[Trainer], Any], label: str = "callback"):
        self.epoch, self.fn, self.label, self.fired = epoch, fn, label, False

    def before_epoch(self, trainer: Trainer) -> None:
        if not self.fired and trainer.epoch >= self.epoch:
            log.info("epoch %d: %s", trainer.epoch + 1, self.label)
            self.fn(trainer)
            self.fired = True


# --- checkpoints ---------------------------------------------------------------------------------


class CheckpointHook(Hook):
    """After every ``interval`` epochs write ``last.pt`` (full resume state); ``best.pt`` when ``metric``
    improves (``mode`` "max" or "min"); ``epoch_<k>.pt`` copies every ``keep_every`` epochs (0: none).

    ``last.pt`` holds the raw training weights as "model" and every state resume needs; ``best.pt``
    holds the evaluated weights (the EMA when there is one) as "model", ready for ``load_model``.
    Files are written atomically by rank 0 only.
    """

    name = "checkpoint"
    priority = 90

    def __init__(self, work_dir: str | os.PathLike, metric: str | None = None, mode: str = "max",
                 interval: int = 1, keep_every: int = 0):
        if mode not in ("max", "min"):
            raise ValueError(f"CheckpointHook mode must be 'max' or 'min', got {mode!r}")
        self.work_dir, self.metric, self.mode = Path(work_dir), metric, mode
        self.interval, self.keep_every = interval, keep_every
        self.best: float | None = None
        self.best_epoch: int | None = None

    @property
    def last_path(self) -> Path:
        return self.work_dir / "last.pt"

    @property
    def best_path(self) -> Path:
        return self.work_dir / "best.pt"

    def _improved(self, trainer: Trainer) -> bool:
        if self.metric is None or trainer.metrics_epoch != trainer.epoch:
            return False
        if self.metric not in trainer.metrics:
            raise KeyError(f"CheckpointHook: metric {self.metric!r} not in the eval results {sorted(trainer.metrics)}")
        value = float(trainer.metrics[self.metric])
        if self.best is not None and (value <= self.best if self.mode == "max" else value >= self.best):
            return False
        self.best, self.best_epoch = value, trainer.epoch
        return True

    def after_epoch(self, trainer: Trainer) -> None:
        done = trainer.epoch + 1
        if done % self.interval and done != trainer.max_epochs:
            return
        if self._improved(trainer) and trainer.dist.is_main:
            save_checkpoint(self.best_path, trainer.eval_model.state_dict(), trainer.meta, epoch=trainer.epoch,
                            metrics=dict(trainer.metrics))
            log.info("new best %s %.4g at epoch %d -> %s", self.metric, self.best, done, self.best_path)
        states = trainer.state_dict()  # every rank: it gathers per-rank RNG states
        if trainer.dist.is_main:
            save_checkpoint(self.last_path, trainer.unwrapped_model.state_dict(), trainer.meta, **states)
            if self.keep_every and done % self.keep_every == 0:
                keep = self.work_dir / f"epoch_{done}.pt"
                shutil.copyfile(self.last_path, keep.with_suffix(".pt.tmp"))
                os.replace(keep.with_suffix(".pt.tmp"), keep)  # atomic, like save_checkpoint

    def state_dict(self) -> dict:
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.best_epoch = state.get("best"), state.get("best_epoch")
