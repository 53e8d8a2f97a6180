"""Empirical bias correction: after it, every quantized layer's mean output on the calibration images is
the float model's, wrappers included; the pipeline's shortcut gives the same model as quantize_ptq."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from torch import nn

pytest.importorskip("pytorch_quantization")

from qarep_dense.data.preprocess import Preprocess  # noqa: E402
from qarep_dense.quant.backends import get_backend  # noqa: E402
from qarep_dense.quant.bias_correction import _float_name, correct_bias  # noqa: E402
from qarep_dense.quant.config import QuantConfig  # noqa: E402
from qarep_dense.quant.ptq import quantize_ptq  # noqa: E402
from qarep_dense.quant.search import CandidateSpec, SearchData, run_search  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
PRE = Preprocess(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


class _Chain(nn.Module):
    """conv -> ReLU -> conv -> SiLU -> conv -> pool -> fc. The SiLU gives the second conv an output
    quantizer of its own (a wrapper), so name mapping through wrappers is exercised too."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 6, 1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        x = nn.functional.silu(self.c2(torch.relu(self.c1(x))))
        x = torch.relu(self.c3(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _batches(n: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (8, 3, 10, 10), dtype=torch.uint8, generator=g) for _ in range(n)]


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = _Chain().eval()
    with torch.no_grad():  # a few large weights: coarse per-channel scales, so the quantization error has a mean
        model.c2.weight[:, :, 1, 1] *= 12.0
        model.c1.bias.fill_(0.3)
    return model


def _means(model: nn.Module, names: list[str], batches) -> dict[str, torch.Tensor]:
    sums, counts = {}, {}

    def hook(name):
        def fn(module, inputs, out):
            dims = [d for d in range(out.dim()) if d != 1]
            sums[name] = sums.get(name, 0) + out.double().sum(dims)
            counts[name] = counts.get(name, 0) + out.numel() // out.shape[1]
        return fn

    handles = [model.get_submodule(n).register_forward_hook(hook(n)) for n in names]
    with torch.no_grad():
        for b in batches:
            model(PRE(b))
    for h in handles:
        h.remove()
    return {n: sums[n] / counts[n] for n in names}


def test_every_quantized_layer_gets_the_float_mean_output_on_the_calibration_images():
    model, calib = _model(), _batches(3, 0)
    config = QuantConfig(calibrator="max", num_calib_batches=3, weight_bits=4)  # 4 bit: a clear mean error
    qmodel, _ = quantize_ptq(model, calib, PRE, config, progress=False)
    backend = get_backend(config.backend)
    qnames = [n for n, m in qmodel.named_modules() if backend.is_quant_layer(m)]
    fnames = [_float_name(qmodel, n) for n in qnames]
    assert fnames == ["c1", "c2", "c3", "fc"] and "c2.module" in qnames  # c2 is wrapped by its output quantizer
    reference = _means(model, fnames, calib)
    before = _means(qmodel, qnames, calib)
    gap_before = max(float((before[q] - reference[f]).abs().max()) for q, f in zip(qnames, fnames))
    report = correct_bias(qmodel, model, calib, PRE)
    after = _means(qmodel, qnames, calib)
    gap_after = max(float((after[q] - reference[f]).abs().max()) for q, f in zip(qnames, fnames))
    assert report.layers == fnames
    assert gap_before > 1e-2  # there was something to correct
    assert gap_after < 1e-4 * max(float(r.abs().max()) for r in reference.values())


def test_bias_correction_brings_held_out_outputs_closer_to_float():
    model, calib, held_out = _model(), _batches(4, 0), _batches(2, 1)
    config = QuantConfig(calibrator="max", num_calib_batches=4, weight_bits=4)
    plain, _ = quantize_ptq(model, calib, PRE, config, progress=False)
    corrected, report = quantize_ptq(model, calib, PRE, replace(config, bias_correction=True), progress=False)
    with torch.no_grad():
        ref = torch.cat([model(PRE(b)) for b in held_out])
        err = {name: float(((torch.cat([m(PRE(b)) for b in held_out]) - ref) ** 2).mean())
               for name, m in (("plain", plain), ("corrected", corrected))}
    assert report.bias_correction is not None and report.as_dict()["bias_correction"]["layers"] == 4
    assert err["corrected"] < 0.8 * err["plain"]


def test_search_shortcut_equals_quantize_ptq_with_bias_correction():
    """run_search corrects a copy of the uncorrected twin; quantize_ptq (which the ORT check and the partial
    ladder re-run from the config) calibrates again and corrects: the same model either way."""
    model = _model()
    calib, heldout, selection = _batches(2, 0), _batches(1, 1), _batches(2, 2)
    specs = [CandidateSpec("percentile", "none"), CandidateSpec("percentile", "none", bias_correction=True)]
    results, models, _ = run_search(model, SearchData(calib, heldout, selection), PRE, specs, classification=True,
                                    progress=False)
    assert [r.spec.name for r in results] == ["percentile", "percentile+bc"]
    config = QuantConfig(calibrator="percentile", num_calib_batches=2, bias_correction=True)
    direct, _ = quantize_ptq(model, calib, PRE, config, progress=False)
    x = PRE(selection[0])
    with torch.no_grad():
        assert torch.equal(models["percentile+bc"](x), direct(x))
        assert not torch.equal(models["percentile"](x), direct(x))


def test_config_rejects_a_non_bool_bias_correction():
    with pytest.raises(ValueError, match="bias_correction"):
        QuantConfig(bias_correction="yes")


def test_rebuild_fakequant_restores_the_calibrated_model_from_its_state_dict():
    """Output-quantizer wrappers, corrected biases and calibrated ranges come back from the state dict alone;
    a quantizer whose range is absent (one that saw no calibration data) is left off, as calibration leaves it."""
    from qarep_dense.quant.ptq import rebuild_fakequant

    model, calib = _model(), _batches(2, 0)
    config = QuantConfig(calibrator="percentile", num_calib_batches=2, bias_correction=True)
    qmodel, _ = quantize_ptq(model, calib, PRE, config, progress=False)
    state = {k: v.clone() for k, v in qmodel.state_dict().items()}
    example = torch.zeros(1, 3, 10, 10)
    rebuilt = rebuild_fakequant(model, config, example, state)
    x = PRE(_batches(1, 3)[0])
    with torch.no_grad():
        assert torch.equal(rebuilt(x), qmodel(x))
        fresh = rebuild_fakequant(model, replace(config, bias_correction=False), example,
                                  {k: v for k, v in state.items() if "c2.output_quantizer" not in k})
    assert fresh.c2.output_quantizer._disabled and not qmodel.c2.output_quantizer._disabled
