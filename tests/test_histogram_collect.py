"""The histogram calibrators' collect, bounded: the libraries' histogram where they work, no 12-GB blow-up where
they do not (an almost-zero first batch), no division by zero on an all-zero one."""
from __future__ import annotations

import copy

import pytest
import torch

pq_calib = pytest.importorskip("pytorch_quantization.calib")

from qarep_dense.quant.backends import get_backend  # noqa: E402
from qarep_dense.quant.backends.histogram import MAX_HISTOGRAM_BINS, collect_bounded, use_bounded_collect  # noqa: E402


def calibrators():
    """Fresh library calibrators of each installed backend, the way the backends make them."""
    made = [pq_calib.HistogramCalibrator(8, None, False)]
    try:
        from modelopt.torch.quantization import calib as mo_calib
    except ImportError:
        return made
    return made + [mo_calib.HistogramCalibrator(8, None, False)]


@pytest.mark.parametrize("index", [0, 1])
def test_same_histogram_as_the_library_when_it_grows_normally(index):
    found = calibrators()
    if index >= len(found):
        pytest.skip("modelopt is not installed")
    library = found[index]
    ours = copy.deepcopy(library)
    use_bounded_collect(ours, 2048)
    g = torch.Generator().manual_seed(0)
    for scale in (1.0, 3.0, 0.5, 7.5):  # the range grows twice, up to 7.5x the first batch's
        x = torch.randn(4, 8, 16, 16, generator=g) * scale
        library.collect(x)
        ours.collect(x)
    assert torch.equal(ours._calib_hist, library._calib_hist)
    assert torch.equal(ours._calib_bin_edges, library._calib_bin_edges)
    assert ours.compute_amax("percentile", percentile=99.9) == library.compute_amax("percentile", percentile=99.9)


def test_an_almost_zero_first_batch_does_not_explode():
    """The library would ask for 1e10 bins here (40 GB); the bounded histogram merges bins exactly."""
    calibrator = calibrators()[0]
    use_bounded_collect(calibrator, 2048)
    tiny = torch.full((64,), 1e-9)
    tiny[0] = 2e-9
    wide = torch.linspace(0, 40.0, 10_000)
    calibrator.collect(tiny)
    calibrator.collect(wide)
    hist, edges = calibrator._calib_hist, calibrator._calib_bin_edges
    assert hist.numel() <= MAX_HISTOGRAM_BINS and float(edges[-1]) >= 40.0
    assert int(hist.sum()) == tiny.numel() + wide.numel()  # no sample lost in the merge
    assert int(hist[0]) >= tiny.numel()  # the first batch's values stay in the first bin
    amax = float(calibrator.compute_amax("percentile", percentile=99.99))
    assert 39.0 < amax <= float(edges[-1])


def test_an_all_zero_first_batch_is_rebinned_not_divided_by_zero():
    calibrator = calibrators()[0]
    use_bounded_collect(calibrator, 2048)
    calibrator.collect(torch.zeros(100))
    calibrator.collect(torch.linspace(0, 5.0, 1000))
    hist, edges = calibrator._calib_hist, calibrator._calib_bin_edges
    assert int(hist.sum()) == 1100 and int(hist[0]) >= 100
    assert hist.numel() == 2048 and float(edges[-1]) == pytest.approx(5.0)


@pytest.mark.parametrize("name", ["pytorch_quantization", "modelopt"])
def test_every_backend_histogram_quantizer_collects_bounded(name):
    if name == "modelopt":
        pytest.importorskip("modelopt.torch.quantization")
    backend = get_backend(name)
    quantizer = backend.act_quantizer(8, "percentile", 2048)
    assert quantizer._calibrator.collect.__func__ is collect_bounded
    assert quantizer._calibrator._num_bins == 2048
    layer = backend.quant_layer(torch.nn.Conv2d(3, 4, 3), 8, 8, "mse", 1024)
    assert layer.input_quantizer._calibrator.collect.__func__ is collect_bounded
    assert layer.input_quantizer._calibrator._num_bins == 1024
    assert backend.act_quantizer(8, "max", 2048)._calibrator.collect.__func__ is not collect_bounded
