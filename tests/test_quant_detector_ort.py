"""Fused YOLOv6 test detector -> PTQ -> QDQ ONNX: every Conv is an integer kernel in onnxruntime.

Also: where output quantizers go (hand-built graphs), the classifier path is unchanged, and a conv
bias int32 cannot hold stays a float conv instead of being saturated by ORT.
"""
import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("pytorch_quantization")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from qarep_dense.data.preprocess import DETECTION, IMAGENET, Preprocess  # noqa: E402
from qarep_dense.layers import reparameterize  # noqa: E402
from qarep_dense.layers.graph_ops import Concat  # noqa: E402
from qarep_dense.models import build_classifier, build_detector  # noqa: E402
from qarep_dense.quant import OrtModule, QuantConfig, check_ort_int8, export_qdq_onnx, quantize_ptq  # noqa: E402
from qarep_dense.quant.backends import get_backend  # noqa: E402
from qarep_dense.quant.swap import (QuantInput, QuantOutput, quant_units, quantize_modules,  # noqa: E402
                                    trace_conv_outputs)
from support import uint8_batches  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 64
# ORT's integer kernels requantize each conv output with their own float arithmetic, and ORT folds
# Q(s1)->DQ->Q(s2)->DQ chains into one finer Q/DQ pair: single grid steps flip and propagate.
# Stated tolerance, per head output: relative L2 error < 1 %, largest difference <= 2 steps of
# that output's quantization grid (measured: 0.17 %, 1.05 steps).
ORT_REL_TOL, ORT_MAX_STEPS = 0.01, 2.0


def calib_batches(n=3, batch=2, seed=0):
    return [images for images, _ in uint8_batches(n, batch, SIZE, seed)]


@pytest.fixture(scope="module")
def fused_detector():
    """Test-scale detector with BN statistics estimated on random images (as a short training run
    would leave them), so activations are O(1) as in a trained model, then fused."""
    torch.manual_seed(0)
    det = build_detector("test", "qarepvgg", 6)
    for m in det.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the batches below
    det.train()
    with torch.no_grad():
        for images in calib_batches(4, 4, seed=1):
            det(DETECTION(images))
    return reparameterize(det.eval()).eval()


@pytest.fixture(scope="module")
def ptq_detector(fused_detector):
    batches = calib_batches()
    qmodel, report = quantize_ptq(fused_detector, batches, DETECTION, QuantConfig(num_calib_batches=3),
                                  progress=False)
    return qmodel, report, batches


def count_modules(model, kind):
    return sum(type(m) is kind for m in model.modules())


def test_every_detector_conv_is_an_integer_kernel_in_ort(fused_detector, ptq_detector, tmp_path):
    qmodel, report, batches = ptq_detector
    x = DETECTION(batches[0])
    path = export_qdq_onnx(qmodel, x, tmp_path / "det.onnx")
    with torch.no_grad():
        reference = qmodel(x)
    check = check_ort_int8(path, x, reference, pre_process=False)
    n_conv, n_deconv = count_modules(fused_detector, nn.Conv2d), count_modules(fused_detector, nn.ConvTranspose2d)
    assert (n_conv, n_deconv) == (34, 2)
    assert check.convs_total == n_conv and check.integer_convs == n_conv and check.float_convs == 0
    assert check.all_convs_integer and check.op_counts["QLinearConv"] == n_conv
    # Honest about the neck's learned upsample: ORT's CPU provider has no integer ConvTranspose.
    assert check.conv_transposes_total == n_deconv and check.float_conv_transposes == n_deconv
    assert check.integer_conv_transposes == 0
    # Both head outputs agree with the fake-quant model within the stated tolerance.
    with torch.no_grad():
        outputs = OrtModule(path)(x)
    for name, ort_out, ref in zip(("cls", "reg"), outputs, reference):
        step = max(v for k, v in report.act_amax.items() if k.endswith(f"{name}_pred.output_quantizer")) / 127
        rel = float((ort_out - ref).norm() / ref.norm())
        assert rel < ORT_REL_TOL, name
        assert float((ort_out - ref).abs().max()) <= ORT_MAX_STEPS * step + 1e-6, name
        # The outputs really are on the int8 grid of their output quantizer (|q| <= 128 steps).
        assert float((ref / step).abs().max()) <= 128 + 1e-3


def test_output_quantizers_go_where_a_conv_output_lacks_one_quantized_reader(fused_detector, ptq_detector):
    qmodel, report, _ = ptq_detector
    wrapped = dict(qmodel.named_modules())
    head = [n for n in report.output_quantized if n.startswith("head.")]
    # 3 levels x (stem, cls, reg before their SiLU + the two prediction convs)
    assert len(head) == 15
    assert all(isinstance(wrapped[n], QuantInput) and isinstance(wrapped[n].module, nn.SiLU)
               for n in head if n.endswith(".act"))
    assert sum(isinstance(wrapped[n], QuantOutput) for n in head) == 6  # cls_pred, reg_pred per level
    # Backbone/neck: convs whose ReLU output fans out (to a concat and a conv, or to a max-pool)
    # get it after the ReLU; the rest are read by exactly one quantizer and get none.
    rest = [n for n in report.output_quantized if not n.startswith("head.")]
    assert rest and all(isinstance(wrapped[n].module, nn.ReLU) for n in rest)
    assert "backbone.stages.3.2.reduce.act" in rest  # SimSPPF: read by the max-pool and the concat
    assert "backbone.stages.0.0.act" not in rest and "backbone.stem.act" not in rest
    # Sensitivity units keep the float model's names (so a ranking works as skip_layers); a wrapped
    # prediction conv is one unit with its input, weight and output quantizers.
    units = quant_units(qmodel, get_backend("pytorch_quantization"))
    float_names = {n for n, _ in fused_detector.named_modules()}
    assert set(units) <= float_names and len(units["head.levels.0.cls_pred"]) == 3


def test_output_quantizer_cost_and_without_it_head_convs_stay_float(fused_detector, ptq_detector, tmp_path):
    qmodel, _, batches = ptq_detector
    plain, plain_report = quantize_ptq(fused_detector, batches, DETECTION,
                                       QuantConfig(num_calib_batches=3, quantize_conv_outputs=False), progress=False)
    assert plain_report.output_quantized == []
    x = DETECTION(calib_batches(1, 4, seed=7)[0])  # held-out images
    with torch.no_grad():
        y, y_plain, y_out = fused_detector(x), plain(x), qmodel(x)
    for ref, a, b in zip(y, y_plain, y_out):
        err_plain, err_out = float((a - ref).norm() / ref.norm()), float((b - ref).norm() / ref.norm())
        assert 0 < err_plain < 0.05 and 0 < err_out < 0.05  # measured: 0.1-0.6 %
    path = export_qdq_onnx(plain, x, tmp_path / "plain.onnx")
    check = check_ort_int8(path, x, pre_process=False)
    assert check.integer_convs < check.convs_total - 15 and not check.all_convs_integer


def test_trace_places_output_quantizers_by_data_flow():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.a_act = nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True)  # fans out
            self.b, self.b_act = nn.Conv2d(4, 4, 1), nn.SiLU(inplace=True)  # SiLU: before it
            self.c, self.c_act = nn.Conv2d(4, 4, 1), nn.ReLU()  # read by one quantizer: nothing
            self.d = nn.Conv2d(8, 2, 1)  # reshaped inside the model: after it
            self.e = nn.Conv2d(4, 2, 1)  # returned as it is: nothing
            self.pool, self.cat = nn.MaxPool2d(3, 1, 1), Concat(1)

        def forward(self, x):
            a = self.a_act(self.a(x))  # read by b's input quantizer and by the (float) max-pool
            b = self.b_act(self.b(a))
            c = self.c_act(self.c(b))  # read by the concat's quantizer only
            return self.d(self.cat([c, self.pool(a)])).flatten(1), self.e(b)

    model = Net().eval()
    backend = get_backend("pytorch_quantization")
    quantize_modules(model, backend, QuantConfig())
    plan = trace_conv_outputs(model, backend, torch.randn(1, 3, 8, 8))
    assert plan == {"a_act": "output", "b_act": "input", "d": "output"}


def test_classifier_gets_no_output_quantizers_and_identical_outputs():
    torch.manual_seed(0)
    fused = reparameterize(build_classifier("test", "qarepvgg", 5, stem_stride=1))
    loader = uint8_batches()
    on, report_on = quantize_ptq(fused, loader, IMAGENET, QuantConfig(), progress=False)
    off, report_off = quantize_ptq(fused, loader, IMAGENET, QuantConfig(quantize_conv_outputs=False), progress=False)
    assert report_on.output_quantized == [] and report_on.act_amax == report_off.act_amax
    assert [n for n, _ in on.named_modules()] == [n for n, _ in off.named_modules()]
    x = IMAGENET(loader[1][0])
    with torch.no_grad():
        assert torch.equal(on(x), off(x))
    with pytest.raises(ValueError, match="quantize_conv_outputs must be True or False"):
        QuantConfig(quantize_conv_outputs="yes")


def test_bias_too_large_for_int32_stays_a_float_conv_and_exact(tmp_path):
    """Tiny inputs (scale ~1e-6) and a bias of 8: round(b / (s_x * s_w)) ~ 7e9 does not fit int32.
    ORT would saturate it inside QLinearConv; the export keeps that conv float."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten()).eval()
    with torch.no_grad():
        model[0].bias.fill_(8.0)
    tiny = Preprocess(std=(1e4, 1e4, 1e4))  # x = u8 / (255 * 1e4) <= 1e-4
    loader = uint8_batches(1, 4, 8)
    qmodel, report = quantize_ptq(model, loader, tiny, QuantConfig(num_calib_batches=1), progress=False)
    assert report.output_quantized == ["1"]  # the input of the Flatten that reads the conv output
    x = tiny(loader[0][0])
    with torch.no_grad():
        reference = qmodel(x)
    check = check_ort_int8(export_qdq_onnx(qmodel, x, tmp_path / "b.onnx"), x, reference, pre_process=False)
    assert check.float_convs == 1 and check.integer_convs == 0 and check.op_counts.get("Add") == 1
    assert check.rel_error < 1e-4
    # Without the ORT rewrites, ORT forms the integer conv and saturates the bias: far off.
    raw = check_ort_int8(export_qdq_onnx(qmodel, x, tmp_path / "raw.onnx", ort_friendly=False), x, reference,
                         pre_process=False)
    assert raw.integer_convs == 1 and raw.rel_error > 0.1


def test_uint8_activation_rewrite_is_exact_on_the_grid(tmp_path):
    """int8 zero point 0 -> uint8 zero point 128 changes no value: compare both exports in ORT with
    graph optimizations off (plain Q/DQ arithmetic, no integer kernels)."""
    from qarep_dense.deploy.ort import make_session

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.Flatten()).eval()
    loader = uint8_batches(1, 4, 8)
    qmodel, _ = quantize_ptq(model, loader, DETECTION, QuantConfig(num_calib_batches=1), progress=False)
    x = DETECTION(loader[0][0]) * 3.0  # beyond the calibrated range: saturation must match too
    outs = []
    for friendly in (False, True):
        path = export_qdq_onnx(qmodel, x, tmp_path / f"u{friendly}.onnx", ort_friendly=friendly)
        graph = onnx.load(str(path)).graph
        u8 = [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")
              and n.input[2] == "activation_zero_point_u8"]
        assert len(u8) == (2 * 3 + 2 if friendly else 0)  # Q+DQ of 3 activation quantizers + the ReLU copy
        session = make_session(path, opt_level="disable")
        outs.append(session.run(None, {"input": x.numpy()})[0])
    np.testing.assert_array_equal(outs[0], outs[1])
    with torch.no_grad():
        np.testing.assert_allclose(outs[1], qmodel(x).numpy(), atol=1e-5)
