"""Generators never write into or delete what they did not write; data given on a command line is never generated."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from qarep_dense.data.digits import export_digits
from qarep_dense.fileio import RECORD, sealed
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
    with pytest.raises(FileExistsError, match=r"coco: holds files this project did not write \(annotations/"):
        generate_coco(tmp_path / "coco", 2, 2, 64, num_classes=2)
    assert unchanged(files) and not (tmp_path / "coco" / RECORD).exists()
    # only the annotation file is there: still refused, by name
    ann = tmp_path / "c2" / "annotations" / "instances_val.json"
    ann.parent.mkdir(parents=True)
    ann.write_bytes(b"{}")
    only_ann = {ann: b"{}"}
    with pytest.raises(FileExistsError, match=r"did not write \(annotations/instances_val\.json\)"):
        generate_coco(tmp_path / "c2", 2, 2, 64, num_classes=2)
    assert unchanged(only_ann)


def test_regeneration_removes_only_what_the_generator_wrote(tmp_path):
    """A damaged export (one of its images deleted) is generated again; the user's files beside and inside it
    stay, and stay the user's."""
    root = tmp_path / "syn"
    paths = generate_coco(root, 3, 2, 64, seed=1, num_classes=2)
    mine = {root / "images" / "train" / "keep.jpg": b"user", root / "annotations" / "notes.json": b"{}",
            root / "README.txt": b"user notes"}
    for path, data in mine.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (paths["train_images"] / "000002.jpg").unlink()
    generate_coco(root, 3, 2, 64, seed=1, num_classes=2)
    assert sorted(p.name for p in paths["train_images"].iterdir()) == [*(f"{i:06d}.jpg" for i in range(1, 4)),
                                                                      "keep.jpg"]
    assert unchanged(mine)  # a file planted inside a folder the generator writes stays, and stays the user's
    record = json.loads((root / RECORD).read_text())
    assert "images/train/keep.jpg" not in record["files"] and "images/train/keep.jpg" in record["foreign"]
    assert record["info"]["counts"] == {"train": 3, "val": 2}


@pytest.mark.parametrize("generator", ["digits", "coco", "shapes"])
def test_a_complete_export_is_never_regenerated_in_place_with_other_settings(tmp_path, generator):
    """Another run may be reading it (a training at another image size on the same data root would read the new
    images, resized to its own size, without a word): refused, naming the settings that differ; nothing changes."""
    root = tmp_path / "data"
    first, other, changed = {
        "digits": (lambda: export_digits(root, size=24), lambda: export_digits(root, size=20), r"size 24 -> 20"),
        "coco": (lambda: generate_coco(root, 2, 1, 64, num_classes=2),
                 lambda: generate_coco(root, 2, 1, 64, seed=3, num_classes=2), r"seed 0 -> 3"),
        "shapes": (lambda: generate_imagefolder(root, num_classes=2, per_class_train=2, per_class_val=1, size=16),
                   lambda: generate_imagefolder(root, num_classes=2, per_class_train=2, per_class_val=1, size=24),
                   r"size 16 -> 24"),
    }[generator]
    first()
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match=rf"data: holds .* data generated with other settings \({changed}\); "
                                              r"regenerating it in place would change the files under any run "
                                              r"reading them"):
        other()
    assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()} == before
    first()  # its own settings: reused as before


def test_a_deleted_or_edited_file_triggers_regeneration(tmp_path):
    paths = generate_coco(tmp_path / "syn", 2, 2, 64, num_classes=2)
    spec = json.loads((tmp_path / "syn" / RECORD).read_text())["spec"]
    assert sealed(tmp_path / "syn", "synthetic-coco", spec)
    paths["val_ann"].unlink()
    assert not sealed(tmp_path / "syn", "synthetic-coco", spec)
    generate_coco(tmp_path / "syn", 2, 2, 64, num_classes=2)
    assert paths["val_ann"].is_file() and sealed(tmp_path / "syn", "synthetic-coco", spec)


def test_foreign_record_is_never_trusted(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / RECORD).write_text('{"their": "record"}')
    with pytest.raises(FileExistsError, match=r"a: \.written\.json exists but was not written by this project"):
        generate_imagefolder(tmp_path / "a", per_class_train=1, per_class_val=1)
    assert (tmp_path / "a" / RECORD).read_text() == '{"their": "record"}'


def test_regenerating_a_damaged_export_keeps_a_users_image_in_a_split(tmp_path):
    """A user's image inside train/<class>/ of a generated dataset survives a regeneration (it used to go
    with the whole split folder)."""
    out = generate_imagefolder(tmp_path / "syn", num_classes=2, per_class_train=2, per_class_val=1, size=16)
    photo = out / "train" / "circle" / "user_added_photo.png"
    photo.write_bytes(b"user photo")
    generated = sorted((out / "train" / "circle").glob("0*.png"))
    generated[0].unlink()
    generate_imagefolder(out, num_classes=2, per_class_train=2, per_class_val=1, size=16)
    assert photo.read_bytes() == b"user photo"
    assert sorted((out / "train" / "circle").glob("0*.png")) == generated


def test_another_generator_refuses_a_generated_dataset_of_another_kind(tmp_path):
    """Street scenes are never generated into (and the split folders never removed from) a shapes dataset."""
    out = generate_imagefolder(tmp_path / "syn", num_classes=2, per_class_train=1, per_class_val=1, size=16)
    before = sorted(p for p in out.rglob("*"))
    from qarep_dense.data.synthetic.cityscapes import generate_cityscapes

    with pytest.raises(FileExistsError, match=r"syn: holds the output of 'synthetic-shapes', not of "
                                              r"'synthetic-cityscapes'"):
        generate_cityscapes(out, 1, 1, (32, 32))
    assert sorted(p for p in out.rglob("*")) == before


def test_legacy_manifest_of_our_digits_export_is_adopted_or_refused(tmp_path):
    """An export of the earlier manifest format is ours when its files are exactly what it recorded."""
    out = tmp_path / "digits"
    (out / "train" / "0").mkdir(parents=True)
    (out / "train" / "0" / "old.png").write_bytes(b"old")
    legacy = {"writer": "qarep-dense export", "version": 2, "spec": {"dataset": "sklearn-digits"},
              "status": "complete", "owned": ["train", "val"], "files": {"train": 1, "val": 0}}
    (out / "manifest.json").write_text(json.dumps(legacy))
    (out / "mine.txt").write_text("user file")
    (out / "train" / "0" / "added.png").write_bytes(b"user")
    with pytest.raises(FileExistsError, match=r"no longer holds exactly the 1 files it wrote there: move the files"):
        export_digits(out, size=8, seed=0)
    (out / "train" / "0" / "added.png").unlink()
    export_digits(out, size=8, seed=0)
    assert not (out / "train" / "0" / "old.png").exists() and not (out / "manifest.json").exists()
    assert len(list((out / "val").rglob("*.png"))) == 360 and (out / "mine.txt").read_text() == "user file"


def test_train_det_with_data_root_at_a_users_folder_refuses(tmp_path, capsys):
    files = user_coco(tmp_path / "coco")
    code = tool("train_det")([str(DET_CONFIG), "--work-dir", str(tmp_path / "run"), "--device", "cpu",
                              "--set", f"data.root={tmp_path / 'coco'}"])
    assert code == 2
    assert "coco: holds files this project did not write" in capsys.readouterr().err
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
    assert unchanged(files) and not (tmp_path / "coco" / RECORD).exists()


def test_ptq_eval_det_with_missing_data_fails(det_checkpoint, tmp_path, capsys):
    pytest.importorskip("pytorch_quantization")
    code = tool("ptq_eval")(["--task", "det", "--checkpoints", str(det_checkpoint), "--data",
                             str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 2 and "nowhere: folder not found" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()
