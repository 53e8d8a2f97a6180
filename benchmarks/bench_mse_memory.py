"""Peak memory and time of the mse calibration's amax search on a detector-sized histogram, side by side.

    python benchmarks/bench_mse_memory.py --out benchmarks/results/mse_memory.md

The main job's RepVGG detector grows activation histograms of about 110k bins (near-dead channels stretch their
range), 12.7k of them occupied. ``mse_amax`` scores every bin from 128 on as the amax, in chunks of 256 candidates:
(256, occupied) tensors. Written with fresh temporaries per step (as it was until 2026-12-07), glibc's heap grew
to gigabytes through fragmentation; in place, in one reused buffer, it stays at one chunk. Each form runs in a
process of its own (its peak RSS is its own, ``ru_maxrss``), both on the same histogram, alternating, and the
amax of both must agree exactly.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks._timing import publish_report  # noqa: E402
from qarep_dense.quant.calibration import mse_amax  # noqa: E402


def histogram(bins: int, occupied: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    hist = np.zeros(bins)
    hist[rng.choice(bins, occupied, replace=False)] = rng.integers(1, 100, occupied)
    return hist, np.linspace(0, 5000, bins + 1)


def mse_amax_fresh_temporaries(hist, edges, num_bits, unsigned=False, start_bin=128, stride=1, chunk=256) -> float:
    """The same search with a new tensor for every elementwise step: the form before 2026-12-07, kept here only
    as this benchmark's baseline."""
    counts = torch.as_tensor(hist, dtype=torch.float32)
    edge_t = torch.as_tensor(edges, dtype=torch.float32)
    centres = (edge_t[1:] + edge_t[:-1]) / 2
    max_bound = torch.tensor(2.0 ** (num_bits - 1 + int(unsigned)) - 1.0)
    min_bound = torch.zeros(()) if unsigned else -max_bound
    candidates = torch.arange(start_bin, centres.numel(), stride)
    occupied = counts > 0
    values, weights = centres[occupied].unsqueeze(0), counts[occupied]
    mses = []
    for part in candidates.split(chunk):
        scale = max_bound / centres[part].unsqueeze(1)
        quant = torch.clamp((values * scale).round(), min_bound, max_bound) / scale
        mses.append((((quant - values) ** 2) * weights).sum(dim=1))
    return float(centres[candidates[int(torch.cat(mses).argmin())]])


def child(form: str, bins: int, occupied: int) -> None:
    hist, edges = histogram(bins, occupied)
    fn = mse_amax if form == "in_place" else mse_amax_fresh_temporaries
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    amax = fn(hist, edges, 8, True)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"form": form, "amax": amax, "s": seconds, "peak_mb": peak / 1e3,
                      "grew_mb": (peak - before) / 1e3}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bins", type=int, default=110236)
    p.add_argument("--occupied", type=int, default=12716)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="append the Markdown table to this file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args.child, args.bins, args.occupied)
    runs: dict[str, list[dict]] = {"fresh_temporaries": [], "in_place": []}
    for _ in range(args.rounds):
        for form in runs:
            out = subprocess.run([sys.executable, __file__, "--child", form, "--bins", str(args.bins), "--occupied",
                                  str(args.occupied)], check=True, capture_output=True, text=True,
                                 env={"OMP_NUM_THREADS": "1", "PATH": ""})
            runs[form].append(json.loads(out.stdout.strip().splitlines()[-1]))
    amaxes = {r["amax"] for rs in runs.values() for r in rs}
    if len(amaxes) != 1:
        raise SystemExit(f"the two forms disagree: amax {sorted(amaxes)}")
    lines = [f"mse amax search, {args.bins} bins ({args.occupied} occupied), one thread, "
             f"{platform.processor() or platform.machine()}, {args.rounds} alternating processes each (every round "
             f"shown: the heap's growth varies from process to process); amax {amaxes.pop():.6g} in all", "",
             "| form | round | seconds | peak RSS MB | growth during the search MB |", "|---|---|---|---|---|"]
    names = {"fresh_temporaries": "fresh temporaries (before)", "in_place": "in place, one buffer"}
    for form, rs in runs.items():
        lines += [f"| {names[form]} | {i + 1} | {r['s']:.2f} | {r['peak_mb']:.0f} | {r['grew_mb']:.0f} |"
                  for i, r in enumerate(rs)]
    worst = {f: max(r["peak_mb"] for r in rs) for f, rs in runs.items()}
    fastest = {f: min(r["s"] for r in rs) for f, rs in runs.items()}
    lines += ["", f"Worst peak: {worst['fresh_temporaries'] / worst['in_place']:.2f}x less in place; fastest round: "
              f"{fastest['fresh_temporaries'] / fastest['in_place']:.2f}x faster in place."]
    publish_report(args.out, "\n".join(lines))


if __name__ == "__main__":
    main()
