"""tools/quantize.py's OUT under the ownership rule: a rerun keeps a user's file inside, a failed rerun keeps the
last good result, two runs never share OUT, an unwritable OUT is a one-line error."""
from __future__ import annotations


import pytest
import torch

pytest.importorskip("pytorch_quantization")
pytest.importorskip("onnxruntime")

from support import tool  # noqa: E402

from qarep_dense.data.preprocess import IMAGENET  # noqa: E402
from qarep_dense.data.synthetic.imagefolder import generate_imagefolder  # noqa: E402
from qarep_dense.engine.checkpoint import save_checkpoint  # noqa: E402
from qarep_dense.fileio import claim, sealed  # noqa: E402
from qarep_dense.models import build_classifier  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 16
FAST = ["--calibrators", "max", "--bias-correction", "off", "--calib-batches", "1", "--batch-size", "8",
        "--selection-images", "8", "--int8-only", "--no-progress"]


@pytest.fixture(scope="module")
def done(tmp_path_factory):
    """A checkpoint, its data, and a complete OUT of one quantize run."""
    tmp = tmp_path_factory.mktemp("quantize_own")
    root = generate_imagefolder(tmp / "data", num_classes=3, per_class_train=8, per_class_val=3, size=SIZE)
    torch.manual_seed(0)
    meta = {"task": "cls", "arch": "test", "block": "repvgg", "num_classes": 3, "stem_stride": 1, "fused": False,
            "fold_bn": True, "image_size": SIZE, "preprocess": IMAGENET.as_dict()}
    ckpt = save_checkpoint(tmp / "cls.pt", build_classifier("test", "repvgg", 3, stem_stride=1).state_dict(), meta)
    out = tmp / "q"
    assert tool("quantize")([str(ckpt), "--data", str(root), "--out", str(out), *FAST]) in (0, 1)
    return tmp, root, ckpt, out


def test_a_rerun_keeps_a_users_file_inside_diagnosis(done):
    tmp, root, ckpt, out = done
    notes = out / "diagnosis" / "my_notes.txt"
    notes.write_text("mine")
    assert tool("quantize")([str(ckpt), "--data", str(root), "--out", str(out), *FAST]) in (0, 1)
    assert notes.read_text() == "mine" and (out / "diagnosis" / "report.md").is_file()
    assert sealed(out, "quantize") is not None


def test_a_failed_rerun_leaves_the_last_good_result(done, capsys):
    tmp, root, ckpt, out = done
    before = (out / "report.json").read_bytes()
    truncated = tmp / "truncated.pt"
    truncated.write_bytes(ckpt.read_bytes()[:2000])
    assert tool("quantize")([str(truncated), "--data", str(root), "--out", str(out), *FAST]) == 2
    assert "truncated.pt" in capsys.readouterr().err
    assert (out / "report.json").read_bytes() == before and sealed(out, "quantize") is not None


def test_a_second_run_into_the_same_out_is_refused_while_the_first_holds_it(done, capsys):
    tmp, root, ckpt, out = done
    before = (out / "report.json").read_bytes()
    with claim(out, "quantize", keep=True):  # run A, still running
        assert tool("quantize")([str(ckpt), "--data", str(root), "--out", str(out), *FAST]) == 2
    err = capsys.readouterr().err
    assert "--out " in err and "in use by pid" in err and "Traceback" not in err
    assert (out / "report.json").read_bytes() == before


def test_an_out_that_cannot_be_created_is_a_one_line_error(done, capsys):
    tmp, root, ckpt, _ = done
    blocker = tmp / "a_file"
    blocker.write_text("x")
    for out in (blocker / "q", "/sys/qarep_out"):  # a parent that is a file; a place nobody may write (not even root)
        assert tool("quantize")([str(ckpt), "--data", str(root), "--out", str(out), *FAST]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --out {out}: ") and "Traceback" not in err
    assert blocker.read_text() == "x"


@pytest.mark.slow
def test_the_main_jobs_quantize_stage_keeps_a_users_file_in_diagnosis(tmp_path):
    """The main job's stage (no diagnosis of its own) used to delete OUT/diagnosis/ whole on a rerun."""
    from qarep_dense.demo.stage_jobs import quantize_pipeline

    root = generate_imagefolder(tmp_path / "data", num_classes=3, per_class_train=100, per_class_val=4, size=SIZE)
    meta = {"task": "cls", "arch": "test", "block": "repvgg", "num_classes": 3, "stem_stride": 1, "fused": False,
            "fold_bn": True, "image_size": SIZE, "preprocess": IMAGENET.as_dict()}
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "cls.pt", build_classifier("test", "repvgg", 3, stem_stride=1).state_dict(), meta)
    out = tmp_path / "cls" / "qarepvgg_s0" / "quantize"
    quantize_pipeline(ckpt, root, out)
    notes = out / "diagnosis" / "my_notes.md"
    notes.parent.mkdir()
    notes.write_text("mine")
    quantize_pipeline(ckpt, root, out)
    assert notes.read_text() == "mine" and sealed(out, "quantize") is not None
