"""Generators never write into or delete what they did not write; data given on a command line is never generated."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from qarep_dense.data.digits import export_digits
from qarep_dense.data.export_guard import begin_export, export_is_current, finish_export
from qarep_dense.data.imagefolder import begin_export as begin_export_compat
from qarep_dense.data.synthetic.coco import generate_coco
from qarep_dense.data.synthetic.imagefolder import generate_imagefolder

from support import REPO, tool  # noqa: E402
DET_CONFIG = REPO / "configs" / "det" / "synthetic_test.toml"



def user_coco(root: Path) -> dict[Path, bytes]:
    """A user's COCO-layout folder that happens to use the synthetic export's file names."""
    files = {root / "annotations" / "instances_train.json": b'{"user": "train annotations"}',
             root / "annotations" / "instances_val.json": b'{"user": "val annotations"}',
             root / "images" / "train" / "photo.jpg": b"user image bytes",
             root / "images" / "val" / "photo.jpg": b"user image bytes"}
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return files


def unchanged(files: dict[Path, bytes]) -> bool:
    return all(p.is_file() and p.read_bytes() == data for p, data in files.items())


def test_synthetic_coco_refuses_a_users_folder(tmp_path):
    files = user_coco(tmp_path / "coco")
    with pytest.raises(FileExistsError, match=r"coco/images/train exists but was not written by this exporter"):
        generate_coco(tmp_path / "coco", 2, 2, 64, num_classes=2)
    assert unchanged(files) and not (tmp_path / "coco" / "manifest.json").exists()
    # only the annotation file is there: still refused, by name
    ann = tmp_path / "c2" / "annotations" / "instances_val.json"
    ann.parent.mkdir(parents=True)
    ann.write_bytes(b"{}")
    only_ann = {ann: b"{}"}
    with pytest.raises(FileExistsError, match=r"annotations/instances_val\.json exists but was not written"):
        generate_coco(tmp_path / "c2", 2, 2, 64, num_classes=2)
    assert unchanged(only_ann)


def test_regeneration_removes_only_what_the_generator_wrote(tmp_path):
    root = tmp_path / "syn"
    generate_coco(root, 3, 2, 64, seed=1, num_classes=2)
    mine = {root / "images" / "train2017" / "keep.jpg": b"user", root / "annotations" / "notes.json": b"{}",
            root / "README.txt": b"user notes"}
    for path, data in mine.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    paths = generate_coco(root, 4, 2, 64, seed=2, num_classes=2)  # other settings: regenerate
    assert len(json.loads(paths["train_ann"].read_text())["images"]) == 4
    assert len(list(paths["train_images"].iterdir())) == 4
    assert unchanged(mine)
    # a file planted inside a folder the generator owns goes with that folder (the folder is its own)
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["owned"] == ["images/train", "annotations/instances_train.json", "images/val",
                                 "annotations/instances_val.json"]
    assert manifest["files"] == {"images/train": 4, "annotations/instances_train.json": 1, "images/val": 2,
                                 "annotations/instances_val.json": 1}


def test_a_deleted_owned_file_triggers_regeneration(tmp_path):
    paths = generate_coco(tmp_path / "syn", 2, 2, 64, num_classes=2)
    spec = json.loads((tmp_path / "syn" / "manifest.json").read_text())["spec"]
    assert export_is_current(tmp_path / "syn", spec)
    paths["val_ann"].unlink()
    assert not export_is_current(tmp_path / "syn", spec)
    generate_coco(tmp_path / "syn", 2, 2, 64, num_classes=2)
    assert paths["val_ann"].is_file()


def test_foreign_or_tampered_manifest_is_never_trusted(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "manifest.json").write_text('{"their": "manifest"}')
    with pytest.raises(FileExistsError, match=r"a/manifest\.json exists but was not written by this exporter"):
        generate_imagefolder(tmp_path / "a", per_class_train=1, per_class_val=1)
    assert (tmp_path / "a" / "manifest.json").read_text() == '{"their": "manifest"}'
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(
        {"writer": "qarep-dense export", "version": 2, "spec": {}, "status": "complete", "owned": ["../victim.txt"]}))
    with pytest.raises(ValueError, match=r"invalid owned path '\.\./victim\.txt'"):
        begin_export(tmp_path / "b", {"x": 1}, ("train",))
    assert victim.read_text() == "keep me"


def test_guard_is_shared_and_keeps_its_old_names(tmp_path):
    """The helpers importable from qarep_dense.data.imagefolder are the guard itself (other exporters use them)."""
    assert begin_export_compat is begin_export
    out = tmp_path / "city"
    (out / "leftImg8bit").mkdir(parents=True)
    (out / "leftImg8bit" / "theirs.png").write_bytes(b"x")
    with pytest.raises(FileExistsError, match=r"city/leftImg8bit exists but was not written"):
        begin_export_compat(out, {"v": 1}, ("leftImg8bit", "gtFine"))
    (out / "leftImg8bit" / "theirs.png").unlink()
    (out / "leftImg8bit").rmdir()
    begin_export_compat(out, {"v": 1}, ("leftImg8bit", "gtFine"))
    (out / "leftImg8bit" / "a").mkdir(parents=True)
    (out / "leftImg8bit" / "a" / "1.png").write_bytes(b"x")
    (out / "gtFine").mkdir()
    finish_export(out, {"v": 1}, {"train": 1})
    assert export_is_current(out, {"v": 1}) and not export_is_current(out, {"v": 2})


def test_legacy_manifest_of_our_digits_export_is_recognised(tmp_path):
    """An export made before manifests recorded their paths is still ours: redone once, not refused."""
    out = tmp_path / "digits"
    (out / "train" / "0").mkdir(parents=True)
    (out / "train" / "0" / "old.png").write_bytes(b"old")
    (out / "manifest.json").write_text(json.dumps({"spec": {"dataset": "sklearn-digits"}, "status": "complete",
                                                   "counts": {"train": 1, "val": 0}}))
    (out / "mine.txt").write_text("user file")
    export_digits(out, size=8, seed=0)
    assert not (out / "train" / "0" / "old.png").exists()
    assert len(list((out / "val").rglob("*.png"))) == 360 and (out / "mine.txt").read_text() == "user file"


def test_train_det_with_data_root_at_a_users_folder_refuses(tmp_path, capsys):
    files = user_coco(tmp_path / "coco")
    code = tool("train_det")([str(DET_CONFIG), "--work-dir", str(tmp_path / "run"), "--device", "cpu",
                              "--set", f"data.root={tmp_path / 'coco'}"])
    assert code == 2
    assert "coco/images/train exists but was not written by this exporter" in capsys.readouterr().err
    assert unchanged(files)


@pytest.fixture(scope="module")
def det_checkpoint(tmp_path_factory):
    """A (untrained) detector checkpoint with the synthetic test config recorded, as train_det writes it."""
    from qarep_dense.config import load_config
    from qarep_dense.engine.checkpoint import save_checkpoint
    from qarep_dense.models.detector import build_detector
    from qarep_dense.tasks.detection import DetConfig, det_meta

    tmp = tmp_path_factory.mktemp("det_ckpt")
    cfg = load_config(DET_CONFIG, DetConfig, [f"data.root={tmp / 'generated'}"])
    m = cfg.model
    model = build_detector(m.scale, m.block, m.num_classes, m.use_dfl, m.reg_max, m.head_act)
    meta = det_meta(cfg, list(range(1, m.num_classes + 1)), [f"c{i}" for i in range(m.num_classes)])
    return save_checkpoint(tmp / "det.pt", model.state_dict(), meta)


def test_eval_det_never_generates_into_data_given_on_the_command_line(det_checkpoint, tmp_path, capsys):
    assert tool("eval_det")([str(det_checkpoint), "--data", str(tmp_path / "nowhere")]) == 2
    assert "--data " in (err := capsys.readouterr().err) and "nowhere: folder not found" in err
    assert not (tmp_path / "nowhere").exists()
    files = user_coco(tmp_path / "coco")
    (tmp_path / "coco" / "annotations" / "instances_val.json").unlink()  # a COCO folder of other names
    del files[tmp_path / "coco" / "annotations" / "instances_val.json"]
    assert tool("eval_det")([str(det_checkpoint), "--data", str(tmp_path / "coco")]) == 2
    assert "instances_val.json" in capsys.readouterr().err  # names what is missing instead of generating it
    assert unchanged(files) and not (tmp_path / "coco" / "manifest.json").exists()


def test_ptq_eval_det_with_missing_data_fails(det_checkpoint, tmp_path, capsys):
    pytest.importorskip("pytorch_quantization")
    code = tool("ptq_eval")(["--task", "det", "--checkpoints", str(det_checkpoint), "--data",
                             str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 2 and "nowhere: folder not found" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()
