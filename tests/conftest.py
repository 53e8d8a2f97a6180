import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

# A tool imports `_bootstrap` from its own folder, as `python tools/x.py` finds it; tests import tools in-process.
TOOLS = str(Path(__file__).resolve().parents[1] / "tools")
if TOOLS not in sys.path:
    sys.path.append(TOOLS)

# Under pytest-xdist (scripts/test.sh runs one worker per core) each worker and the tools it starts get one thread:
# two workers with two OpenMP threads each on two cores oversubscribe, and spin-waiting threads then make small
# ops many times slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


def randomize_bn(model: nn.Module, generator: torch.Generator | None = None) -> nn.Module:
    """Give every BN non-trivial running statistics and affine parameters, so fusion errors show."""
    g = generator or torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                shape = m.running_mean.shape
                m.running_mean.copy_(torch.rand(shape, generator=g) * 2 - 1)
                m.running_var.copy_(torch.rand(shape, generator=g) * 1.5 + 0.1)
                if m.affine:
                    m.weight.copy_(torch.rand(shape, generator=g) * 1.5 + 0.5)
                    m.bias.copy_(torch.rand(shape, generator=g) * 2 - 1)
    return model


@pytest.fixture
def bn_randomizer():
    return randomize_bn


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors gain nothing from threads, and OpenMP spin-waits make each op ~100x slower when
    other jobs share the two cores (measured: 70 ms vs 0.5 ms per small conv)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class Penalised:
    """The real evaluator, except that any model with quantizers loses 5 points: the all-INT8 result
    always misses a 1-point budget, whatever the tiny model does."""

    def __init__(self, inner):
        self.inner, self.metric_name, self.preprocess = inner, inner.metric_name, inner.preprocess

    def evaluate(self, model):
        scores = dict(self.inner.evaluate(model))
        quantized = not isinstance(model, nn.Module) or any("quantizer" in name for name, _ in model.named_modules())
        scores[self.metric_name] -= 5.0 * quantized
        return scores

    def calibration_loader(self):
        return self.inner.calibration_loader()


@pytest.fixture
def penalised(monkeypatch):
    """tools/quantize.py's evaluator as :class:`Penalised`: the budget loop always goes on past the all-INT8 try."""
    from qarep_dense.tasks import quantize_pipeline

    real = quantize_pipeline.task_data

    def task_data(*args, **kwargs):
        data = real(*args, **kwargs)
        data.evaluator = Penalised(data.evaluator)
        return data

    monkeypatch.setattr(quantize_pipeline, "task_data", task_data)
