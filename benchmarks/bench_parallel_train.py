"""Two small trainings one after the other with 2 threads each, or side by side with 1 thread each?

The main job trains A0h on the digits at 24x24: a model small enough that two intra-op threads share
little work. This runs the same two trainings (RepVGG and QARepVGG, the main job's recipe) both ways in
one invocation and prints the wall times, the CPU seconds and the ratio, with the load average before and
after (the cores may be shared: read the ratio, and rerun when the load moved):

    python benchmarks/bench_parallel_train.py                    # 3 epochs each
    python benchmarks/bench_parallel_train.py --epochs 10 --out benchmarks/results/parallel_train.md

Each side-by-side run also checks that its weights are bit-identical to the same training run alone with
one thread (the main job's determinism rule: a result never depends on what runs beside it).

On a machine shared with other jobs, wall times of whole trainings say more about the load than about the
threads. ``--steps N`` times N single training steps instead (the main job's classifier, A0h at 24x24,
batch 64, and its detector, YOLOv6-n at 160x160, batch 16), in alternating one- and two-thread processes,
and reports the minimum per step: the time a step takes when nothing preempts it. The two-thread
speed-up S of a step predicts the gain of two one-thread runs side by side as 2 / S:

    python benchmarks/bench_parallel_train.py --steps 60

``--channels-last`` times the pair the main job's way (side by side, one thread each) with NCHW weights and
with channels-last weights (``train.channels_last``), alternating, ``--rounds`` times each:

    python benchmarks/bench_parallel_train.py --channels-last --epochs 10 --rounds 2

``--eval-interval N`` times the pair the same way evaluating every epoch and every N-th epoch (the main job's
choice), and checks that both train the same weights bit for bit:

    python benchmarks/bench_parallel_train.py --eval-interval 10 --epochs 10 --rounds 2
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._timing import append_report  # noqa: E402

RECIPE = ["optim.lr=0.4", "optim.weight_decay=5e-4", "optim.warmup_epochs=0", "data.image_size=24",
          "train.progress=false", "train.deterministic=true", "train.seed=0"]
MODELS = {"repvgg": ("digits_repvgg.toml", ["optim.l2=custom"]), "qarepvgg": ("digits_qarepvgg.toml", [])}


def _command(model: str, work: Path, data: Path, epochs: int, sets: tuple[str, ...] = ()) -> list[str]:
    config, extra = MODELS[model]
    return [sys.executable, str(ROOT / "tools" / "train_cls.py"), str(ROOT / "configs" / "cls" / config),
            "--work-dir", str(work), "--set", *RECIPE, *extra, f"optim.epochs={epochs}", f"data.root={data}", *sets]


def _run(jobs: list[tuple[list[str], int]]) -> tuple[float, float]:
    """Start every (command, threads) at once and wait; (wall seconds, CPU seconds of the children)."""
    cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    procs = [subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": str(t), "PYTHONPATH": str(ROOT)})
             for cmd, t in jobs]
    for proc, (cmd, _) in zip(procs, jobs):
        _, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"{' '.join(cmd[1:3])} failed (exit {proc.returncode}):\n{err[-2000:]}")
    wall = time.perf_counter() - start
    cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)


def _same_weights(a: Path, b: Path) -> bool:
    import torch

    sa = torch.load(a / "last.pt", map_location="cpu", weights_only=True)["model"]
    sb = torch.load(b / "last.pt", map_location="cpu", weights_only=True)["model"]
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


_STEP_CODE = """
import statistics, sys, time, torch
from qarep_dense.models.classifier import build_classifier
from qarep_dense.models.detector import build_detector
torch.manual_seed(0)
kind, steps = sys.argv[1], int(sys.argv[2])
if kind == "cls":
    model, x = build_classifier("A0h", "repvgg", 10, stem_stride=1), torch.randn(64, 3, 24, 24)
    loss_of = lambda out: out.square().mean()
else:
    model, x = build_detector("n", "qarepvgg", 6), torch.randn(16, 3, 160, 160)
    loss_of = lambda out: sum(t.square().mean() for t in (out if isinstance(out, (list, tuple)) else [out])
                              if torch.is_tensor(t))
model.train()
opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
times = []
for i in range(steps + 3):
    t0 = time.perf_counter()
    opt.zero_grad()
    loss_of(model(x)).backward()
    opt.step()
    if i >= 3:
        times.append((time.perf_counter() - t0) * 1e3)
print(min(times), statistics.median(times))
"""


def _step_ms(kind: str, threads: int, steps: int) -> tuple[float, float]:
    out = subprocess.run([sys.executable, "-c", _STEP_CODE, kind, str(steps)], cwd=ROOT, capture_output=True,
                         text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads),
                                                     "PYTHONPATH": str(ROOT)}).stdout.split()
    return float(out[-2]), float(out[-1])


def step_report(steps: int, rounds: int = 3) -> str:
    """Minimum and median ms per training step with 1 and 2 threads, alternating processes ``rounds`` times."""
    lines = [f"training steps, min (median) ms over {steps} steps x {rounds} alternating rounds; "
             f"load average before {_load()}"]
    for kind, label in (("cls", "A0h 24x24 batch 64"), ("det", "YOLOv6-n 160x160 batch 16")):
        best = {1: [], 2: []}
        for _ in range(rounds):
            for threads in (1, 2):
                best[threads].append(_step_ms(kind, threads, steps))
        (min1, med1), (min2, med2) = [(min(m for m, _ in best[t]), min(d for _, d in best[t])) for t in (1, 2)]
        speedup = min1 / min2
        lines.append(f"{label}: 1 thread {min1:.1f} ({med1:.1f}) ms, 2 threads {min2:.1f} ({med2:.1f}) ms; "
                     f"2-thread speed-up {speedup:.2f}x -> two 1-thread runs side by side: {2 / speedup:.2f}x")
    lines.append(f"load average after {_load()}")
    return "\n".join(lines)


def variant_report(work: Path, data: Path, epochs: int, rounds: int, variants: dict[str, tuple[str, ...]],
                   same_models: bool) -> str:
    """The pair side by side, one thread each, under each variant's extra ``--set`` overrides, alternating
    ``rounds`` times; the speed-up of the last variant over the first (fastest round of each). ``same_models``:
    the variants must train bit-identical weights, and the report says whether they did."""
    walls: dict[str, list[float]] = {name: [] for name in variants}
    load_before = _load()
    for r in range(rounds):
        for name, sets in variants.items():
            jobs = [(_command(m, work / f"{name}_{r}_{m}", data, epochs, sets), 1) for m in MODELS]
            walls[name].append(_run(jobs)[0])
    (first, base), (last, new) = [(name, min(walls[name])) for name in (list(variants)[0], list(variants)[-1])]
    lines = [f"A0h digits 24x24, {epochs} epochs, RepVGG + QARepVGG side by side, 1 thread each (the main job's way); "
             f"{rounds} alternating rounds; load average before {load_before}, after {_load()}"]
    lines += [f"{name}: " + ", ".join(f"{w:.1f}" for w in walls[name]) + " s wall" for name in variants]
    lines.append(f"speed-up of {last} over {first} (fastest round of each): {base / new:.2f}x")
    if same_models:
        same = {m: _same_weights(work / f"{first}_0_{m}", work / f"{last}_0_{m}") for m in MODELS}
        lines.append(f"{last} weights bit-identical to {first}: "
                     + ", ".join(f"{m} {'yes' if s else 'NO'}" for m, s in same.items()))
    return "\n".join(lines)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new temporary one)")
    p.add_argument("--steps", type=int, default=0, help="time this many single training steps per process "
                   "instead of whole trainings (robust to a shared machine)")
    p.add_argument("--channels-last", action="store_true",
                   help="instead: the pair side by side with NCHW and with channels-last weights")
    p.add_argument("--eval-interval", type=int, default=0, metavar="N",
                   help="instead: the pair side by side evaluating every epoch and every N-th epoch")
    p.add_argument("--rounds", type=int, default=2, help="--channels-last, --eval-interval: alternating rounds of each")
    p.add_argument("--out", type=Path, default=None, help="append the report to this Markdown file")
    args = p.parse_args(argv)
    if args.epochs < 1 or args.steps < 0 or args.rounds < 1 or args.eval_interval < 0:
        p.error("--epochs and --rounds must be at least 1, --steps and --eval-interval at least 0")
    if args.steps:
        report = step_report(args.steps)
        print(report)
        append_report(args.out, "```\n" + report + "\n```")
        return report
    work = args.work or Path(tempfile.mkdtemp(prefix="bench_parallel_train_"))
    if work.exists() and any(work.iterdir()):
        p.error(f"--work {work}: not empty (this benchmark writes only into a new or empty folder)")
    data = work / "digits"
    load_before = _load()
    _run([(_command("repvgg", work / "warmup", data, 1), 1)])  # writes the data once; not timed
    if args.channels_last or args.eval_interval:
        variants = ({"NCHW": (), "channels_last": ("train.channels_last=true",)} if args.channels_last else
                    {"eval_every_epoch": ("train.eval_interval=1",),
                     f"eval_every_{args.eval_interval}": (f"train.eval_interval={args.eval_interval}",)})
        report = variant_report(work, data, args.epochs, args.rounds, variants, same_models=not args.channels_last)
        print(report)
        append_report(args.out, "```\n" + report + "\n```")
        return report
    seq_wall, seq_cpu = 0.0, 0.0
    for model in MODELS:  # one after the other, 2 threads each
        wall, cpu = _run([(_command(model, work / f"seq2_{model}", data, args.epochs), 2)])
        seq_wall, seq_cpu = seq_wall + wall, seq_cpu + cpu
    par_wall, par_cpu = _run([(_command(m, work / f"par1_{m}", data, args.epochs), 1) for m in MODELS])
    for model in MODELS:  # the reference for determinism: each one alone, 1 thread
        _run([(_command(model, work / f"alone1_{model}", data, args.epochs), 1)])
    same = {m: _same_weights(work / f"par1_{m}", work / f"alone1_{m}") for m in MODELS}
    report = "\n".join([
        f"A0h digits 24x24, {args.epochs} epochs, RepVGG + QARepVGG (main job recipe); load average before "
        f"{load_before}, after {_load()}",
        f"sequential, 2 threads each: {seq_wall:.1f} s wall, {seq_cpu:.1f} CPU s",
        f"side by side, 1 thread each: {par_wall:.1f} s wall, {par_cpu:.1f} CPU s",
        f"speed-up of side by side: {seq_wall / par_wall:.2f}x wall",
        "side-by-side weights bit-identical to the same run alone (1 thread): "
        + ", ".join(f"{m} {'yes' if s else 'NO'}" for m, s in same.items())])
    print(report)
    append_report(args.out, "```\n" + report + "\n```")
    return report


if __name__ == "__main__":
    main()
