"""onnxruntime INT8 kernel choice per machine: CPU features, the check against fake quant, forced modes."""
import json

import numpy as np
import pytest
import torch

pytest.importorskip("pytorch_quantization")
pytest.importorskip("onnxruntime")

from qarep_dense.data.preprocess import IMAGENET  # noqa: E402
from qarep_dense.deploy import ort as ort_mod  # noqa: E402
from qarep_dense.deploy.ort import choose_int8_kernels, cpu_int8_features, kernels_agree  # noqa: E402
from qarep_dense.layers import reparameterize  # noqa: E402
from qarep_dense.models import build_classifier  # noqa: E402
from qarep_dense.quant import QuantConfig, check_ort_int8, export_qdq_onnx, quantize_ptq  # noqa: E402
from support import uint8_batches  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

NO_VNNI = {"machine": "x86_64", "x86": True, "vnni_flags": [], "vnni": False}
VNNI = {"machine": "x86_64", "x86": True, "vnni_flags": ["avx512_vnni"], "vnni": True}
ARM = {"machine": "aarch64", "x86": False, "vnni_flags": [], "vnni": False}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(QDQ path, preprocessed batch, fake-quant outputs on it) of a tiny fused classifier."""
    torch.manual_seed(0)
    fused = reparameterize(build_classifier("test", "qarepvgg", 5, stem_stride=1))
    loader = uint8_batches(2, 8, 16)
    qmodel, _ = quantize_ptq(fused, loader, IMAGENET, QuantConfig(num_calib_batches=2), progress=False)
    x = IMAGENET(loader[0][0])
    path = export_qdq_onnx(qmodel, x, tmp_path_factory.mktemp("kernels") / "q.onnx")
    with torch.no_grad():
        return path, x, qmodel(x)


def test_cpu_features_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert cpu_int8_features(info, "x86_64") == NO_VNNI
    info.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni amx_int8\n")
    assert cpu_int8_features(info, "x86_64")["vnni_flags"] == ["avx512_vnni", "amx_int8"]
    assert cpu_int8_features(info, "aarch64") == ARM  # flags are x86 flags: not read elsewhere


def test_without_vnni_the_precise_kernels_are_chosen_without_running_anything(exported, monkeypatch):
    path, x, ref = exported

    def no_session(*args, **kwargs):
        raise AssertionError("no session may be built when the CPU features decide")

    monkeypatch.setattr(ort_mod, "make_session", no_session)
    choice = choose_int8_kernels(path, x, ref, features=NO_VNNI)
    assert choice.kernels == "precise" and choice.precise and "without VNNI" in choice.reason
    assert choice.default_rel_error is None
    assert choose_int8_kernels(path, features=VNNI).kernels == "default"  # no batch: features alone
    assert choose_int8_kernels(path, x, ref, mode="default", features=NO_VNNI).kernels == "default"  # forced
    assert choose_int8_kernels(path, x, ref, mode="precise", features=VNNI).reason.startswith("forced")
    with pytest.raises(ValueError, match="mode must be one of"):
        choose_int8_kernels(path, mode="fast")


@pytest.mark.parametrize("features", [VNNI, ARM])
def test_default_kernels_are_checked_against_fake_quant_and_chosen_when_they_agree(exported, features):
    """Features that do not decide alone (VNNI, not x86): both kernel sets run on the batch, and this machine's
    real default kernels decide. They are exact on a CPU with VNNI and on ARM; on x86 without VNNI (the simulated
    flag then lies) they saturate on this model, and the check must refuse them."""
    path, x, ref = exported
    choice = choose_int8_kernels(path, x, ref, features=features)
    assert choice.precise_rel_error < 0.01 and choice.default_rel_error is not None
    real = cpu_int8_features()
    if real["x86"] and not real["vnni"]:
        assert choice.kernels == "precise" and "disagree" in choice.reason
        assert not kernels_agree(choice.default_rel_error, choice.precise_rel_error)
    else:
        assert choice.kernels == "default" and "agree" in choice.reason and choice.default_rel_error < 0.01


def test_default_kernels_that_disagree_with_fake_quant_are_refused(exported, monkeypatch):
    """Simulate the saturating U8S8 kernels of a CPU without VNNI behind a VNNI flag: the check against
    fake quant must catch them."""
    path, x, ref = exported
    real = ort_mod.make_session

    class Saturating:
        def __init__(self, session):
            self.session = session

        def run(self, names, feeds):
            return [np.clip(o, -0.5 * np.abs(o).max(), 0.5 * np.abs(o).max()) for o in self.session.run(names, feeds)]

    def fake(onnx_path, threads=2, opt_level="all", optimized_path=None, precise_int8=True):
        session = real(onnx_path, threads, opt_level, optimized_path, precise_int8)
        return session if precise_int8 else Saturating(session)

    monkeypatch.setattr(ort_mod, "make_session", fake)
    choice = choose_int8_kernels(path, x, ref, features=VNNI)
    assert choice.kernels == "precise" and "disagree" in choice.reason
    assert choice.default_rel_error > 10 * choice.precise_rel_error


def test_agreement_rule_by_hand():
    assert kernels_agree(0.0, 0.0) and kernels_agree(0.0015, 0.0) and kernels_agree(0.012, 0.01)
    assert not kernels_agree(0.08, 0.001) and not kernels_agree(0.003, 0.0)


def test_check_ort_int8_reports_the_kernels_that_ran(exported):
    path, x, ref = exported
    forced = check_ort_int8(path, x, ref, precision="precise")
    assert forced.kernels == "precise" and forced.rel_error < 0.01
    auto = check_ort_int8(path, x, ref)
    expected = "precise" if cpu_int8_features()["x86"] and not cpu_int8_features()["vnni"] else "default"
    assert auto.kernels == expected and auto.kernel_reason


def test_ptq_eval_ort_precision_column(tmp_path):
    from qarep_dense.data.synthetic.imagefolder import generate_imagefolder
    from qarep_dense.engine.checkpoint import save_checkpoint
    from tools import ptq_eval

    root = generate_imagefolder(tmp_path / "data", num_classes=3, per_class_train=4, per_class_val=2, size=16)
    meta = {"task": "cls", "arch": "test", "block": "qarepvgg", "num_classes": 3, "stem_stride": 1, "fused": False,
            "fold_bn": True, "image_size": 16, "preprocess": IMAGENET.as_dict()}
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "m.pt", build_classifier("test", "qarepvgg", 3, stem_stride=1).state_dict(), meta)
    out = tmp_path / "out"
    assert ptq_eval.main(["--checkpoints", str(ckpt), "--data", str(root), "--calib-batches", "1", "--batch-size", "6",
                          "--ort", "--ort-precision", "precise", "--repair", "--out", str(out), "--no-progress"]) == 0
    payload = json.loads((out / "ptq_table.json").read_text())
    row = payload["rows"][0]
    assert row["ort_kernels"] == "precise" and row["ort_kernel_reason"].startswith("forced")
    # --repair: checked on one held-out batch (12 train images = calibration batch + held-out batch of 6).
    repair = payload["ptq_reports"]["m/max"]["repair"]
    assert repair["calib_images"] == 6 and repair["heldout_images"] == 6 and repair["heldout_max_abs_diff"] == 0.0
    assert row["repaired_channels"] == repair["zeroed_channels"]
    assert "| ORT kernels |" in (out / "ptq_table.md").read_text()
    with pytest.raises(SystemExit):
        ptq_eval.parse_args(["--checkpoints", str(ckpt), "--ort-precision", "fast"])
