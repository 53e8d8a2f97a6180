"""Hooks and trainer pieces against hand-computed values: schedules, EMA, accumulation, RNG, CSV logs."""
from __future__ import annotations

import csv
import math
import random

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from qarep_dense.engine.hooks import EpochCallbackHook, Hook, ModelEMA, WarmupCosineLRHook, YoloV6LRHook
from qarep_dense.engine.logging import MetricLogger
from qarep_dense.engine.trainer import Trainer, accumulate_steps, capture_rng, restore_rng


class Recorder(Hook):
    """Records every group's lr and momentum at each step, after the schedule hook ran."""

    priority = 15

    def __init__(self):
        self.lrs, self.momenta = [], []

    def before_step(self, trainer):
        self.lrs.append([g["lr"] for g in trainer.optimizer.param_groups])
        self.momenta.append([g.get("momentum") for g in trainer.optimizer.param_groups])


def linear_setup(n: int = 8, batch: int = 2, lr: float = 1.0, groups: bool = False):
    torch.manual_seed(0)
    model = nn.Linear(2, 1)
    params = ([{"params": [model.weight], "name": "decay"}, {"params": [model.bias], "name": "bias"}]
              if groups else model.parameters())
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    x = torch.arange(2 * n, dtype=torch.float32).view(n, 2) / n
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True)), batch_size=batch)

    def step(m, b):
        return nn.functional.mse_loss(m(b[0]), b[1]), {}

    return model, optimizer, loader, step


def test_warmup_cosine_schedule_matches_hand_values():
    model, opt, loader, step = linear_setup(n=10, batch=2, lr=0.5)  # 5 iters/epoch, 2 epochs = 10 iters
    rec = Recorder()
    Trainer(model, opt, loader, step, epochs=2, hooks=[WarmupCosineLRHook(warmup_epochs=0.4, lrf=0.1), rec],
            progress=False).train()
    lrs = [lr[0] for lr in rec.lrs]
    # warm-up W = round(0.4 * 5) = 2 iterations: 0.5 * 1/2, 0.5 * 2/2; then cosine over 8 iterations to 0.05
    expected = [0.25, 0.5] + [0.5 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 8))) for k in range(8)]
    assert lrs == pytest.approx(expected, abs=1e-12)


def test_yolov6_schedule_warmup_momentum_and_bias_lr():
    model, opt, loader, step = linear_setup(n=8, batch=2, lr=0.01, groups=True)  # 4 iters/epoch
    rec = Recorder()
    hook = YoloV6LRHook(lrf=0.01, warmup_epochs=1, warmup_min_iters=6, warmup_momentum=0.8, momentum=0.937,
                        warmup_bias_lr=0.1)
    Trainer(model, opt, loader, step, epochs=3, hooks=[hook, rec], progress=False).train()
    lf = [1 + (0.01 - 1) * (1 - math.cos(e * math.pi / 3)) / 2 for e in range(3)]
    # warm-up = max(1 epoch = 4, 6) = 6 iterations; t = it / 6
    assert rec.lrs[0] == pytest.approx([0.0, 0.1])                      # weights from 0, bias from 0.1
    assert rec.momenta[0] == pytest.approx([0.8, 0.8])
    t = 5 / 6  # iteration 5 is in epoch 1
    assert rec.lrs[5] == pytest.approx([0.01 * lf[1] * t, 0.1 + (0.01 * lf[1] - 0.1) * t])
    assert rec.momenta[5][0] == pytest.approx(0.8 + (0.937 - 0.8) * t)
    assert rec.lrs[6] == pytest.approx([0.01 * lf[1]] * 2) and rec.momenta[6][0] == pytest.approx(0.937)
    assert rec.lrs[11] == pytest.approx([0.01 * lf[2]] * 2)


def test_ema_update_follows_the_decay_formula():
    model = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema = ModelEMA(model, decay=0.9, tau=2.0)
    with torch.no_grad():
        model.weight.fill_(3.0)
    ema.update(model)
    d1 = 0.9 * (1 - math.exp(-1 / 2.0))
    assert ema.module.weight.item() == pytest.approx(d1 * 1.0 + (1 - d1) * 3.0)
    ema.update(model)
    d2 = 0.9 * (1 - math.exp(-2 / 2.0))
    assert ema.module.weight.item() == pytest.approx(d2 * (d1 + (1 - d1) * 3.0) + (1 - d2) * 3.0)
    assert not ema.module.weight.requires_grad and not ema.module.training


@pytest.mark.parametrize("nominal, batch, world, expected", [
    (64, 16, 1, 4), (64, 16, 2, 2), (64, 128, 1, 1), (64, 24, 1, 3), (None, 8, 1, 1)])
def test_accumulate_steps(nominal, batch, world, expected):
    assert accumulate_steps(nominal, batch, world) == expected


def test_gradient_accumulation_equals_the_large_batch():
    def final_weights(batch: int, accumulate: int) -> torch.Tensor:
        model, opt, loader, step = linear_setup(n=12, batch=batch, lr=0.1)
        Trainer(model, opt, loader, step, epochs=2, accumulate=accumulate, progress=False).train()
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    big = final_weights(batch=4, accumulate=1)
    assert torch.allclose(final_weights(batch=2, accumulate=2), big, atol=1e-6)
    # 12 samples in batches of 2 with accumulate 4: groups of 4, 2 micro-batches -> uneven last group
    assert torch.allclose(final_weights(batch=2, accumulate=4), final_weights(batch=2, accumulate=4))
    assert not torch.allclose(final_weights(batch=2, accumulate=1), big, atol=1e-4)


def test_epoch_callback_fires_once_and_after_resume_point():
    model, opt, loader, step = linear_setup()
    fired = []
    hook = EpochCallbackHook(1, lambda t: fired.append(t.epoch), label="mosaic off")
    trainer = Trainer(model, opt, loader, step, epochs=3, hooks=[hook], progress=False)
    trainer.train()
    assert fired == [1]
    late = EpochCallbackHook(1, lambda t: fired.append(("late", t.epoch)))
    trainer = Trainer(model, opt, loader, step, epochs=3, hooks=[late], progress=False)
    trainer.start_epoch = 2  # as after resuming past epoch 1
    trainer.train()
    assert fired[-1] == ("late", 2)


def test_rng_capture_restore_round_trip(tmp_path):
    state = capture_rng()
    torch.save(state, tmp_path / "rng.pt")
    first = (torch.rand(3), np.random.rand(3), random.random(), np.random.normal())
    restore_rng(torch.load(tmp_path / "rng.pt", weights_only=True))
    second = (torch.rand(3), np.random.rand(3), random.random(), np.random.normal())
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert first[2:] == second[2:]


def test_metric_logger_widens_header_and_truncates(tmp_path):
    logger = MetricLogger(tmp_path)
    logger.log("train", 1, {"loss": torch.tensor(0.5)})
    logger.log("train", 2, {"loss": 0.25, "l2": 0.125})
    logger.log("train", 3, {"loss": 0.2})
    logger.truncate("train", 2)
    with (tmp_path / "train.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert rows == [{"step": "1", "loss": "0.5", "l2": ""}, {"step": "2", "loss": "0.25", "l2": "0.125"}]
    MetricLogger(tmp_path / "off", enabled=False).log("train", 1, {"x": 1})
    assert not (tmp_path / "off").exists()


def test_trainer_rejects_empty_loader_and_duplicate_hook_names():
    model, opt, _, step = linear_setup()
    with pytest.raises(ValueError, match=r"train loader yields no batches"):
        Trainer(model, opt, [], step, epochs=1)

    class Named(Hook):
        name = "same"

    with pytest.raises(ValueError, match=r"hook names must be unique"):
        Trainer(model, opt, [1], step, epochs=1, hooks=[Named(), Named()])
