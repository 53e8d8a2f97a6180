"""Start-up and library overheads the toolkit routes around, each measured side by side with the other way in one run.

    python benchmarks/bench_overheads.py --depth 60 --out benchmarks/results/overheads.md

1. pytorch-quantization checks the caller of every quantized layer it builds with ``inspect.stack()``, which
   resolves each frame's source file and module; the backend answers the check with the frames' names
   (``qarep_dense.quant.backends.pytorch_quant``). Timed: building the fused A0's quantized layers at the
   shallow stack of a script and under ``--depth`` extra frames of code compiled from a string, as a pytest-xdist
   worker runs its tests (execnet executes its worker code from strings); ``inspect`` looks such a frame's file up
   among all loaded modules, every time.
2. mmengine resolves each ``mmseg::`` base of a config by parsing every metafile of mmseg; ``load_config``
   reads them once per process (``qarep_dense.integrations.mmseg.runner``). Timed: ``Config.fromfile`` against
   ``load_config`` on each segmentation config of ``configs/``, after one warm-up load of each.
3. A tool's ``--help`` builds its parser from ``qarep_dense.choices`` and ``tasks.cli`` and imports torch and the task
   modules only after parsing. Timed: ``python tools/X.py --help`` against the same command with the tool's task
   module imported first (what ``--help`` cost when the tools imported it at the top), one fresh process each.
"""
from __future__ import annotations

import argparse
import copy
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from qarep_dense.layers import reparameterize
from qarep_dense.models import build_classifier
from qarep_dense.quant import QuantConfig
from qarep_dense.quant.backends import get_backend
from qarep_dense.quant.backends import pytorch_quant
from qarep_dense.quant.swap import quantize_modules
from _timing import median_ms, publish_report  # benchmarks/ is the script's folder, first on sys.path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("fcn_qarepvgg-b1g4_4xb2-40k_cityscapes-512x1024.py",
           "deeplabv3plus_qarepvgg-b1g4_4xb2-80k_cityscapes-512x1024.py",
           "fcn_qarepvgg-a0h_1xb16-4000it_digits-canvas-64x64.py")  # the paper's two heads and the main job's


# tool -> the module it imports after parsing (the heaviest of its imports)
HELP_TOOLS = {"train_cls.py": "qarep_dense.tasks.classification", "train_det.py": "qarep_dense.tasks.detection",
              "train_seg.py": "qarep_dense.tasks.segmentation", "ptq_eval.py": "qarep_dense.tasks.ptq_study",
              "quantize.py": "qarep_dense.tasks.quantize_pipeline"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--depth", type=int, default=60, help="extra stack frames for the deep-stack case")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--configs", nargs="+", type=Path, default=[ROOT / "configs" / "seg" / c for c in CONFIGS])
    p.add_argument("--out", type=Path, default=None, help="append the Markdown table to this file")
    return p.parse_args()


_FRAMES: dict = {}
exec(compile("def at_depth(depth, fn):\n    return fn() if depth <= 0 else at_depth(depth - 1, fn)\n", "<string>",
             "exec"), _FRAMES)
at_depth = _FRAMES["at_depth"]  # ``fn()`` called ``depth`` frames (of a file named "<string>") below here


def build_seconds(fused, backend, use_names: bool, depth: int) -> float:
    """Seconds to build the quantized layers of a copy of ``fused``; ``use_names=False``: the package's own
    ``inspect.stack()`` check (the backend's frame-name answer switched off)."""
    model = copy.deepcopy(fused)
    names = pytorch_quant._CallerNames
    if not use_names:
        pytorch_quant._CallerNames = pytorch_quant.pq_module_utils.inspect  # the real inspect module
    try:
        start = time.perf_counter()
        at_depth(depth, lambda: quantize_modules(model, backend, QuantConfig()))
        return time.perf_counter() - start
    finally:
        pytorch_quant._CallerNames = names


def help_seconds(tool: str, preload: str | None) -> float:
    """Wall seconds of ``python tools/TOOL --help`` in a fresh process; ``preload``: import that module first."""
    code = ("import runpy, sys\n" + (f"import {preload}\n" if preload else "")
            + f"sys.argv = ['tools/{tool}', '--help']\nrunpy.run_path('tools/{tool}', run_name='__main__')\n")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                               "PYTHONPATH": f"{ROOT}:{ROOT / 'tools'}"})
    seconds = time.perf_counter() - start
    if proc.returncode or not proc.stdout.startswith("usage:"):
        raise RuntimeError(f"tools/{tool} --help (preload {preload}) failed: {proc.stderr.strip()[-500:]}")
    return seconds


def median_of(fn, repeats: int) -> float:
    return statistics.median(fn() for _ in range(repeats))


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    lines = [f"## Library overheads ({platform.processor() or platform.machine()}, one thread, median of "
             f"{args.repeats})", "",
             "| what | the library's way | ours | ratio |", "|---|---|---|---|"]

    fused = reparameterize(build_classifier("A0", "qarepvgg")).eval()
    layers = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in fused.modules())
    backend = get_backend("pytorch_quantization")
    for depth in (0, args.depth):
        theirs = median_of(lambda: build_seconds(fused, backend, False, depth), args.repeats)
        ours = median_of(lambda: build_seconds(fused, backend, True, depth), args.repeats)
        frames = f"{depth + 1} frame{'s' * (depth > 0)}"
        lines.append(f"| build the {layers} quantized layers of the fused A0, {frames} from a "
                     f"string ({len(sys.modules)} modules loaded) | {theirs * 1e3:.0f} ms | {ours * 1e3:.0f} ms | "
                     f"{theirs / ours:.1f}x |")

    from mmengine.config import Config

    from qarep_dense.integrations.mmseg import load_config

    for path in args.configs:  # one warm-up load each: files in the page cache, our index read
        ms = median_ms({"theirs": lambda: Config.fromfile(str(path)), "ours": lambda: load_config(path)},
                       repeats=args.repeats, warmup=1)
        lines.append(f"| load `{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}` | "
                     f"{ms['theirs']:.0f} ms | {ms['ours']:.0f} ms | {ms['theirs'] / ms['ours']:.1f}x |")
    for tool, module in HELP_TOOLS.items():  # round-robin: drift hits both alike
        ms = median_ms({"theirs": lambda: help_seconds(tool, module), "ours": lambda: help_seconds(tool, None)},
                       repeats=args.repeats, warmup=1)
        lines.append(f"| `python tools/{tool} --help` (its task module imported first / after parsing) | "
                     f"{ms['theirs']:.0f} ms | {ms['ours']:.0f} ms | {ms['theirs'] / ms['ours']:.1f}x |")
    text = "\n".join(lines)
    publish_report(args.out, text)


if __name__ == "__main__":
    main()
