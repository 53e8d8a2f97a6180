"""QDQ ONNX export and onnxruntime: integer kernels counted, outputs compared to fake quant."""
from functools import partial

import numpy as np
import pytest
import torch

pytest.importorskip("pytorch_quantization")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from qarep_dense.data.preprocess import IMAGENET  # noqa: E402
from qarep_dense.layers import reparameterize  # noqa: E402
from qarep_dense.models import build_classifier  # noqa: E402
from qarep_dense.quant import (OrtModule, QuantConfig, check_ort_int8, export_qdq_onnx,  # noqa: E402
                               ort_quantize_static, quantize_ptq)
from qarep_dense.quant.backends import get_backend  # noqa: E402
from qarep_dense.quant.swap import quantize_modules  # noqa: E402
from support import uint8_batches  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


image_loader = partial(uint8_batches, size=16)


@pytest.fixture(scope="module")
def fused():
    torch.manual_seed(0)
    return reparameterize(build_classifier("test", "qarepvgg", 5, stem_stride=1))


def test_qdq_export_runs_in_ort_with_integer_kernels_and_matches_fake_quant(fused, tmp_path):
    loader = image_loader()
    qmodel, _ = quantize_ptq(fused, loader, IMAGENET, QuantConfig(), progress=False)
    x = IMAGENET(loader[0][0])
    path = export_qdq_onnx(qmodel, x, tmp_path / "q.onnx")
    proto = onnx.load(str(path))
    assert proto.opset_import[0].version >= 13
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("Conv") == 6 and ops.count("QuantizeLinear") >= 2 * 6 + 2  # inputs + weights of convs, fc
    with torch.no_grad():
        reference = qmodel(x)
    report = check_ort_int8(path, x, reference)
    assert report.convs_total == 6 and report.integer_convs == 6 and report.float_convs == 0
    assert report.all_convs_integer and report.op_counts["QLinearConv"] == 6
    assert report.rel_error < 0.01 and report.argmax_agreement >= 7 / 8
    # An ORT-backed module scores like the torch one (evaluators use it for the --ort column).
    with torch.no_grad():
        out = OrtModule(path)(x)
    assert out.shape == reference.shape and float((out - reference).abs().max()) == report.max_abs_diff


def test_w4a8_export_is_exact_through_8bit_qdq(fused, tmp_path):
    loader = image_loader()
    qmodel, _ = quantize_ptq(fused, loader, IMAGENET, QuantConfig(weight_bits=4), progress=False)
    x = IMAGENET(loader[1][0])
    path = export_qdq_onnx(qmodel, x, tmp_path / "w4.onnx")
    with torch.no_grad():
        report = check_ort_int8(path, x, qmodel(x))
    assert report.all_convs_integer and report.rel_error < 1e-3
    assert qmodel.stages[0][0].conv.weight_quantizer.num_bits == 4  # export worked on a copy


def test_ort_static_backend_quantizes_every_conv(fused, tmp_path):
    loader = image_loader()
    path = ort_quantize_static(fused, loader, IMAGENET, tmp_path / "s.onnx", QuantConfig(num_calib_batches=2))
    x = IMAGENET(loader[0][0])
    with torch.no_grad():
        report = check_ort_int8(path, x, fused(x))
    assert report.all_convs_integer and report.integer_convs == 6
    assert report.rel_error < 0.1
    with pytest.raises(ValueError, match="no MSE calibrator|not available in onnxruntime"):
        ort_quantize_static(fused, loader, IMAGENET, tmp_path / "m.onnx", QuantConfig(calibrator="mse"))


def test_export_refuses_uncalibrated_model_and_old_opset(fused, tmp_path):
    import copy

    model = copy.deepcopy(fused)
    quantize_modules(model, get_backend("pytorch_quantization"), QuantConfig())
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(RuntimeError, match="has no amax"):
        export_qdq_onnx(model, x, tmp_path / "u.onnx")
    with pytest.raises(ValueError, match="opset >= 13"):
        export_qdq_onnx(model, x, tmp_path / "u.onnx", opset=11)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        check_ort_int8(tmp_path / "missing.onnx", np.zeros((1, 3, 16, 16), np.float32))
