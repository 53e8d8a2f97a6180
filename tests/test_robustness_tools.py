"""Every tool: a clear one-line error for a bad checkpoint, and `--help` straight from a checkout in a clean shell."""
from __future__ import annotations

import os
import subprocess
import sys

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


# Loaded only once a tool has parsed its arguments: --help must answer without them (3-10 s of imports otherwise).
HEAVY_FOR_HELP = ("torch", "numpy", "mmengine", "mmseg", "onnxruntime", "pytorch_quantization", "cv2")


def _imported(importtime_log: str) -> set[str]:
    """Module names in ``PYTHONPROFILEIMPORTTIME`` output ("import time: self | cumulative | name")."""
    return {line.rsplit("|", 1)[1].strip() for line in importtime_log.splitlines()
            if line.startswith("import time:") and line.count("|") == 2}


def test_every_tool_help_runs_from_a_checkout_in_a_clean_environment_without_importing_torch():
    """What a new user types after `bash scripts/demo.sh`: `.venv/bin/python tools/X.py --help`, from the repo
    root, in an environment without PYTHONPATH or an activated venv. Every tools/*.py answers, and builds its
    parser from tasks.cli alone (which re-exports qarep_dense.choices): none of the heavy libraries is imported."""
    env = {"HOME": os.environ.get("HOME", "/tmp"), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
           "PYTHONPROFILEIMPORTTIME": "1"}
    failures = {}
    for name in TOOLS:
        proc = subprocess.run([_clean_python(), f"tools/{name}", "--help"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)
        imported = _imported(proc.stderr)
        if proc.returncode != 0 or not proc.stdout.startswith("usage:"):
            failures[name] = ([ln for ln in proc.stderr.splitlines() if not ln.startswith("import time:")]
                              or ["(no output)"])[-1]
        elif "qarep_dense.tasks.cli" not in imported:
            failures[name] = "did not build its parser through qarep_dense.tasks.cli (importtime log unread?)"
        elif imported & set(HEAVY_FOR_HELP):
            failures[name] = f"--help imported {sorted(imported & set(HEAVY_FOR_HELP))}"
    assert not failures, "tools failing a fast `--help` in a clean environment: " + "; ".join(
        f"tools/{k}: {v}" for k, v in failures.items())


def test_the_importtime_reader_sees_a_heavy_import():
    """The test above can fail: a tool that imports torch before parsing is caught."""
    log = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}).stderr
    assert "torch" in _imported(log) and "numpy" in _imported(log)


def test_the_analyze_help_names_every_threshold_and_the_choices_match_the_library():
    import dataclasses

    from qarep_dense import choices
    from qarep_dense.analysis import Thresholds
    from qarep_dense.quant.backends import backend_names
    from qarep_dense.tasks.registry import TASKS

    assert tool("analyze.py", "THRESHOLD_NAMES") == tuple(f.name for f in dataclasses.fields(Thresholds))
    assert sorted(b.replace("-", "_") for b in choices.QUANT_BACKENDS) == backend_names()
    assert set(choices.TASK_NAMES) == set(TASKS) == set(choices.EVAL_BATCH_SIZE)
    assert all(TASKS[name].batch_size == choices.EVAL_BATCH_SIZE[name] for name in TASKS)


def test_every_tool_puts_its_checkout_first_before_importing_qarep_dense():
    """Cheap static twin of the test above: the sys.path preamble precedes the first qarep_dense import."""
    for name in TOOLS:
        text = (REPO / "tools" / name).read_text()
        first_import = min((i for i in (text.find("\nfrom qarep_dense"), text.find("\nimport qarep_dense")) if i >= 0),
                           default=len(text))
        insert = text.find("\nimport _bootstrap")
        assert 0 <= insert < first_import, (f"tools/{name}: put the checkout first on sys.path before importing "
                                            "qarep_dense (`import _bootstrap`, as tools/ptq_eval.py does)")
    assert "sys.path.insert(0, ROOT)" in (REPO / "tools" / "_bootstrap.py").read_text()


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
    ["quantize", "{run}", "--out", "{tmp}/q"],
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


# --- a text file given as a checkpoint; crafted pickles; a device the machine lacks; a foreign file -----------

TEXT_FILE_TOOLS = [
    ["quantize", "{ckpt}", "--out", "{tmp}/q"],
    ["export_onnx", "{ckpt}", "--out", "{tmp}/m.onnx"],
    ["convert_ckpt", "{ckpt}", "--from", "timm", "--arch", "A0", "--out", "{tmp}/c.pt"],
    ["convert_ckpt", "{ckpt}", "--from", "yolov6", "--out", "{tmp}/c.pt"],
]


@pytest.mark.parametrize("argv", TEXT_FILE_TOOLS, ids=lambda a: "-".join(a[:1] + a[2:4]))
def test_a_text_file_given_as_checkpoint_is_called_so(tmp_path, capsys, argv):
    text = tmp_path / "notes.pt"
    text.write_text("experiment notes\nlr 0.1\n")
    args = [a.format(ckpt=text, tmp=tmp_path) for a in argv[1:]]
    try:
        code = tool(argv[0])(args)
    except SystemExit as stop:  # convert_ckpt reports through argparse
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and f"{text}: not a PyTorch checkpoint (it is a text file" in err, err
    assert "Traceback" not in err and "KeyError: 101" not in err


def test_every_checkpoint_reader_calls_a_text_file_a_text_file(tmp_path):
    from qarep_dense.engine.checkpoint import CheckpointError, load_checkpoint
    from qarep_dense.tasks.quantize_pipeline import load_fakequant

    text = tmp_path / "iter_10.pth"
    text.write_text("experiment notes\n")
    readers = [load_checkpoint, load_fakequant]
    if os.environ.get("QAREP_SKIP_MMSEG") is None:
        mmseg = pytest.importorskip("qarep_dense.integrations.mmseg")
        readers.append(lambda p: mmseg.check_mmengine_checkpoint(p, "--resume", resume=True))
    for read in readers:
        with pytest.raises(CheckpointError, match="it is a text file"):
            read(text)


def test_a_crafted_pickle_is_refused_without_torchs_unsafe_advice(tmp_path, capsys):
    import pickle

    crafted = tmp_path / "crafted.pth"
    crafted.write_bytes(pickle.dumps({"state_dict": os.system}, protocol=2))  # a global torch refuses
    try:
        code = tool("convert_ckpt")([str(crafted), "--from", "timm", "--arch", "A0", "--out", str(tmp_path / "c.pt")])
    except SystemExit as stop:
        code = stop.code
    err = capsys.readouterr().err
    assert code == 2 and f"{crafted}: refused as unsafe" in err
    assert "weights_only=False" not in err and "Traceback" not in err


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
def test_quantize_on_a_missing_gpu_is_a_clear_error(tmp_path, capsys):
    cls = save_checkpoint(tmp_path / "cls.pt", build_classifier("test", "qarepvgg", 3, stem_stride=1).state_dict(),
                          {"task": "cls", "arch": "test", "block": "qarepvgg", "num_classes": 3, "stem_stride": 1,
                           "fused": False, "image_size": 16})
    assert tool("quantize")([str(cls), "--out", str(tmp_path / "q"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert "--device 'cuda': CUDA is not available on this machine" in err and "Traceback" not in err
    assert not (tmp_path / "q").exists()


def test_a_timm_classifier_given_as_yolov6_is_named_for_what_it_is(tmp_path):
    import torch

    from qarep_dense.convert import ConversionError, convert_state

    path = tmp_path / "timm_a0.pth"
    torch.save({"stem.conv_kxk.conv.weight": torch.zeros(48, 3, 3, 3), "head.fc.weight": torch.zeros(10, 1280),
                "head.fc.bias": torch.zeros(10)}, path)
    with pytest.raises(ConversionError, match="keys are those of a timm classifier: use --from timm") as err:
        convert_state(path, "yolov6")
    assert "--block" not in str(err.value)
