"""Trainer: bit-exact resume, NaN loss, interrupted runs, bad checkpoints (tiny model, CPU)."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from qarep_dense.engine.checkpoint import CheckpointError, load_checkpoint, load_model_state, save_checkpoint
from qarep_dense.engine.hooks import CheckpointHook, EMAHook, EvalHook, Hook, LoggerHook, WarmupCosineLRHook
from qarep_dense.engine.logging import MetricLogger
from qarep_dense.engine.trainer import NonFiniteLossError, Trainer
from qarep_dense.models.classifier import build_classifier

EPOCHS, BATCH, SAMPLES = 3, 4, 24


class NoisyDataset(Dataset):
    """Fixed images plus numpy and python random noise, so resume must restore those RNGs too."""

    def __init__(self):
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(SAMPLES, 3, 8, 8, generator=g)
        self.y = torch.arange(SAMPLES) % 3

    def __len__(self):
        return SAMPLES

    def __getitem__(self, i):
        noise = torch.from_numpy(np.random.normal(0, 0.1, (3, 8, 8)).astype(np.float32)) * random.random()
        return self.x[i] + noise, self.y[i]


def tiny_model(width: int = 4) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(), nn.Dropout(0.2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 3))


class Crash(Hook):
    """Simulates a killed run: raises inside epoch ``epoch`` at batch ``batch``."""

    def __init__(self, epoch: int, batch: int = 2):
        self.epoch, self.batch = epoch, batch

    def after_step(self, trainer):
        if trainer.epoch == self.epoch and trainer.inner_iter == self.batch:
            raise KeyboardInterrupt("simulated kill")


class Snapshot(Hook):
    """Records the trained weights after each epoch's checkpoint."""

    priority = 95

    def __init__(self):
        self.states = {}

    def after_epoch(self, trainer):
        self.states[trainer.epoch] = {k: v.clone() for k, v in trainer.unwrapped_model.state_dict().items()}


def make_trainer(work_dir: Path, extra_hooks=(), model: nn.Module | None = None, nan_at_call: int | None = None,
                 **speed):
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    model = model or tiny_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    loader = DataLoader(NoisyDataset(), batch_size=BATCH, shuffle=True, drop_last=True,
                        generator=torch.Generator())
    calls = {"n": 0}

    def step(m, batch):
        x, y = batch
        calls["n"] += 1
        loss = nn.functional.cross_entropy(m(x + 0.05 * torch.randn_like(x)), y)  # torch RNG in the step too
        if nan_at_call is not None and calls["n"] == nan_at_call:
            loss = loss * float("nan")
        return loss, {"ce": loss.detach()}

    val_x, val_y = NoisyDataset().x[:8], NoisyDataset().y[:8]

    def evaluate(m):
        m.eval()
        with torch.no_grad():
            return {"score": -float(nn.functional.cross_entropy(m(val_x), val_y))}

    hooks = [WarmupCosineLRHook(warmup_epochs=0.5, lrf=0.01), EMAHook(decay=0.9, tau=3.0), EvalHook(evaluate),
             LoggerHook(interval=2), CheckpointHook(work_dir, metric="score"), *extra_hooks]
    return Trainer(model, optimizer, loader, step, epochs=EPOCHS, hooks=hooks, accumulate=2, seed=5,
                   meta={"task": "test"}, logger=MetricLogger(work_dir), progress=False, **speed)


@pytest.fixture
def deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# The main job's speed settings (channels-last weights, a compiled training forward) must resume as exactly.
SPEED = {"eager": {}, "channels_last": {"channels_last": True},
         "compiled": {"channels_last": True, "compile": True}}


@pytest.mark.parametrize("crash_epoch,speed", [(1, "eager"), (2, "eager"), (1, "channels_last"), (2, "compiled")])
def test_resume_after_kill_is_bit_identical(tmp_path, deterministic, crash_epoch, speed):
    full = make_trainer(tmp_path / "full", **SPEED[speed])
    full.train()
    reference = full.unwrapped_model.state_dict()

    run_dir = tmp_path / "interrupted"
    with pytest.raises(KeyboardInterrupt):
        make_trainer(run_dir, [Crash(epoch=crash_epoch)], **SPEED[speed]).train()
    payload = load_checkpoint(run_dir / "last.pt")
    assert payload["epoch"] == crash_epoch - 1
    resumed = make_trainer(run_dir, **SPEED[speed])
    resumed.resume(payload, source="last.pt")
    assert resumed.start_epoch == crash_epoch
    resumed.train()

    final = resumed.unwrapped_model.state_dict()
    assert not states_equal(final, payload["model"])  # it did train after resuming
    assert states_equal(final, reference)
    assert states_equal(resumed.ema.module.state_dict(), full.ema.module.state_dict())
    assert resumed.ema.updates == full.ema.updates == EPOCHS * (SAMPLES // BATCH) // 2
    assert load_checkpoint(run_dir / "last.pt")["epoch"] == EPOCHS - 1
    # the CSV log of the resumed run has each epoch once, as the uninterrupted one
    assert (run_dir / "train.csv").read_text().count("\n") == (tmp_path / "full" / "train.csv").read_text().count("\n")


def test_nan_loss_raises_and_keeps_last_good_checkpoint(tmp_path):
    iters = SAMPLES // BATCH
    trainer = make_trainer(tmp_path, nan_at_call=iters + 2)  # second batch of the second epoch
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan; ce=nan\) at epoch 2/3, iteration 2/6"):
        trainer.train()
    payload = load_checkpoint(tmp_path / "last.pt")
    assert payload["epoch"] == 0
    model = tiny_model()
    load_model_state(model, payload["model"], source="last.pt")
    assert all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point())


def test_kill_mid_epoch_leaves_previous_epochs_checkpoint_intact(tmp_path):
    snap = Snapshot()
    with pytest.raises(KeyboardInterrupt):
        make_trainer(tmp_path, [Crash(epoch=1, batch=3), snap]).train()
    payload = load_checkpoint(tmp_path / "last.pt")
    assert payload["epoch"] == 0 and payload["iteration"] == SAMPLES // BATCH
    assert states_equal(payload["model"], snap.states[0])
    assert not list(tmp_path.glob(".*.tmp"))  # no half-written temporaries left behind


def test_checkpoint_of_another_model_is_a_clear_error(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        make_trainer(tmp_path, [Crash(epoch=1)]).train()
    payload = load_checkpoint(tmp_path / "last.pt")
    wider = make_trainer(tmp_path / "other", model=tiny_model(width=6))
    with pytest.raises(CheckpointError, match=r"last\.pt does not fit the model \(Sequential\): .*shape mismatch"):
        wider.resume(payload, source="last.pt")
    # zoo classifiers of different arch: strict load names missing/unexpected keys
    small = build_classifier("test", "qarepvgg", 6, stem_stride=1)
    with pytest.raises(CheckpointError, match=r"a0h\.pt does not fit the model \(RepClassifier\): \d+ unexpected: .*shape mismatch"):
        load_model_state(small, build_classifier("A0h", "qarepvgg", 6).state_dict(), source="a0h.pt")
    with pytest.raises(CheckpointError, match=r"best\.pt is not a resumable training checkpoint"):
        make_trainer(tmp_path / "x").resume(load_checkpoint(tmp_path / "best.pt"), source="best.pt")


def test_truncated_checkpoint_is_a_clear_error(tmp_path):
    path = save_checkpoint(tmp_path / "last.pt", tiny_model().state_dict(), {"task": "test"})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"last\.pt: cannot read checkpoint \(truncated or corrupt file\?\)"):
        load_checkpoint(path)


def test_speed_settings_change_how_it_runs_not_what_it_trains(tmp_path):
    """channels_last keeps the module (and so every checkpoint) as it was, in another memory order; compile
    trains through a wrapper whose gradients land in the module's own parameters, as eager ones do."""
    import copy

    from qarep_dense.engine.distributed import unwrap_model

    def no_dropout() -> nn.Module:  # compiled dropout draws other masks than eager dropout
        return nn.Sequential(*(m for m in tiny_model() if not isinstance(m, nn.Dropout)))

    model = no_dropout()
    reference = copy.deepcopy(model)
    fast = make_trainer(tmp_path / "fast", model=model, channels_last=True, compile=True)
    conv = fast.unwrapped_model[0].weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert fast.step_model is not fast.model and unwrap_model(fast.step_model) is model
    plain = make_trainer(tmp_path / "plain")
    assert plain.step_model is plain.model

    x, y = NoisyDataset().x[:BATCH], NoisyDataset().y[:BATCH]
    for m in (fast.step_model, reference):
        nn.functional.cross_entropy(m.train()(x), y).backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        assert p.grad is not None and torch.allclose(p.grad, q.grad, atol=1e-6), name

    fast.train()
    saved = load_checkpoint(tmp_path / "fast" / "last.pt")["model"]
    assert saved.keys() == reference.state_dict().keys()
    assert not torch.equal(saved["0.weight"], reference.state_dict()["0.weight"])  # it trained
