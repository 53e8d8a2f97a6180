"""A small hook-driven trainer shared by classification and detection.

The trainer owns only the inner loop: forward through ``step_fn`` under autocast, a finite-loss
check, backward with gradient accumulation (and DDP ``no_sync`` between micro-batches), optional
clipping, the optimizer step through a GradScaler. Everything else (LR schedule, EMA, evaluation,
logging, checkpoints, mid-run switches) is a :mod:`hook <qarep_dense.engine.hooks>`.

Counters (0-based): ``epoch``; ``inner_iter`` (batch within the epoch); ``iter`` (micro-batches
done before the current one, over the whole run); ``optimizer_steps``. ``stepped`` tells
``after_step`` hooks whether the optimizer stepped on this micro-batch.

Speed (``channels_last``, ``compile``): the model's weights in channels-last memory order, and the training
forward compiled with ``torch.compile``; both only change how the same arithmetic runs (the kernels round
differently, so a run's numbers differ slightly from an eager NCHW run of the same seed). Evaluation, EMA,
fusion and checkpoints use the plain module: checkpoints stay interchangeable.

Exact resume: a checkpoint holds model, optimizer, scaler, EMA, hook states, counters and every
rank's torch/numpy/python RNG states, captured after the epoch's last hook; loaders are re-seeded
from (seed, epoch) at each epoch start, so a resumed run replays the same batches and random draws.
"""
from __future__ import annotations

import logging
import random
from contextlib import nullcontext
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from .checkpoint import CheckpointError, load_model_state
from .distributed import DistInfo, all_gather_objects, any_true, wrap_ddp
from .hooks import Hook, ModelEMA
from .logging import MetricLogger

log = logging.getLogger(__name__)

StepFn = Callable[[nn.Module, Any], tuple[torch.Tensor, dict[str, Any]]]


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; training stopped before anything was written for the epoch."""


def accumulate_steps(nominal_batch: int | None, batch_size: int, world_size: int = 1) -> int:
    """Micro-batches per optimizer step: max(round(nominal_batch / (batch_size * world_size)), 1)."""
    if not nominal_batch:
        return 1
    return max(round(nominal_batch / (batch_size * world_size)), 1)


def _epoch_seed(seed: int, epoch: int) -> int:
    # Distinct (seed, epoch) pairs give distinct seeds (seed + epoch would collide across seeds).
    return (seed * 1_000_003 + epoch) % (2 ** 63)


def capture_rng() -> dict:
    """This process's torch (CPU and initialised CUDA), numpy and python RNG states as plain
    tensors/lists/numbers, so the checkpoint loads with ``weights_only=True``."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": list(py_state), "gauss_next": gauss_next},
    }


def restore_rng(state: dict) -> None:
    """Inverse of :func:`capture_rng`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    npy = state["numpy"]
    np.random.set_state(("MT19937", npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"],
                         npy["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))


def compile_for_training(model: nn.Module) -> nn.Module:
    """``torch.compile(model)`` (inductor), compiling with as many threads as the training runs on.

    The wrapper shares the module's parameters; the first steps compile (about a minute for an A0 on one CPU
    thread, seconds once inductor's on-disk cache holds the graphs), and a new input shape compiles again.
    """
    import torch._inductor.config as inductor_config

    # Inductor otherwise starts a pool of compile workers as large as the machine, even for a one-thread run.
    inductor_config.compile_threads = max(1, min(torch.get_num_threads(), inductor_config.compile_threads or 1))
    return torch.compile(model)


class Trainer:
    """Train ``model`` for ``epochs`` epochs over ``train_loader`` with ``step_fn(model, batch) -> (loss, items)``.

    ``model`` must already be on ``device``; it is wrapped in DDP when ``dist`` has several processes
    (``step_fn`` then receives the wrapper). ``amp`` applies on CUDA only (autocast + GradScaler).
    ``meta`` is the plain metadata written into every checkpoint.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, train_loader: Iterable,
                 step_fn: StepFn, *, epochs: int, hooks: Sequence[Hook] = (), device: str | torch.device = "cpu",
                 amp: bool = False, accumulate: int = 1, grad_clip: float | None = None,
                 dist: DistInfo | None = None, seed: int = 0, meta: dict | None = None,
                 logger: MetricLogger | None = None, progress: bool = True, channels_last: bool = False,
                 compile: bool = False):
        if epochs < 1 or accumulate < 1:
            raise ValueError(f"Trainer needs epochs >= 1 and accumulate >= 1; got {epochs}, {accumulate}")
        self.device = torch.device(device)
        self.dist = dist or DistInfo()
        self.unwrapped_model = model
        if channels_last:  # convolutions follow their weight's memory format, so the inputs need no change
            model.to(memory_format=torch.channels_last)
        self.model = wrap_ddp(model, self.device, self.dist)
        # step_fn gets the compiled wrapper; every other use (DDP's no_sync, state, EMA) the module itself.
        self.step_model = compile_for_training(self.model) if compile else self.model
        self.optimizer, self.train_loader, self.step_fn = optimizer, train_loader, step_fn
        self.max_epochs, self.accumulate, self.grad_clip, self.seed = epochs, accumulate, grad_clip, seed
        self.amp = amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        self.meta = dict(meta or {})
        self.logger = logger or MetricLogger(".", enabled=False)
        self.progress = progress and self.dist.is_main
        self.iters_per_epoch = len(train_loader)  # type: ignore[arg-type]
        if self.iters_per_epoch == 0:
            raise ValueError("the train loader yields no batches (fewer samples than one batch with drop_last?)")
        self.epoch = self.start_epoch = self.inner_iter = self.iter = self.optimizer_steps = 0
        self.stepped = False
        self.step_items: dict[str, float] = {}
        self.epoch_items: dict[str, float] = {}
        self.metrics: dict[str, Any] = {}
        self.metrics_epoch: int | None = None
        self.ema: ModelEMA | None = None
        self._pending_rng: list[dict] | None = None
        self.hooks = sorted(hooks, key=lambda h: h.priority)  # stable: equal priorities keep their order
        names = [h.name for h in self.hooks if h.name]
        if len(names) != len(set(names)):
            raise ValueError(f"hook names must be unique (they key the checkpoint's hook states): {names}")
        for hook in self.hooks:
            hook.attach(self)

    # -- accessors ----------------------------------------------------------------------------

    @property
    def eval_model(self) -> nn.Module:
        """The model to evaluate and deploy: the EMA copy if there is one, else the trained model."""
        return self.ema.module if self.ema is not None else self.unwrapped_model

    def current_lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    # -- loop ---------------------------------------------------------------------------------

    def _call(self, event: str) -> None:
        for hook in self.hooks:
            getattr(hook, event)(self)

    def _set_loader_epoch(self, epoch: int) -> None:
        loader = self.train_loader
        samplers = {id(s): s for s in (getattr(loader, "sampler", None),
                                       getattr(getattr(loader, "batch_sampler", None), "sampler", None))}
        dataset = getattr(loader, "dataset", None)
        # Datasets whose augmentation draws from (seed, epoch, index) streams (detection) follow the epoch too.
        for obj in (*samplers.values(), dataset):
            if hasattr(obj, "set_epoch"):
                obj.set_epoch(epoch)
        generator = getattr(loader, "generator", None)
        if isinstance(generator, torch.Generator):  # shuffling and worker seeds of this epoch
            generator.manual_seed(_epoch_seed(self.seed, epoch))

    def train(self) -> None:
        """Run epochs ``start_epoch .. epochs-1``. On an exception hooks get ``on_exception`` and it propagates."""
        try:
            self._call("before_train")
            if self._pending_rng is not None:
                self._restore_rng(self._pending_rng)
                self._pending_rng = None
            for epoch in range(self.start_epoch, self.max_epochs):
                self.epoch = epoch
                self._set_loader_epoch(epoch)
                self._call("before_epoch")
                self._train_epoch()
                self._call("after_epoch")
            self._call("after_train")
        except BaseException as err:
            for hook in self.hooks:
                try:
                    hook.on_exception(self, err)
                except Exception:  # cleanup must not hide the original error
                    log.exception("hook %s failed while handling %r", type(hook).__name__, err)
            raise

    def _train_epoch(self) -> None:
        self.model.train()
        n = self.iters_per_epoch
        sums: dict[str, float] = {}
        bar = tqdm(self.train_loader, total=n, disable=not self.progress, leave=False,
                   desc=f"epoch {self.epoch + 1}/{self.max_epochs}")
        self.optimizer.zero_grad(set_to_none=True)
        for i, batch in enumerate(bar):
            self.inner_iter = i
            self._call("before_step")
            group_start = i - i % self.accumulate
            group_size = min(self.accumulate, n - group_start)  # the epoch's last group may be shorter
            self.stepped = i + 1 == group_start + group_size or i + 1 >= n
            loss, items = self._forward_backward(batch, group_size)
            if self.stepped:
                self._optimizer_step()
            self.iter += 1
            self.step_items = {"loss": float(loss), **{k: float(v) for k, v in items.items()}}
            for key, value in self.step_items.items():
                sums[key] = sums.get(key, 0.0) + value
            self._call("after_step")
            if self.progress:
                bar.set_postfix(loss=f"{self.step_items['loss']:.4f}", lr=f"{self.current_lr():.3g}")
        self.epoch_items = self._mean_over_ranks({k: v / max(i + 1, 1) for k, v in sums.items()})

    def _mean_over_ranks(self, values: dict[str, float]) -> dict[str, float]:
        """Average per-process epoch means over the DDP processes (same keys on every rank)."""
        if not self.dist.distributed or not values:
            return values
        import torch.distributed as tdist

        t = torch.tensor(list(values.values()), dtype=torch.float64, device=self.device)
        tdist.all_reduce(t)
        return {k: float(v) / self.dist.world_size for k, v in zip(values, t.tolist())}

    def _forward_backward(self, batch: Any, group_size: int) -> tuple[torch.Tensor, dict]:
        # Between micro-batches of one accumulation group DDP need not all-reduce gradients.
        sync = self.stepped or not isinstance(self.model, nn.parallel.DistributedDataParallel)
        with nullcontext() if sync else self.model.no_sync():
            with torch.autocast(self.device.type, enabled=self.amp):
                loss, items = self.step_fn(self.step_model, batch)
            self._check_finite(loss, items)
            self.scaler.scale(loss / group_size).backward()
        return loss.detach(), items

    def _check_finite(self, loss: torch.Tensor, items: dict) -> None:
        bad = not bool(torch.isfinite(loss.detach()).all())
        if self.dist.distributed:  # every rank must stop together, or the others hang in all-reduce
            bad = any_true(bad, self.device)
        if bad:
            terms = ", ".join(f"{k}={float(v):.4g}" for k, v in items.items())
            raise NonFiniteLossError(
                f"non-finite loss ({float(loss.detach()):.4g}{'; ' + terms if terms else ''}) at epoch "
                f"{self.epoch + 1}/{self.max_epochs}, iteration {self.inner_iter + 1}/{self.iters_per_epoch} "
                f"(global iteration {self.iter}); training stopped before writing anything for this epoch, "
                "the last checkpoint is the last good one (lower the lr or check the data)")

    def _optimizer_step(self) -> None:
        if self.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.unwrapped_model.parameters(), self.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.optimizer_steps += 1

    # -- checkpoint state ---------------------------------------------------------------------

    def state_dict(self) -> dict:
        """Everything but the model weights that resume needs. Call on every rank (gathers RNG states)."""
        return {
            "epoch": self.epoch,
            "iteration": self.iter,
            "optimizer_steps": self.optimizer_steps,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "hooks": {h.name: h.state_dict() for h in self.hooks if h.name},
            "rng": all_gather_objects(capture_rng()),
        }

    def resume(self, payload: dict, source: str = "checkpoint") -> None:
        """Load a ``last.pt`` payload (from ``load_checkpoint``); training continues after its epoch.

        Raises :class:`CheckpointError` naming ``source`` when it is not a training checkpoint or
        does not fit this model/optimizer.
        """
        missing = [k for k in ("optimizer", "epoch", "iteration", "rng") if k not in payload]
        if missing:
            raise CheckpointError(f"{source} is not a resumable training checkpoint (no {', '.join(missing)}); "
                                  "use it as initial weights instead")
        load_model_state(self.unwrapped_model, payload["model"], source=source)
        try:
            self.optimizer.load_state_dict(payload["optimizer"])
        except (ValueError, KeyError) as err:
            raise CheckpointError(f"{source}: optimizer state does not fit this optimizer: {err}") from err
        if payload.get("scaler"):
            self.scaler.load_state_dict(payload["scaler"])
        self._resume_ema(payload.get("ema"), source)
        hook_states = payload.get("hooks", {})
        for hook in self.hooks:
            if hook.name and hook.name in hook_states:
                hook.load_state_dict(hook_states[hook.name])
        self.start_epoch = int(payload["epoch"]) + 1
        self.iter, self.optimizer_steps = int(payload["iteration"]), int(payload.get("optimizer_steps", 0))
        self._pending_rng = payload["rng"]  # restored at train() start, after before_train hooks
        log.info("resumed from %s: continuing at epoch %d/%d", source, self.start_epoch + 1, self.max_epochs)

    def _resume_ema(self, state: dict | None, source: str) -> None:
        if self.ema is not None and state is None:
            raise CheckpointError(f"{source} has no EMA state but this run uses EMA; resume with the same settings")
        if self.ema is not None:
            self.ema.load_state_dict(state, source=f"{source} (EMA)")
        elif state is not None:
            log.warning("%s has an EMA state but this run has no EMA hook; ignoring it", source)

    def _restore_rng(self, states: list[dict]) -> None:
        if len(states) == self.dist.world_size:
            restore_rng(states[self.dist.rank])
            return
        log.warning("checkpoint has RNG states of %d processes, this run has %d: random draws will differ "
                    "from an uninterrupted run", len(states), self.dist.world_size)
        restore_rng(states[0])
        torch.manual_seed(_epoch_seed(self.seed + self.dist.rank, self.start_epoch))

