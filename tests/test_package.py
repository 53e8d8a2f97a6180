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
            "qarep_dense.losses, qarep_dense.tasks.classification, qarep_dense.tasks.detection, "
            "qarep_dense.tasks.registry, qarep_dense.tasks.quant_check, qarep_dense.tasks.splits, "
            "qarep_dense.tasks.ptq_study; "
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


# --- the layer order ----------------------------------------------------------------------------------------
# A package may import only packages of a lower rank (same rank: not each other), so the import graph has no
# cycle except through KNOWN_UPWARD. Read from the code and
# STYLE.md's layout: utilities, then the data flow, then the application layer and its applications.
# integrations/ (the only mmengine/mmseg importer) sits low: it imports nothing above engine/.
# Function-level (lazy) imports count like module-level ones: laziness is for heavy third-party libraries,
# never a way around the order.
LAYERS = [("choices", "config", "fileio"), ("ops",), ("layers",), ("models",), ("data",), ("losses",), ("optim",),
          ("engine",), ("integrations",), ("evaluation",), ("deploy",), ("quant",), ("analysis",), ("convert",),
          ("tasks",), ("inference",), ("demo",)]  # the main job draws its pictures through inference/
RANK = {name: rank for rank, names in enumerate(LAYERS) for name in names}
# Upward imports that exist today, each with its way out; any other upward import fails.
KNOWN_UPWARD: set[tuple[str, str]] = set()  # none: every import follows the order
TOOLS_MAY_IMPORT = {"tasks", "demo", "inference", "convert", "analysis"}


def _imported_subpackages(path: pathlib.Path, module: str) -> list[tuple[str, int]]:
    """(first-level qarep_dense package, line) of every import in ``path`` (module: its dotted name)."""
    found = []
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                names = [".".join(base + ([node.module] if node.module else []))]
                if not node.module:  # from . import x / from .. import x
                    names = [f"{names[0]}.{a.name}" for a in node.names]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] == "qarep_dense" and len(parts) > 1:
                found.append((parts[1], node.lineno))
    return found


def _library_imports() -> list[tuple[str, str, str]]:
    """(importing package, imported package, 'file:line') across qarep_dense/, between different packages."""
    edges = []
    for path in sorted((ROOT / "qarep_dense").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        module = ".".join(p for p in rel.parts if p != "__init__")
        parts = module.split(".")
        if len(parts) < 2:
            continue  # qarep_dense/__init__.py
        own = parts[1]
        for target, line in _imported_subpackages(path, module):
            if target != own:
                edges.append((own, target, f"{path.relative_to(ROOT)}:{line}"))
    return edges


def test_every_package_has_a_layer():
    packages = {p.stem for p in (ROOT / "qarep_dense").iterdir()
                if (p.is_dir() and (p / "__init__.py").is_file()) or (p.suffix == ".py" and p.stem != "__init__")}
    assert packages == set(RANK), f"give each package a rank in LAYERS: {sorted(packages ^ set(RANK))}"


def test_no_package_imports_upward_or_sideways():
    bad = [f"{where}: {own} imports {target}" for own, target, where in _library_imports()
           if RANK[target] >= RANK[own] and (own, target) not in KNOWN_UPWARD]
    assert bad == [], "imports against the layer order (LAYERS in this file):\n" + "\n".join(bad)


def test_the_layer_check_catches_an_upward_and_a_lazy_import(tmp_path):
    path = tmp_path / "rep.py"
    path.write_text("from ..quant import x\n\ndef f():\n    from qarep_dense.tasks import registry\n")
    found = _imported_subpackages(path, "qarep_dense.layers.rep")
    assert [t for t, _ in found] == ["quant", "tasks"]
    assert all(RANK[t] > RANK["layers"] for t, _ in found)


def _module_imports() -> dict[str, set[str]]:
    """{qarep_dense module: the qarep_dense modules it imports (lazy ones included, ``if TYPE_CHECKING:`` ones
    not)}; ``from pkg import name`` counts as importing ``pkg.name`` when that is a module, else ``pkg``."""
    modules = {}
    for path in sorted((ROOT / "qarep_dense").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        modules[".".join(p for p in rel.parts if p != "__init__")] = path
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
        targets = set()
        tree = ast.parse(path.read_text(), str(path))
        typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                       and getattr(block.test, "id", getattr(block.test, "attr", "")) == "TYPE_CHECKING"
                       for n in ast.walk(block)}  # never run: no cycle at import time
        for node in ast.walk(tree):
            if id(node) in typing_only:
                continue
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                    if node.level else node.module or ""
                for alias in node.names:
                    targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        graph[module] = {t for t in targets if t in modules and t != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, as a path that starts and ends at the same module (one per strongly connected set)."""
    found, done = [], set()

    def visit(node: str, stack: list[str]) -> None:
        for nxt in sorted(graph[node]):
            if nxt in stack:
                cycle = stack[stack.index(nxt):] + [nxt]
                if not set(cycle) <= done:
                    found.append(cycle)
                    done.update(cycle)
            elif nxt not in done and len(stack) < 60:
                visit(nxt, stack + [nxt])

    for start in sorted(graph):
        if start not in done:
            visit(start, [start])
    return found


def test_no_import_cycle_between_modules():
    """A package's own __init__ re-exporting its modules is fine; a module importing one that imports it back
    (even lazily, inside a function) is not: the task registry and the task modules once did."""
    graph = _module_imports()
    inits = {m for m in graph if (ROOT / m.replace(".", "/") / "__init__.py").is_file()}
    without_reexports = {m: {t for t in targets if t not in inits or not m.startswith(t + ".")}
                         for m, targets in graph.items()}
    cycles = _cycles(without_reexports)
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_cycle_check_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_tools_import_only_the_application_layer():
    bad = []
    for path in sorted((ROOT / "tools").glob("*.py")):
        for target, line in _imported_subpackages(path, f"tools.{path.stem}"):
            if target not in TOOLS_MAY_IMPORT:
                bad.append(f"tools/{path.name}:{line} imports qarep_dense.{target}")
    assert bad == [], (f"a tool is a command line over {sorted(TOOLS_MAY_IMPORT)}; move the work into tasks/:\n"
                       + "\n".join(bad))


def test_inference_goes_through_tasks_for_mmseg():
    offenders = []
    for path in sorted((ROOT / "qarep_dense" / "inference").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names if n.split(".")[0] in ("mmseg", "mmengine", "mmcv")]
    assert offenders == []
