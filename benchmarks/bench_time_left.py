"""How good is the main job's estimate of the time left? Replays a finished main job's stage records.

Each stage record (``OUT/.stages/*.json``) holds when the stage started and ended. Replayed in that order
through :class:`qarep_dense.demo.progress.TimeLeft` (the estimate the progress line shows), the estimate at each
stage's end is set beside the truth (the run's end minus that moment) and beside the count-based estimate
(time so far / stages done x stages left: tqdm's, at its average rate), which the progress line used before.

    python benchmarks/bench_time_left.py work_dirs/demo [--workers 2] [--cls-epochs 40] [--det-epochs 10]

The replay is exact only for the records' order and times; a stage reused from an earlier run has no record
of its own time in this run and is skipped. Prints a markdown table and the largest errors after the first
long stage.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from qarep_dense.demo.progress import PACE_FROM_SECONDS, TimeLeft, expected_seconds  # noqa: E402

ALONE = ("speed_",)  # the latency stages run with nothing beside them (main_job.speed_jobs)


def load(out: Path) -> dict[str, tuple[float, float]]:
    records = {}
    for path in sorted((out / ".stages").glob("*.json")):
        data = json.loads(path.read_text())
        records[data["stage"]] = (float(data["start"]), float(data["end"]))
    if not records:
        raise SystemExit(f"error: {out / '.stages'}: no stage records (is it a main job's results folder?)")
    return records


def replay(records: dict[str, tuple[float, float]], workers: int, cls_epochs: int, det_epochs: int) -> list[dict]:
    first, last = min(s for s, _ in records.values()), max(e for _, e in records.values())
    now = [first]
    expected = expected_seconds(records, cls_epochs, det_epochs)
    left = TimeLeft(expected, workers, alone=[n for n in records if n.startswith(ALONE)], clock=lambda: now[0])
    events = sorted([(s, 0, n) for n, (s, _) in records.items()] + [(e, 1, n) for n, (_, e) in records.items()])
    rows, done = [], 0
    for moment, ends, name in events:
        now[0] = moment
        if not ends:
            left.timed(name, lambda: None)()
            continue
        left.finished(name)
        done += 1
        elapsed = moment - first
        rows.append({"elapsed": elapsed, "stage": name, "estimate": left.seconds_left(),
                     "count_based": elapsed / done * (len(records) - done), "truth": last - moment,
                     "long_done": any(expected[n] >= PACE_FROM_SECONDS for n in left.took)})
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="a finished main job's results folder (with .stages/)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cls-epochs", type=int, default=40)
    ap.add_argument("--det-epochs", type=int, default=10)
    args = ap.parse_args(argv)
    rows = replay(load(args.out), args.workers, args.cls_epochs, args.det_epochs)
    print(f"{args.out}: {len(rows)} stages, {rows[-1]['elapsed'] / 60:.1f} minutes from the first start to the "
          "last end\n")
    print("| minutes in | stage ended | estimate (min left) | count-based (min left) | truth (min left) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['elapsed'] / 60:.1f} | {r['stage']} | {r['estimate'] / 60:.1f} | {r['count_based'] / 60:.1f} "
              f"| {r['truth'] / 60:.1f} |")
    after = [r for r in rows if r["long_done"]]
    if after:
        def worst(key: str) -> str:
            row = max(after, key=lambda r: abs(r[key] - r["truth"]))
            return f"{abs(row[key] - row['truth']) / 60:.1f} min (after {row['stage']})"
        print(f"\nLargest error once a long stage had finished: estimate {worst('estimate')}, "
              f"count-based {worst('count_based')}.")


if __name__ == "__main__":
    main()
