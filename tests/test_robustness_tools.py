"""Every tool: a clear one-line error for a bad checkpoint, and `--help` straight from a checkout in a clean shell."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from qarep_dense.engine.checkpoint import save_checkpoint
from qarep_dense.models import build_classifier

from support import REPO, tool  # noqa: E402
TOOLS = sorted(p.name for p in (REPO / "tools").glob("*.py") if not p.name.startswith("_"))
VENV_PYTHON = REPO / ".venv" / "bin" / "python"



@pytest.fixture(scope="module")
def no_arch(tmp_path_factory):
    """A classification checkpoint whose metadata lost its 'arch' (e.g. edited by hand)."""
    meta = {"task": "cls", "block": "qarepvgg", "num_classes": 3, "stem_stride": 1, "fused": False,
            "image_size": 16, "preprocess": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    model = build_classifier("test", "qarepvgg", 3, stem_stride=1)
    return save_checkpoint(tmp_path_factory.mktemp("noarch") / "noarch.pt", model.state_dict(), meta)


def _expect_meta_error(code: int, err: str) -> None:
    assert code == 2
    assert err.startswith("error: ") and "noarch.pt: checkpoint metadata has no 'arch'" in err
    assert "KeyError" not in err and "Traceback" not in err


def test_export_onnx_metadata_without_arch(no_arch, tmp_path, capsys):
    code = tool("export_onnx.py")([str(no_arch), "--out", str(tmp_path / "m.onnx")])
    _expect_meta_error(code, capsys.readouterr().err)
    assert not (tmp_path / "m.onnx").exists()


def test_analyze_metadata_without_arch(no_arch, tmp_path, capsys):
    code = tool("analyze.py", "cli")([str(no_arch), "--out", str(tmp_path / "a"), "--no-progress"])
    _expect_meta_error(code, capsys.readouterr().err)


def test_ptq_eval_metadata_without_arch(no_arch, tmp_path, capsys):
    pytest.importorskip("pytorch_quantization")
    (tmp_path / "data").mkdir()
    code = tool("ptq_eval.py")(["--checkpoints", str(no_arch), "--data", str(tmp_path / "data"), "--out",
                                str(tmp_path / "o"), "--no-progress"])
    _expect_meta_error(code, capsys.readouterr().err)


def test_tools_check_the_checkpoint_task(tmp_path, capsys):
    seg_like = save_checkpoint(tmp_path / "odd.pt", {}, {"task": "pose", "arch": "x"})
    assert tool("export_onnx.py")([str(seg_like), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "odd.pt: this is a 'pose' (unknown) checkpoint, but a cls (classification) or det" in \
        capsys.readouterr().err
    cls = save_checkpoint(tmp_path / "cls.pt", build_classifier("test", "qarepvgg", 3, stem_stride=1).state_dict(),
                          {"task": "cls", "arch": "test", "block": "qarepvgg", "num_classes": 3, "stem_stride": 1,
                           "fused": False, "image_size": 16})
    assert tool("eval_det.py")([str(cls)]) == 2
    assert "cls.pt: this is a 'cls' (classification) checkpoint, but a det (detection) checkpoint is expected" in \
        capsys.readouterr().err


def test_analyze_takes_a_detector_with_random_inputs_and_refuses_image_folders(tmp_path, capsys):
    from qarep_dense.models.detector import build_detector

    det = save_checkpoint(tmp_path / "det.pt", build_detector("test", "repvgg", 2).state_dict(),
                          {"task": "det", "scale": "test", "block": "repvgg", "num_classes": 2, "fused": False,
                           "image_size": 64})
    (tmp_path / "data" / "val").mkdir(parents=True)
    assert tool("analyze.py", "cli")([str(det), "--data", str(tmp_path / "data"), "--no-progress"]) == 2
    assert "det.pt: --data feeds ImageFolder images, which only a classification ('cls') checkpoint takes" in \
        capsys.readouterr().err
    report = tool("analyze.py")([str(det), "--out", str(tmp_path / "a"), "--num-batches", "1", "--batch-size", "2",
                                 "--image-size", "32", "--no-progress"])
    assert report["weights"] and (tmp_path / "a" / "report.md").is_file()


def _clean_python() -> str:
    return str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable


def test_every_tool_help_runs_from_a_checkout_in_a_clean_environment():
    """What a new user types after `bash scripts/demo.sh`: `.venv/bin/python tools/X.py --help`, from the repo
    root, in an environment without PYTHONPATH or an activated venv. Every tools/*.py, a few at a time
    (each start imports torch: run one after the other they would take ~10x a single start)."""
    env = {"HOME": os.environ.get("HOME", "/tmp"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    failures, pending = {}, list(TOOLS)
    while pending:
        batch, pending = pending[:4], pending[4:]
        procs = {name: subprocess.Popen([_clean_python(), f"tools/{name}", "--help"], cwd=REPO, env=env,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for name in batch}
        for name, proc in procs.items():
            out, err = proc.communicate(timeout=300)
            if proc.returncode != 0 or not out.startswith("usage:"):
                failures[name] = (err.strip().splitlines() or ["(no output)"])[-1]
    assert not failures, "tools failing `--help` in a clean environment: " + "; ".join(
        f"tools/{k}: {v}" for k, v in failures.items())


def test_every_tool_puts_its_checkout_first_before_importing_qarep_dense():
    """Cheap static twin of the test above: the sys.path preamble precedes the first qarep_dense import."""
    for name in TOOLS:
        text = (REPO / "tools" / name).read_text()
        first_import = min((i for i in (text.find("\nfrom qarep_dense"), text.find("\nimport qarep_dense")) if i >= 0),
                           default=len(text))
        insert = text.find("sys.path.insert(0,")
        assert 0 <= insert < first_import, (f"tools/{name}: put the checkout first on sys.path before importing "
                                            "qarep_dense (see the preamble of tools/ptq_eval.py)")


# --- a folder where a checkpoint file is expected; --out that is a file ---------------------------------------

@pytest.fixture
def run_folder(tmp_path):
    """A run's folder, as a user passes it instead of the checkpoint inside it."""
    run = tmp_path / "run"
    run.mkdir()
    for name in ("last.pt", "deploy.pt", "iter_2.pth", "iter_10.pth", "notes.txt"):
        (run / name).write_bytes(b"x")
    return run


@pytest.mark.parametrize("argv", [
    ["export_onnx", "{run}", "--out", "{tmp}/m.onnx"],
    ["eval_det", "{run}"],
    ["convert_ckpt", "{run}", "--from", "timm", "--arch", "A0", "--out", "{tmp}/c.pt"],
])
def test_a_folder_given_as_checkpoint_is_called_a_folder(run_folder, tmp_path, capsys, argv):
    args = [a.format(run=run_folder, tmp=tmp_path) for a in argv[1:]]
    try:
        code = tool(argv[0])(args)
    except SystemExit as stop:  # convert_ckpt reports through argparse
        code = stop.code
    assert code == 2
    err = capsys.readouterr().err
    assert f"{run_folder}: is a folder, not a checkpoint file; it holds deploy.pt, last.pt, iter_10.pth, iter_2.pth" \
           f": pass one of them, e.g. {run_folder / 'deploy.pt'}" in err
    assert "not found" not in err and "Traceback" not in err


def test_checkpoint_path_problem_names_folders_files_and_missing_paths(tmp_path):
    from qarep_dense.engine.checkpoint import CheckpointError, checkpoint_path_problem, load_checkpoint

    assert checkpoint_path_problem(tmp_path) == \
        f"{tmp_path}: is a folder, not a checkpoint file (it holds no .pt, .pth or .safetensors file)"
    for i in range(6):
        (tmp_path / f"iter_{i}.pth").write_bytes(b"x")
    assert checkpoint_path_problem(tmp_path).endswith(
        f"it holds iter_5.pth, iter_4.pth, iter_3.pth, iter_2.pth (+2 more): pass one of them, e.g. "
        f"{tmp_path / 'iter_5.pth'}")
    assert checkpoint_path_problem(tmp_path / "iter_5.pth") is None
    with pytest.raises(CheckpointError, match="missing.pt: checkpoint file not found"):
        load_checkpoint(tmp_path / "missing.pt")


def test_infer_out_that_is_a_file_is_refused_naming_it(tmp_path, capsys):
    cls = save_checkpoint(tmp_path / "cls.pt", build_classifier("test", "qarepvgg", 3, stem_stride=1).state_dict(),
                          {"task": "cls", "arch": "test", "block": "qarepvgg", "num_classes": 3, "stem_stride": 1,
                           "fused": False, "image_size": 16})
    image = tmp_path / "a.png"
    cv2.imwrite(str(image), np.zeros((16, 16, 3), np.uint8))
    out = tmp_path / "result.txt"
    out.write_text("the user's file")
    for target, where in ((out, "is a file"), (out / "sub", f"cannot be created: {out} is a file")):
        assert tool("infer")([str(cls), str(image), "--out", str(target)]) == 2
        err = capsys.readouterr().err
        assert f"error: --out {target}: {where}; --out must be a folder" in err and "Errno" not in err
    assert out.read_text() == "the user's file"
