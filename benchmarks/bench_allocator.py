"""glibc's heap settings for the main job's one-thread trainings: its defaults against a heap that keeps its memory.

Each training step allocates and frees activations of a few MB. glibc's malloc gives the top of its heap back to
the kernel once more than its trim threshold is free, so the next step asks for the pages again and the kernel
faults and zeroes every one of them: about a million page faults and several seconds of system time per minute
of a segmentor's training. ``GLIBC_TUNABLES`` with fixed mmap and trim thresholds keeps that memory in the
process (qarep_dense.demo.processes.HEAP_TUNABLES, which the main job's stage processes run with).

This runs each of the main job's three trainings (shortened) twice *side by side*, one thread each, with glibc's
defaults and with the main job's setting, ``--rounds`` times, and reports per run the wall and CPU seconds, the
page faults and the peak memory, the speed-up of the fastest round of each, and whether the two trained the same
weights bit for bit (an allocator must not change a number):

    OMP_NUM_THREADS=1 python benchmarks/bench_allocator.py --rounds 3 --out benchmarks/results/allocator.md

The digits and the digit canvases are written into ``--work`` first (not timed).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._timing import publish_report  # noqa: E402
from benchmarks.bench_parallel_train import _same_weights  # noqa: E402  (last.pt's model tensors, bit for bit)
from qarep_dense.demo.main_job import _prepare_det_data  # noqa: E402  (the canvases, as the main job writes them)
from qarep_dense.demo.processes import HEAP_TUNABLES  # noqa: E402

SETTINGS = {"glibc defaults": None, "main job": HEAP_TUNABLES}


def _jobs(work: Path, name: str) -> dict[str, tuple[list[str], Path]]:
    """The three trainings (the main job's recipes, shortened) into ``work/name``: label -> (command, run dir)."""
    py, digits, canvas = sys.executable, work / "digits", work / "digits_canvas"
    cls, det, seg = work / name / "cls", work / name / "det", work / name / "seg"
    return {
        "classifier, 4 epochs": ([py, "tools/train_cls.py", "configs/cls/digits_repvgg.toml", "--work-dir", str(cls),
                                  "--set", "optim.lr=0.4", "optim.weight_decay=5e-4", "optim.warmup_epochs=0",
                                  "data.image_size=24", "optim.l2=custom", "optim.epochs=4", f"data.root={digits}",
                                  "train.progress=false", "train.deterministic=true", "train.eval_interval=10"], cls),
        "detector, 1 epoch": ([py, "tools/train_det.py", "configs/det/digits_canvas_repvgg.toml", "--work-dir",
                               str(det), "--set", "optim.epochs=1", f"data.root={canvas}", "data.workers=0",
                               "train.deterministic=true", "train.progress=false"], det),
        "segmentor, 300 iterations": ([py, "tools/train_seg.py",
                                       "configs/seg/fcn_repvgg-a0h_1xb16-4000it_digits-canvas-64x64.py",
                                       "--work-dir", str(seg), "--data-root", str(canvas), "--no-progress",
                                       "--cfg-options", "model.backbone.init_cfg=None", "train_cfg.max_iters=300",
                                       "train_cfg.val_interval=300", "default_hooks.checkpoint.interval=300"], seg),
    }


def _env(tunables: str | None) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("GLIBC_TUNABLES", None)
    if tunables:
        env["GLIBC_TUNABLES"] = tunables
    return env


def _side_by_side(commands: dict[str, list[str]]) -> dict[str, dict]:
    """Start every command at once (one per setting) and wait; per setting its own wall seconds (start to its
    exit) and its resource usage."""
    start = time.perf_counter()
    procs = {}
    for name, cmd in commands.items():
        proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(SETTINGS[name]), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        procs[proc.pid] = (name, proc)
    out, failed = {}, []
    while len(out) + len(failed) < len(procs):
        pid, status, usage = os.wait4(-1, 0)  # whichever of them ends first, with its own resource usage
        if pid not in procs:
            continue
        (name, proc), code = procs[pid], os.waitstatus_to_exitcode(status)
        proc.returncode = code  # reaped here: Popen must not wait for it again
        if code:
            failed.append(f"{name}: {' '.join(commands[name][1:3])} failed (exit {code})")
            continue
        out[name] = {"wall": time.perf_counter() - start, "cpu": usage.ru_utime + usage.ru_stime,
                     "sys": usage.ru_stime, "faults": usage.ru_minflt, "peak_mb": usage.ru_maxrss / 1024}
    if failed:
        raise RuntimeError("; ".join(failed) + " (rerun the command alone to see its error)")
    return out


def _prepare_data(work: Path) -> None:
    """The digits (tools/train_cls.py writes them on first use) and the canvases (the detection config's export)."""
    warmup = _jobs(work, "warmup")["classifier, 4 epochs"][0]
    proc = subprocess.run([*warmup, "optim.epochs=1"], cwd=ROOT, env=_env(None), capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"writing the digits failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
    _prepare_det_data(str(ROOT / "configs" / "det" / "digits_canvas_repvgg.toml"),
                      [f"data.root={work / 'digits_canvas'}"])


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="side-by-side rounds of each training")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    p.add_argument("--out", type=Path, default=None, help="append the report to this Markdown file")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_allocator_"))
    if work.exists() and any(work.iterdir()):
        p.error(f"--work {work}: not empty (this benchmark writes only into a new or empty folder)")
    work.mkdir(parents=True, exist_ok=True)
    _prepare_data(work)
    load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
    runs: dict[str, dict[str, list[dict]]] = {}
    same: dict[str, bool] = {}
    for r in range(args.rounds):
        jobs = {name: _jobs(work, f"{i}_{r}") for i, name in enumerate(SETTINGS)}
        for label in jobs[next(iter(SETTINGS))]:
            result = _side_by_side({name: jobs[name][label][0] for name in SETTINGS})
            for name, row in result.items():
                runs.setdefault(label, {}).setdefault(name, []).append(row)
            if r == 0:
                same[label] = _same_weights(*(jobs[name][label][1] for name in SETTINGS))
    lines = [f"The main job's trainings, shortened, side by side (one thread each): glibc's defaults and the main "
             f"job's `GLIBC_TUNABLES={HEAP_TUNABLES}`; {args.rounds} rounds; load average before {load_before}, "
             f"after {' '.join(f'{x:.2f}' for x in os.getloadavg())}", "",
             "| training | heap | wall s per round | CPU s | system s | page faults | peak MB | speed-up (wall, CPU) | "
             "same weights |", "|---|---|---|---|---|---|---|---|---|"]
    base, new = SETTINGS
    for label, by_setting in runs.items():
        speedup = min(r["wall"] for r in by_setting[base]) / min(r["wall"] for r in by_setting[new])
        cpu_speedup = min(r["cpu"] for r in by_setting[base]) / min(r["cpu"] for r in by_setting[new])
        for name in SETTINGS:
            rows = by_setting[name]
            last, walls = name == new, ", ".join(f"{r['wall']:.1f}" for r in rows)
            lines.append(f"| {label} | {name} | {walls} | "
                         f"{min(r['cpu'] for r in rows):.1f} | {min(r['sys'] for r in rows):.2f} | "
                         f"{min(r['faults'] for r in rows):,} | {max(r['peak_mb'] for r in rows):.0f} | "
                         f"{f'{speedup:.2f}x, {cpu_speedup:.2f}x' if last else ''} | "
                         f"{('yes' if same[label] else 'NO') if last else ''} |")
    return publish_report(args.out, "\n".join(lines))


if __name__ == "__main__":
    main()
