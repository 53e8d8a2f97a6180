"""The mmengine path (tools/train_seg.py, tools/eval_seg.py): nothing lost, nothing silent, errors that name
the file and the problem. Most cases fail before any training; one 2-iteration run supplies checkpoints."""
from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from support import tool_module

mm = pytest.importorskip("qarep_dense.integrations.mmseg")
ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")  # OpenMP spin-waits crawl on shared cores
CONFIG = ROOT / "configs" / "seg" / "fcn_qarepvgg-test_1xb2-2it_synthetic-cityscapes-64x128.py"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 2-iteration run: (work dir, data root)."""
    base = tmp_path_factory.mktemp("segrob")
    work, data = base / "run", base / "data"
    data.mkdir()
    assert tool_module("train_seg").main([str(CONFIG), "--work-dir", str(work), "--data-root", str(data),
                                    "--no-progress"]) == 0
    return work, data


def _train(args: list[str], capsys) -> tuple[int, str]:
    code = tool_module("train_seg").main([str(CONFIG), *args, "--no-progress"])
    return code, capsys.readouterr().err


# --- data loss ------------------------------------------------------------------------------------

def test_resume_from_a_copied_checkpoint_continues_and_keeps_it(run, tmp_path, capsys):
    """A folder holding iter_2.pth but no last_checkpoint: resume at iteration 2, never overwrite iter_2.pth."""
    work, data = run
    copied = tmp_path / "copied"
    copied.mkdir()
    shutil.copy(work / "iter_2.pth", copied / "iter_2.pth")
    before = (copied / "iter_2.pth").read_bytes()
    code, err = _train(["--work-dir", str(copied), "--data-root", str(data), "--resume",
                        "--cfg-options", "train_cfg.max_iters=3"], capsys)
    assert code == 0, err
    results = json.loads((copied / "results.json").read_text())
    assert (results["start_iter"], results["end_iter"]) == (2, 3)
    assert (copied / "iter_2.pth").read_bytes() == before


def test_resume_in_a_folder_without_checkpoints_is_refused(tmp_path, capsys):
    code, err = _train(["--work-dir", str(tmp_path), "--resume"], capsys)
    assert code == 2 and f"nothing to resume in {tmp_path}" in err
    assert not any(tmp_path.iterdir())


def test_save_deploy_never_overwrites_and_refuses_a_folder_before_evaluating(tmp_path, capsys):
    eval_seg = tool_module("eval_seg")
    existing = tmp_path / "mine.pt"
    existing.write_bytes(b"user data")
    missing_ckpt = str(tmp_path / "no_such.pt")  # the output check comes first: no evaluation is attempted
    assert eval_seg.main([missing_ckpt, "--save-deploy", str(existing)]) == 2
    assert f"--save-deploy {existing}: exists; choose another path" in capsys.readouterr().err
    assert existing.read_bytes() == b"user data"
    assert eval_seg.main([missing_ckpt, "--save-deploy", str(tmp_path)]) == 2
    assert f"--save-deploy {tmp_path}: is a folder" in capsys.readouterr().err
    # a parent that is a file, or a place nobody may write: named with the option, before any evaluation
    for bad in (existing / "deploy.pt", Path("/sys/qarep_dense_test/deploy.pt")):
        assert eval_seg.main([missing_ckpt, "--save-deploy", str(bad)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: --save-deploy {bad}: ") and "no_such.pt" not in err
    assert existing.read_bytes() == b"user data"


def test_data_root_at_a_classification_dataset_is_refused_not_replaced(tmp_path, capsys):
    """Street scenes used to be generated in place of a generated shapes dataset (its splits deleted)."""
    from qarep_dense.data.synthetic.imagefolder import generate_imagefolder

    data = generate_imagefolder(tmp_path / "synthetic_cls", num_classes=2, per_class_train=1, per_class_val=1,
                                size=16)
    before = {p: p.read_bytes() for p in data.rglob("*") if p.is_file()}
    code, err = _train(["--work-dir", str(tmp_path / "w"), "--data-root", str(data)], capsys)
    assert code == 2 and "holds the output of 'synthetic-shapes', not of 'synthetic-cityscapes'" in err
    assert {p: p.read_bytes() for p in data.rglob("*") if p.is_file()} == before


def test_zero_iterations_are_refused_not_saved_as_a_trained_model(tmp_path, capsys):
    code, err = _train(["--work-dir", str(tmp_path / "w"), "--cfg-options", "train_cfg.max_iters=0"], capsys)
    assert code == 2 and "train_cfg.max_iters=0: must be an integer of at least 1" in err
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").glob("*.pt"))


# --- silent wrong results -------------------------------------------------------------------------

@pytest.fixture
def scenes(tmp_path):
    from qarep_dense.data.synthetic.cityscapes import generate_cityscapes

    return generate_cityscapes(tmp_path / "city", num_train=2, num_val=2, size=(64, 128), seed=5)


def _val_cfg(root: Path) -> dict:
    return dict(type="CityscapesDataset", data_root=str(root),
                data_prefix=dict(img_path="leftImg8bit/val", seg_map_path="gtFine/val"), pipeline=[])


def test_label_of_another_size_fails_at_dataset_build_naming_it(scenes):
    import cv2

    label = sorted((scenes / "gtFine" / "val").rglob("*.png"))[1]
    cv2.imwrite(str(label), np.zeros((32, 128), np.uint8))
    with pytest.raises(ValueError, match=rf"{label.name}: label map is 128x32 .* but its image .* is 128x64"):
        mm.check_dataset_files(_val_cfg(scenes))


def test_corrupt_image_fails_at_dataset_build_naming_it(scenes):
    image = sorted((scenes / "leftImg8bit" / "val").rglob("*.png"))[0]
    image.write_bytes(image.read_bytes()[:200])  # truncated: header intact, end chunk gone
    with pytest.raises(ValueError, match=rf"{image.name}: PNG without its end chunk"):
        mm.check_dataset_files(_val_cfg(scenes))
    image.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=rf"{image.name}: not a readable image"):
        mm.check_dataset_files(_val_cfg(scenes))


def test_unknown_override_keys_fail_with_the_nearest_key(tmp_path, capsys):
    code, err = _train(["--work-dir", str(tmp_path / "w"), "--cfg-options", "tain_cfg.max_iters=1"], capsys)
    assert code == 2 and "unknown key 'tain_cfg' (did you mean 'train_cfg'?)" in err
    code, err = _train(["--work-dir", str(tmp_path / "w"), "--cfg-options", "model.backbone.blok=repvgg"], capsys)
    assert code == 2 and "unknown key 'model.backbone.blok' (did you mean 'model.backbone.block'?)" in err
    assert not (tmp_path / "w").exists()
    cfg = mm.load_config(CONFIG)  # new keys an object takes stay allowed: a constructor argument, a Runner key
    mm.check_cfg_options(cfg, {"model.backbone.frozen_stages": 1, "randomness.seed": 3, "auto_scale_lr.base_batch_size": 8})
    with pytest.raises(ValueError, match=r"unknown key 'train_cfg.max_iter' \(did you mean 'train_cfg.max_iters'\?\)"):
        mm.check_cfg_options(cfg, {"train_cfg.max_iter": 1})
    # the RepOptimizer constructor's own paramwise key, which a RepOpt row of a non-RepOpt config adds
    cfg = mm.load_config(ROOT / "configs" / "seg" / "fcn_qarepvgg-test_1xb4-2it_digits-canvas-32x32.py")
    mm.check_cfg_options(cfg, {"optim_wrapper.paramwise_cfg.hs_checkpoint": "hs.pt"})
    with pytest.raises(ValueError, match=r"'optim_wrapper.paramwise_cfg.hs_checkpont' \(did you mean "
                                         r"'optim_wrapper.paramwise_cfg.hs_checkpoint'\?\)"):
        mm.check_cfg_options(cfg, {"optim_wrapper.paramwise_cfg.hs_checkpont": "hs.pt"})


@pytest.mark.parametrize("option, key", [("optim_wrapper.optimizer.lr=0.5", "optim_wrapper.optimizer.lr"),
                                         ("model.backbone.block=repvgg", "model.backbone.block")])
def test_resume_refuses_keys_the_checkpoint_restores(run, option, key, capsys):
    work, data = run
    code, err = _train(["--work-dir", str(work), "--data-root", str(data), "--resume", "--cfg-options", option],
                       capsys)
    assert code == 2 and f"this config changes {key} (" in err and "would be recorded but not run" in err


def test_missing_data_root_is_not_generated(tmp_path, capsys):
    code, err = _train(["--work-dir", str(tmp_path / "w"), "--data-root", str(tmp_path / "typo")], capsys)
    assert code == 2 and f"--data-root {tmp_path / 'typo'}: folder not found" in err
    assert not (tmp_path / "typo").exists()


# --- errors that say what is wrong ----------------------------------------------------------------

class _Evil:
    def __reduce__(self):
        return (print, ("owned",))


def test_bad_resume_and_load_from_files_are_named(tmp_path, capsys):
    evil, empty = tmp_path / "evil.pth", tmp_path / "empty.pth"
    torch.save({"state_dict": {}, "meta": _Evil()}, evil)
    empty.write_bytes(b"")
    work = str(tmp_path / "w")
    code, err = _train(["--work-dir", work, "--resume", str(evil)], capsys)
    assert code == 2 and f"--resume {evil}: refused as unsafe" in err and "weights_only=False" not in err
    code, err = _train(["--work-dir", work, "--resume", str(empty)], capsys)
    assert code == 2 and f"--resume {empty}: empty file (0 bytes)" in err
    code, err = _train(["--work-dir", work, "--cfg-options", f"load_from={evil}"], capsys)
    assert code == 2 and f"load_from {evil}: refused as unsafe" in err
    code, err = _train(["--work-dir", work, "--resume", str(tmp_path)], capsys)
    assert code == 2 and f"--resume {tmp_path}: is a folder" in err


def test_pytorch_launcher_outside_torchrun_says_so(tmp_path, monkeypatch, capsys):
    for var in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    code, err = _train(["--work-dir", str(tmp_path / "w"), "--launcher", "pytorch"], capsys)
    assert code == 2 and "--launcher pytorch: RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT not set" in err


def test_check_seg_labels_passes_samples_without_labels():
    """mmseg.apis.inference_model drops LoadAnnotations: the check must let such a sample through."""
    sample = {"img": np.zeros((4, 4, 3), np.uint8), "img_path": None}
    assert mm.CheckSegLabels()(sample) is sample


# --- layering -------------------------------------------------------------------------------------

def _absolute_imports(path: Path) -> list[str]:
    """The absolute names of the modules ``path`` (a file of the qarep_dense package) imports."""
    package = list(path.relative_to(ROOT).with_suffix("").parts)
    package = package[:-1]  # a module's package; for __init__.py the package itself is its parent's child
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            names.append(".".join([*base, *([node.module] if node.module else [])]))
        elif isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
    return names


def test_integration_imports_nothing_above_it():
    """integrations/ sits below tasks/ and the applications: no module of it imports them."""
    above = ("tasks", "demo", "inference", "convert", "analysis", "quant", "evaluation")
    files = sorted((ROOT / "qarep_dense" / "integrations").rglob("*.py"))
    assert any(f.name == "registrations.py" for f in files)
    for path in files:
        for name in _absolute_imports(path):
            assert not any(name == f"qarep_dense.{a}" or name.startswith(f"qarep_dense.{a}.") for a in above), \
                f"{path.relative_to(ROOT)} imports {name}"
    assert "qarep_dense.engine.checkpoint" in _absolute_imports(files[[f.name for f in files].index("registrations.py")])


def test_calibration_loader_reads_the_same_images_on_every_pass(tmp_path):
    # Every model a PTQ table measures with one evaluator must calibrate on the same images; a shuffled
    # loader that reshuffles per pass gave the second model of a table other images than the first.
    from qarep_dense.data.synthetic.cityscapes import generate_cityscapes
    from torch.utils.data import DataLoader

    root = generate_cityscapes(tmp_path / "city", num_train=7, num_val=2, size=(32, 64), seed=5)
    _, calib, _ = mm.seg_loaders(mm.load_config(CONFIG), root, batch_size=2)
    passes = [torch.cat([images for images, _ in calib]) for _ in range(3)]
    assert all(torch.equal(passes[0], p) for p in passes[1:])
    assert not torch.equal(passes[0], torch.cat([images for images, _ in DataLoader(
        calib.dataset, 2, shuffle=False, collate_fn=calib.collate_fn)]))  # shuffled, not the file order
    # the order is the first pass of the per-pass shuffle it replaces, so earlier first-pass numbers stand
    old = DataLoader(list(range(7)), 2, shuffle=True, generator=torch.Generator().manual_seed(0))
    assert [int(i) for batch in old for i in batch] == mm.shuffled_order(7, 0) == list(calib.sampler)


def test_configs_with_mmseg_bases_read_the_package_metafiles_once_and_load_as_mmengine_loads_them(monkeypatch):
    """mmengine parses every metafile of mmseg (212 YAML files) for each `mmseg::` base it resolves; our
    load_config reads them once per process and gives the config mmengine gives."""
    import mmengine.config.utils as mm_config_utils
    from mmengine.config import Config
    from mmengine.utils import get_installed_path

    from qarep_dense.integrations.mmseg import runner

    real_metainfo = mm_config_utils._get_cfg_metainfo
    read = []
    real_load = runner.load_file
    monkeypatch.setattr(runner, "load_file", lambda path, *a, **k: read.append(path) or real_load(path, *a, **k))
    runner._package_configs.cache_clear()
    paths = [ROOT / "configs" / "deeplab_qarep.py",
             ROOT / "configs" / "seg" / "fcn_repvgg-b1g4_4xb2-40k_cityscapes-512x1024.py"]
    for path in paths:
        assert mm.load_config(path).pretty_text == Config.fromfile(str(path)).pretty_text, path.name
    assert sum(p.endswith("model-index.yml") for p in read) == 1 and len(read) > 50  # every metafile, once
    assert mm_config_utils._get_cfg_metainfo is real_metainfo  # mmengine's own function outside load_config
    with pytest.raises(ValueError, match="Expected configs"):  # a name no metafile has: mmengine's error
        runner._cfg_metainfo(get_installed_path("mmseg"), "no_such/config")
