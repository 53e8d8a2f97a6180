"""tools/ptq_eval.py end to end on a tiny synthetic ImageFolder: numbers come from real evaluation."""
import csv
import json

import pytest
import torch
from torch import nn

pytest.importorskip("pytorch_quantization")
pytest.importorskip("onnxruntime")

from qarep_dense.data.imagefolder import make_cls_loader  # noqa: E402
from qarep_dense.data.preprocess import IMAGENET  # noqa: E402
from qarep_dense.data.synthetic.imagefolder import generate_imagefolder  # noqa: E402
from qarep_dense.engine.checkpoint import CheckpointError, save_checkpoint  # noqa: E402
from qarep_dense.evaluation import evaluate_classifier  # noqa: E402
from qarep_dense.layers import reparameterize  # noqa: E402
from qarep_dense.models import build_classifier  # noqa: E402
from qarep_dense.quant import QuantConfig, quantize_ptq  # noqa: E402
from qarep_dense.tasks import ptq_study  # noqa: E402
from tools import ptq_eval  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 16


def _meta(arch, block, num_classes):
    return {"task": "cls", "arch": arch, "block": block, "num_classes": num_classes, "stem_stride": 1,
            "fused": False, "fold_bn": True, "image_size": SIZE, "preprocess": IMAGENET.as_dict()}


def _train_briefly(model, root, steps=15):
    loader = make_cls_loader(root, SIZE, 8, train=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for step in range(steps):
        for images, labels in loader:
            loss = nn.functional.cross_entropy(model(IMAGENET(images)), labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ptq_eval")
    root = generate_imagefolder(tmp / "data", num_classes=3, per_class_train=8, per_class_val=5, size=SIZE)
    ckpts, models = [], {}
    for block in ("repvgg", "qarepvgg"):
        torch.manual_seed(0)
        model = _train_briefly(build_classifier("test", block, 3, stem_stride=1), root, steps=3)
        ckpts.append(save_checkpoint(tmp / f"{block}.pt", model.state_dict(), _meta("test", block, 3)))
        models[block] = model
    return tmp, root, ckpts, models


def test_ptq_eval_writes_table_from_real_evaluation(setup):
    tmp, root, ckpts, models = setup
    out = tmp / "out"
    rc = ptq_eval.main(["--task", "cls", "--checkpoints", *map(str, ckpts), "--data", str(root),
                        "--calibrator", "max", "percentile", "--calib-batches", "2", "--batch-size", "8",
                        "--ort", "--out", str(out), "--no-progress"])
    assert rc == 0
    payload = json.loads((out / "ptq_table.json").read_text())
    rows = payload["rows"]
    assert [(r["model"], r["calibrator"]) for r in rows] == [
        ("repvgg", "max"), ("repvgg", "percentile"), ("qarepvgg", "max"), ("qarepvgg", "percentile")]
    val = make_cls_loader(root, SIZE, 8, train=False)
    calib = make_cls_loader(root, SIZE, 8, train=False, split="train", shuffle=True)
    for row in rows[:1] + rows[2:3]:
        fused = reparameterize(models[row["block"]])
        assert row["fp32"] == evaluate_classifier(fused, val, IMAGENET)["top1"]
        qmodel, _ = quantize_ptq(fused, calib, IMAGENET, QuantConfig(num_calib_batches=2), progress=False)
        assert row["int8"] == evaluate_classifier(qmodel, val, IMAGENET)["top1"]
        assert row["drop"] == pytest.approx(row["fp32"] - row["int8"])
    for row in rows:
        assert row["ort_all_convs_integer"] and row["ort_integer_convs"] == "6/6"
        assert abs(row["ort_int8"] - row["int8"]) <= 100 / 15 + 1e-9  # at most one of 15 images flips
    table = (out / "ptq_table.md").read_text()
    assert "| model | block | calibrator | FP32 | INT8 | drop | ORT INT8 |" in table
    with open(out / "ptq_table.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    assert len(list((out / "onnx").glob("*_qdq.onnx"))) == 4


def test_bias_correction_flag_is_applied_and_recorded(setup, tmp_path):
    tmp, root, ckpts, models = setup
    out = tmp_path / "bc"
    assert ptq_eval.main(["--task", "cls", "--checkpoints", str(ckpts[0]), "--data", str(root), "--calib-batches", "2",
                          "--batch-size", "8", "--bias-correction", "--out", str(out), "--no-progress"]) == 0
    (row,) = json.loads((out / "ptq_table.json").read_text())["rows"]
    fused = reparameterize(models["repvgg"])
    calib = make_cls_loader(root, SIZE, 8, train=False, split="train", shuffle=True)
    config = QuantConfig(num_calib_batches=2, bias_correction=True)
    qmodel, _ = quantize_ptq(fused, calib, IMAGENET, config, progress=False)
    assert row["int8"] == evaluate_classifier(qmodel, make_cls_loader(root, SIZE, 8, train=False), IMAGENET)["top1"]
    (ptq,) = json.loads((out / "ptq_table.json").read_text())["ptq_reports"].values()
    assert ptq["config"]["bias_correction"] is True and ptq["bias_correction"]["layers"] == len([n for n in ptq["quantized"] if "pool" not in n]) > 0


def test_ptq_eval_refuses_mismatched_checkpoints(setup, capsys):
    tmp, root, ckpts, _ = setup
    other = save_checkpoint(tmp / "a0h.pt", build_classifier("A0h", "qarepvgg", 3, stem_stride=1).state_dict(),
                            _meta("A0h", "qarepvgg", 3))
    args = ["--checkpoints", str(ckpts[0]), str(other), "--data", str(root), "--out", str(tmp / "bad"),
            "--no-progress"]
    assert ptq_eval.main(args) == 2
    err = capsys.readouterr().err
    assert "a0h.pt: checkpoint is of a different network" in err and "arch: 'test' vs 'A0h'" in err
    five = save_checkpoint(tmp / "five.pt", build_classifier("test", "qarepvgg", 5, stem_stride=1).state_dict(),
                           _meta("test", "qarepvgg", 5))
    with pytest.raises(CheckpointError, match="model has 5 classes but .* has 3"):
        args = ptq_eval.parse_args(["--checkpoints", str(five), "--data", str(root), "--no-progress"])
        ptq_study.run_study(ptq_eval.study_of(args))
    assert ptq_eval.main(["--checkpoints", str(tmp / "missing.pt"), "--data", str(root)]) == 2
    assert "checkpoint file not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ptq_eval.parse_args(["--checkpoints", str(ckpts[0]), "--data", str(root), "--calibrator", "kl"])


# --- robustness: nothing lost, nothing silent -----------------------------------------------------------------


def _args(setup, out, *extra):
    tmp, root, ckpts, _ = setup
    return ["--task", "cls", "--checkpoints", str(ckpts[0]), "--data", str(root), "--calib-batches", "1",
            "--batch-size", "8", "--out", str(out), "--no-progress", *extra]


def test_unwritable_out_fails_before_any_work(setup, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")

    def no_work(*args, **kwargs):
        raise AssertionError("evaluation started before --out was checked")

    monkeypatch.setattr(ptq_study, "load_fused", no_work)
    assert ptq_eval.main(_args(setup, blocker / "out")) == 2
    assert "--out " in (err := capsys.readouterr().err) and "cannot write results there" in err
    assert ptq_eval.main(_args(setup, blocker)) == 2  # --out naming an existing file
    assert blocker.read_text() == "not a folder"


def test_rows_are_printed_and_written_as_they_are_computed(setup, tmp_path, monkeypatch, capsys):
    real = ptq_study.evaluate_row
    calls = []

    def fail_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ValueError("simulated failure in the second row")
        return real(*args, **kwargs)

    monkeypatch.setattr(ptq_study, "evaluate_row", fail_second)
    out = tmp_path / "out"
    assert ptq_eval.main(_args(setup, out, "--calibrator", "max", "percentile")) == 2
    printed = capsys.readouterr().out
    assert "[1/2] repvgg max: FP32 " in printed and "INT8 " in printed
    table = json.loads((out / "ptq_table.json").read_text())
    assert [(r["model"], r["calibrator"]) for r in table["rows"]] == [("repvgg", "max")]  # the finished row survived
    assert "| repvgg | repvgg | max |" in (md := (out / "ptq_table.md").read_text())
    # ... and the interrupted table says it is partial, in both the markdown and the json
    assert md.startswith("partial: 1 of 2 rows")
    assert (table["complete"], table["rows_done"], table["rows_total"]) == (False, 1, 2)


def test_a_finished_table_is_not_marked_partial(setup, tmp_path):
    out = tmp_path / "out"
    assert ptq_eval.main(_args(setup, out, "--calibrator", "max", "percentile")) == 0
    table = json.loads((out / "ptq_table.json").read_text())
    assert (table["complete"], table["rows_done"], table["rows_total"]) == (True, 2, 2)
    assert "partial" not in (out / "ptq_table.md").read_text()


def test_reused_out_removes_only_its_own_onnx_files(setup, tmp_path):
    out = tmp_path / "out"
    assert ptq_eval.main(_args(setup, out, "--calibrator", "max", "--ort")) == 0
    assert (out / "onnx" / "repvgg_max_qdq.onnx").is_file()
    (out / "onnx" / "mine.onnx").write_bytes(b"a user's model")
    (out / "notes.md").write_text("a user's notes")
    assert ptq_eval.main(_args(setup, out, "--calibrator", "percentile", "--ort")) == 0
    assert sorted(p.name for p in (out / "onnx").glob("*_qdq.onnx")) == ["repvgg_percentile_qdq.onnx"]
    assert (out / "onnx" / "mine.onnx").read_bytes() == b"a user's model"
    assert (out / "notes.md").read_text() == "a user's notes"
    rows = json.loads((out / "ptq_table.json").read_text())["rows"]
    assert [r["calibrator"] for r in rows] == ["percentile"]


def test_out_without_a_record_is_refused_naming_its_files(setup, tmp_path, capsys):
    """A folder of an early version (no record) or a user's: nothing is replaced, the message says what to do."""
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "ptq_table.md").write_text("someone else's table")
    assert ptq_eval.main(_args(setup, foreign)) == 2
    assert "--out " in (err := capsys.readouterr().err) and "holds files this project did not write (ptq_table.md)" \
        in err and "move them away" in err
    assert (foreign / "ptq_table.md").read_text() == "someone else's table"


def test_same_checkpoint_twice_is_refused(setup, tmp_path, capsys):
    tmp, root, ckpts, _ = setup
    args = ["--checkpoints", str(ckpts[0]), str(ckpts[1]), str(ckpts[0].parent / ".." / ckpts[0].parent.name /
                                                                  ckpts[0].name),
            "--data", str(root), "--out", str(tmp_path / "o"), "--no-progress"]
    assert ptq_eval.main(args) == 2
    assert "repvgg.pt is given twice" in capsys.readouterr().err


def test_labels_stay_distinct_for_same_named_checkpoints(tmp_path):
    paths = [tmp_path / "a" / "x" / "deploy.pt", tmp_path / "b" / "x" / "deploy.pt", tmp_path / "c" / "best.pt"]
    assert ptq_study.model_labels(paths) == ["a/x/deploy", "b/x/deploy", "best"]


def test_checkpoint_of_another_task_is_refused_by_name(setup, tmp_path, capsys):
    from qarep_dense.models.detector import build_detector

    det = save_checkpoint(tmp_path / "det.pt", build_detector("test", "qarepvgg", 3).state_dict(),
                          {"task": "det", "scale": "test", "block": "qarepvgg", "num_classes": 3, "fused": False})
    tmp, root, _, _ = setup
    assert ptq_eval.main(["--task", "cls", "--checkpoints", str(det), "--data", str(root), "--out",
                          str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "det.pt: this is a 'det' (detection) checkpoint, but a cls (classification) checkpoint is expected" in err
