"""Package hygiene: `import qarep_dense` stays light, and the layering rule holds."""
import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEAVY = ("mmengine", "mmseg", "mmcv", "pytorch_quantization", "onnx", "onnxruntime", "modelopt")


def test_import_loads_no_heavy_dependency():
    code = ("import sys, qarep_dense, qarep_dense.layers, qarep_dense.models, qarep_dense.deploy, qarep_dense.optim, "
            "qarep_dense.data, qarep_dense.engine, qarep_dense.evaluation, qarep_dense.quant, qarep_dense.analysis, "
            "qarep_dense.losses, qarep_dense.tasks.classification, qarep_dense.tasks.detection; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_library_never_imports_tools_or_edits_sys_path():
    offenders = []
    for path in (ROOT / "qarep_dense").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                if any(n == "tools" or n.startswith("tools.") for n in names):
                    offenders.append(f"{path}: imports tools")
            if isinstance(node, ast.Attribute) and node.attr in ("append", "insert"):
                if isinstance(node.value, ast.Attribute) and node.value.attr == "path" and \
                        isinstance(node.value.value, ast.Name) and node.value.value.id == "sys":
                    offenders.append(f"{path}: edits sys.path")
    assert offenders == []
