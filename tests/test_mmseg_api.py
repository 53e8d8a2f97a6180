"""mmseg's and mmengine's own entry points on our configs and checkpoints, in fresh interpreters, the way a
user calls them (no ``import qarep_dense`` first): ``Config.fromfile`` and ``mmseg.apis``."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from support import tool_module

pytest.importorskip("mmseg")
ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "seg" / "fcn_qarepvgg-test_1xb2-2it_synthetic-cityscapes-64x128.py"


def _python(code: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_configs_load_with_plain_mmengine():
    """mmengine resolves `mmseg::` bases through pkg_resources: the environment must ship it."""
    code = ("import sys; from mmengine.config import Config\n"
            "for name in ('configs/deeplab_qarep.py', 'configs/seg/" + CONFIG.name + "'):\n"
            "    cfg = Config.fromfile(name, import_custom_modules=False)\n"
            "    print(cfg.model.backbone.type, cfg.model.decode_head.type)\n"
            "print('qarep_dense' in sys.modules)")
    out = _python(code, ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["QARepVGGBackbone", "DepthwiseSeparableASPPHead", "QARepVGGBackbone", "FCNHead",
                                  "False"]


def test_mmseg_apis_import_without_qarep_dense():
    """mmseg imports mmcv.ops at import time; under mmcv-lite the installed shim (shims/mmcv-lite-ops) serves it."""
    out = _python("import sys; from mmseg.apis import inference_model, init_model; import mmcv.ops\n"
                  "print(callable(mmcv.ops.point_sample), 'qarep_dense' in sys.modules)", ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "False"]


@pytest.mark.slow  # ~40 s: a 2-iteration training, then mmseg's API in a fresh interpreter
def test_mmseg_inference_api_on_a_trained_run(tmp_path):
    train = tool_module("train_seg")
    work, data = tmp_path / "run", tmp_path / "data"
    data.mkdir()
    assert train.main([str(CONFIG), "--work-dir", str(work), "--data-root", str(data), "--no-progress"]) == 0
    image = sorted((data / "leftImg8bit" / "val").rglob("*.png"))[0]
    code = f"""
import sys
from mmseg.apis import inference_model, init_model  # mmseg's documented entry point, nothing imported before
assert 'qarep_dense' not in sys.modules
for config in ({str(work / CONFIG.name)!r}, {str(CONFIG)!r}):  # the run's dumped config, and the repo's
    model = init_model(config, {str(work / 'iter_2.pth')!r}, device='cpu')
    result = inference_model(model, {str(image)!r})
    print(tuple(result.pred_sem_seg.data.shape), int(result.pred_sem_seg.data.max()) < 19)
"""
    out = _python(code, tmp_path)  # not the repo root: the package comes from the environment's path only
    assert out.returncode == 0, out.stderr[-3000:]
    assert [line for line in out.stdout.splitlines() if line.startswith("(")] == ["(1, 64, 128) True"] * 2
