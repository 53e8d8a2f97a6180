"""The nvidia-modelopt backend: the same amax and the same fake quant as pytorch-quantization, the engine's
float transforms, bias correction and QAT on top, every conv an integer kernel in ORT, and both backends in
one process (in either order, and past pytorch-quantization's torch.nn patch)."""
import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("pytorch_quantization")
pytest.importorskip("modelopt.torch.quantization")

from qarep_dense.data.preprocess import IMAGENET  # noqa: E402
from qarep_dense.layers import reparameterize  # noqa: E402
from qarep_dense.models import build_classifier  # noqa: E402
from qarep_dense.quant import (QuantConfig, check_ort_int8, export_qdq_onnx, fold_after_qat, prepare_qat,  # noqa: E402
                               qat_finetune, quantize_ptq, rebuild_fakequant)
from qarep_dense.quant.backends import backend_of, get_backend, iter_quantizers  # noqa: E402
from qarep_dense.quant.cle import equalize  # noqa: E402
from support import tool_module, uint8_batches  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
BACKENDS = ("pytorch_quantization", "modelopt")


def fused_model(block: str, bn_randomizer) -> nn.Module:
    torch.manual_seed(0)
    return reparameterize(bn_randomizer(build_classifier("test", block, 10)).eval())


def common_names(state: dict) -> dict:
    """A pytorch-quantization state dict with modelopt's names (its quantizers are ``_input_quantizer``...)."""
    return {re.sub(r"\._(input|weight)_quantizer\b", r".\1_quantizer", k): v for k, v in state.items()}


def ptq(model, batches, backend, **options):
    config = QuantConfig(backend=backend, num_calib_batches=2, **options)
    return quantize_ptq(model, batches, IMAGENET, config, progress=False)


def outputs(model, x):
    with torch.no_grad():
        return model(x)


@pytest.mark.parametrize("calibrator", ["max", "percentile", "mse", "entropy"])
def test_each_calibrator_gives_the_same_amax_per_quantizer(calibrator, bn_randomizer):
    fused, batches = fused_model("repvgg", bn_randomizer), uint8_batches(2, 8, 16)
    stride = {"hist_stride": 8} if calibrator == "entropy" else {}  # the same search, fewer candidates
    (q_pq, r_pq), (q_mo, r_mo) = (ptq(fused, batches, b, calibrator=calibrator, **stride) for b in BACKENDS)
    pq_amax = common_names(r_pq.act_amax)
    assert set(pq_amax) == set(r_mo.act_amax) and len(pq_amax) == 8  # 6 convs, the pool and the fc
    for name, amax in pq_amax.items():
        assert r_mo.act_amax[name] == pytest.approx(amax, rel=1e-6), name
    assert len(set(pq_amax.values())) > 1  # really per quantizer
    weights_pq = [m.weight_quantizer.amax for m in q_pq.modules() if hasattr(m, "weight_quantizer")]
    weights_mo = [m.weight_quantizer.amax for m in q_mo.modules() if hasattr(m, "weight_quantizer")]
    assert len(weights_pq) == len(weights_mo) == 7
    for a, b in zip(weights_pq, weights_mo):
        assert a.shape == b.shape and torch.equal(a, b)


@pytest.mark.parametrize("block", ["repvgg", "qarepvgg"])
def test_same_amax_gives_the_same_fake_quant(block, bn_randomizer):
    """pytorch-quantization's calibrated ranges loaded into a modelopt model: outputs agree to float rounding."""
    fused, batches = fused_model(block, bn_randomizer), uint8_batches(3, 8, 16)
    q_pq, _ = ptq(fused, batches, "pytorch_quantization")
    x = IMAGENET(batches[2][0])
    q_mo = rebuild_fakequant(fused, QuantConfig(backend="modelopt", num_calib_batches=2), x[:1],
                             common_names(q_pq.state_dict()))
    assert backend_of(q_mo).name == "modelopt"
    y_pq, y_mo, y_float = outputs(q_pq, x), outputs(q_mo, x), outputs(fused, x)
    assert float((y_pq - y_float).abs().max()) > 1e-3  # quantization does change the outputs
    assert torch.allclose(y_mo, y_pq, rtol=1e-5, atol=1e-6 * float(y_pq.abs().max()))


def test_repair_cle_and_bias_correction_run_unchanged_on_modelopt(bn_randomizer):
    """The engine's float transforms and bias correction are backend-independent: both backends agree."""
    fused = fused_model("repvgg", bn_randomizer)
    with torch.no_grad():  # a dead stem channel whose slice sets the next conv's weight scales (the repair's case)
        fused.stages[0][0].conv.weight[3] = 0
        fused.stages[0][0].conv.bias[3] = -5.0
        fused.stages[1][0].conv.weight[:, 3] = 40.0
    equalized, _ = equalize(fused)
    batches = uint8_batches(4, 8, 16)
    results = {b: ptq(equalized, batches, b, repair_dead_channels=True, bias_correction=True) for b in BACKENDS}
    (q_pq, r_pq), (q_mo, r_mo) = results["pytorch_quantization"], results["modelopt"]
    assert r_mo.repair.zeroed_channels == r_pq.repair.zeroed_channels > 0
    assert r_mo.bias_correction.layers == r_pq.bias_correction.layers and len(r_mo.bias_correction.layers) == 7
    assert r_mo.bias_correction.max_shift == pytest.approx(r_pq.bias_correction.max_shift, rel=1e-4, abs=1e-7)
    x = IMAGENET(batches[3][0])
    y_pq, y_mo = outputs(q_pq, x), outputs(q_mo, x)
    assert torch.allclose(y_mo, y_pq, rtol=1e-4, atol=1e-5 * float(y_pq.abs().max()))


def test_qat_runs_through_modelopt_fake_quant():
    torch.manual_seed(0)
    qat_form = reparameterize(build_classifier("test", "qarepvgg", 3, stem_stride=1), fold_bn=False)
    data = [(x, torch.randint(0, 3, (x.shape[0],))) for x, _ in uint8_batches(3, 8, 12)]
    qmodel, _ = ptq(qat_form, data, "modelopt")
    before = copy.deepcopy(qmodel.fc.weight.detach())
    prepare_qat(qmodel)  # the backend is read from the model
    history = qat_finetune(qmodel, data, IMAGENET, nn.functional.cross_entropy, epochs=1, warmup_epochs=0, lr=0.05,
                           progress=False)
    assert len(history) == 1 and torch.isfinite(torch.tensor(history)).all()
    assert not torch.equal(before, qmodel.fc.weight)  # gradients reached the weights through modelopt's fake quant
    assert torch.allclose(qmodel.fc.weight_quantizer.amax, qmodel.fc.weight.detach().abs().amax(1, keepdim=True))
    unfolded = copy.deepcopy(qmodel).eval()
    folded = fold_after_qat(qmodel)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = IMAGENET(data[0][0])
    y_unfolded, y_folded = outputs(unfolded, x), outputs(folded, x)
    assert float((y_unfolded - y_folded).norm() / y_unfolded.norm()) < 1e-2


def test_modelopt_export_makes_every_conv_an_integer_kernel(tmp_path, bn_randomizer):
    fused, batches = fused_model("qarepvgg", bn_randomizer), uint8_batches(2, 8, 16)
    qmodel, _ = ptq(fused, batches, "modelopt")
    x = IMAGENET(batches[0][0])
    path = export_qdq_onnx(qmodel, x, tmp_path / "modelopt.onnx")  # the backend is read from the model
    report = check_ort_int8(path, x, outputs(qmodel, x), pre_process=False)
    assert report.convs_total == 6 and report.all_convs_integer, report.op_counts
    assert report.rel_error < 0.05 and report.argmax_agreement >= 0.75


def test_backend_of_refuses_a_float_model_and_names_a_quantized_one(bn_randomizer):
    fused = fused_model("qarepvgg", bn_randomizer)
    with pytest.raises(ValueError, match="cannot tell the model's quantization backend: it has no quantizer"):
        backend_of(fused)
    with pytest.raises(ValueError, match="QuantConfig.backend: unknown backend 'tensorrt'"):
        QuantConfig(backend="tensorrt")
    qmodel, _ = ptq(fused, uint8_batches(2, 8, 16), "modelopt")
    backend = get_backend("modelopt")
    quantizers = dict(iter_quantizers(qmodel, backend))
    # The output quantizer modelopt gives every layer stays off: the engine places its own.
    assert all(not q.is_enabled for n, q in quantizers.items() if n.endswith("output_quantizer"))
    assert sum(q.is_enabled for q in quantizers.values()) == 7 + 8


def test_tools_pass_the_backend_through(tmp_path):
    """--backend on tools/ptq_eval.py and tools/quantize.py reaches QuantConfig.backend; a bad name is refused."""
    ptq_eval, quantize = tool_module("ptq_eval"), tool_module("quantize")
    args = ptq_eval.parse_args(["--checkpoints", "a.pt", "--backend", "modelopt"])
    assert ptq_eval.study_of(args).base.backend == "modelopt"
    assert ptq_eval.study_of(ptq_eval.parse_args(["--checkpoints", "a.pt"])).base.backend == "pytorch_quantization"
    assert quantize.parse_args(["a.pt", "--out", "o", "--backend", "modelopt"]).backend == "modelopt"
    checkpoint = tmp_path / "a.pt"
    checkpoint.write_bytes(b"")
    from qarep_dense.tasks.quantize_pipeline import QuantizeOptions

    with pytest.raises(ValueError, match="QuantConfig.backend: unknown backend 'pytorch-quantization'"):
        QuantizeOptions(checkpoint, None, tmp_path / "out", backend="pytorch-quantization").validate()


_BOTH_ORDERS = r"""
import torch
from qarep_dense.data.preprocess import IMAGENET
from qarep_dense.layers import reparameterize
from qarep_dense.models import build_classifier
from qarep_dense.quant import QuantConfig, quantize_ptq
torch.manual_seed(0)
fused = reparameterize(build_classifier("test", "qarepvgg", 10).eval())
batches = [torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8) for _ in range(2)]
from pytorch_quantization import quant_modules
quant_modules.initialize()  # a user's pytorch-quantization flow patches torch.nn before modelopt is imported
outs = []
for backend in ("modelopt", "pytorch_quantization", "modelopt"):
    q, report = quantize_ptq(fused, batches, IMAGENET, QuantConfig(backend=backend, num_calib_batches=2),
                             progress=False)
    assert len(report.quantized) == 8, (backend, report.quantized)  # 6 convs, the pool, the fc
    with torch.no_grad():
        outs.append(q(IMAGENET(batches[0])))
    if backend == "pytorch_quantization":
        quant_modules.deactivate()
assert torch.nn.Conv2d is torch.nn.modules.conv.Conv2d
gaps = [float((o - outs[0]).abs().max()) for o in outs]
assert all(torch.allclose(o, outs[0], rtol=1e-5, atol=1e-6) for o in outs), gaps
print("ok")
"""


def test_backends_alternate_in_one_process_under_the_torch_nn_patch(bn_randomizer):
    """modelopt, pytorch-quantization, modelopt again, while pytorch-quantization's quant_modules.initialize()
    patches torch.nn (a user's own flow): each quantizes every layer and all three agree."""
    from pytorch_quantization import quant_modules

    fused, batches = fused_model("qarepvgg", bn_randomizer), uint8_batches(2, 8, 16)
    x = IMAGENET(batches[0][0])
    quant_modules.initialize()
    try:
        runs = [ptq(fused, batches, b) for b in ("modelopt", "pytorch_quantization", "modelopt")]
    finally:
        quant_modules.deactivate()
    assert nn.Conv2d is nn.modules.conv.Conv2d
    assert all(len(report.quantized) == 8 for _, report in runs)
    ys = [outputs(q, x) for q, _ in runs]
    assert all(torch.allclose(y, ys[0], rtol=1e-5, atol=1e-6) for y in ys)


@pytest.mark.slow
def test_modelopt_imported_under_the_patch_in_a_fresh_process():
    """A fresh process: modelopt first imported while the patch is active (it would key its registry by the
    patched classes), then pytorch-quantization, then modelopt again."""
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", _BOTH_ORDERS], cwd=root, capture_output=True, text=True,
                          timeout=300, env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(root),
                                            **{k: v for k, v in os.environ.items()
                                               if k not in ("PYTHONPATH", "OMP_NUM_THREADS")}})
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]
