"""Shared helpers for the benchmark scripts: medians of interleaved repeats, appending a report to a file, and
the command-line options several scripts share."""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from typing import Callable, Iterator


def median_ms(fns: dict[str, Callable[[], object]], repeats: int = 20, warmup: int = 3) -> dict[str, float]:
    """Median wall time (ms) of each callable, measured round-robin so drift hits all of them alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in samples.items()}


def append_report(out: Path | None, text: str) -> None:
    """Append ``text`` (and a blank line) to ``out`` when given: reruns add to a results file, never replace it."""
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(text.rstrip("\n") + "\n\n")


def publish_report(out: Path | None, text: str) -> str:
    """Print ``text`` (the run's report) and append it to ``out`` when given; returns it."""
    print(text)
    append_report(out, text)
    return text


def digits_models_parser(description: str, names: list[str]) -> argparse.ArgumentParser:
    """Options of the scripts that run over the main job's digits models (``MODELS/<name>_s<seed>/deploy.pt``)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--models", type=Path, default=Path("/work/runs/pipeline_models"))
    p.add_argument("--data", type=Path, default=None, help="digits root (default: MODELS/data/digits24)")
    p.add_argument("--names", nargs="+", default=list(names), choices=list(names))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--work", type=Path, required=True, help="per-model outputs go here (one folder per model)")
    p.add_argument("--results", type=Path, default=None, help="append to RESULTS.md / RESULTS.json")
    return p


def trained_models(args: argparse.Namespace) -> Iterator[tuple[str, int, Path]]:
    """(name, seed, deploy.pt) of every model of ``args.names`` x ``args.seeds`` trained so far, seed-major."""
    for seed in args.seeds:
        for name in args.names:
            checkpoint = args.models / f"{name}_s{seed}" / "deploy.pt"
            if checkpoint.is_file():
                yield name, seed, checkpoint
            else:
                print(f"skip {checkpoint}: not trained (yet)", flush=True)


def ort_speed_parser(description: str, repeats: int, calib_images: int) -> argparse.ArgumentParser:
    """Options of the onnxruntime speed scripts on one fused classifier."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--arch", default="A0")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--threads", type=int, default=2, help="ORT intra-op threads")
    p.add_argument("--repeats", type=int, default=repeats, help="timed runs per variant and batch (median)")
    p.add_argument("--calib-images", type=int, default=calib_images)
    p.add_argument("--out", type=Path, default=None, help="append the Markdown table to this file")
    return p
