"""Does correcting the biases of only the best few candidates choose as well as correcting all of them?

Bias correction costs 3-4x a calibration, so ``tools/quantize.py --bias-correction auto`` scores every
uncorrected candidate and then only the corrected twins of the ``k`` best (``correct_best`` of
:func:`qarep_dense.quant.search.run_search`); ``--bias-correction all`` scores every candidate in both forms.
This replays recorded ``all`` searches: each report.json holds every candidate's selection score, search seconds
and validation metric, and a candidate's result does not depend on which others ran (a corrected twin starts
from its own uncorrected calibration either way), so the choice ``auto`` would have made is read off exactly,
with the same :func:`~qarep_dense.quant.search.choose` and :func:`~qarep_dense.quant.search.corrected_twins`.

    python benchmarks/bench_search_refine.py RUNS/**/quantize/report.json --k 1 3 5

Per report and k: the chosen candidate's validation metric minus the full search's (points), whether the budget
verdict is the same, and the search seconds of the candidates scored (the ratio to the full search's).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from qarep_dense.quant.search import CandidateResult, CandidateSpec, SelectionScore, choose, corrected_twins


def recorded(report: dict) -> list[CandidateResult]:
    return [CandidateResult(CandidateSpec(c["calibrator"], c["transform"], c["name"].endswith("+bc")), c["seconds"],
                            SelectionScore(**c["selection"]), validation=c["validation"]) for c in report["candidates"]]


def replay(results: list[CandidateResult], k: int) -> tuple[CandidateResult, float]:
    """(what auto with ``k`` chooses, the search seconds of the candidates it scores)."""
    uncorrected = [r for r in results if not r.spec.bias_correction]
    twins = set(corrected_twins(uncorrected, k))
    scored = uncorrected + [r for r in results if r.spec in twins]
    return choose(scored), sum(r.seconds for r in scored)


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reports", nargs="+", type=Path, help="report.json files of searches with --bias-correction all")
    p.add_argument("--k", type=int, nargs="+", default=[1, 3, 5])
    args = p.parse_args(argv)
    rows = []
    for path in args.reports:
        report = json.loads(path.read_text())
        results = recorded(report)
        if not any(r.spec.bias_correction for r in results) or not any(not r.spec.bias_correction for r in results):
            print(f"{path}: skipped (not a search of both forms)")
            continue
        full = choose(results)
        fp32, budget = report["fp32"], report["max_drop"]
        row = {"report": str(path), "task": report["task"], "full": full.validation,
               "full_met": fp32 - full.validation <= budget, "full_s": sum(r.seconds for r in results)}
        for k in args.k:
            pick, seconds = replay(results, k)
            row[k] = {"diff": pick.validation - full.validation, "same_verdict": (fp32 - pick.validation <= budget)
                      == row["full_met"], "seconds": seconds, "name": pick.spec.name}
        rows.append(row)
        cells = " | ".join(f"k={k}: {row[k]['diff']:+.2f} {'same' if row[k]['same_verdict'] else 'OTHER'} verdict, "
                           f"{row[k]['seconds'] / row['full_s']:.2f}x time" for k in args.k)
        print(f"{path} ({row['task']}): all {full.validation:.2f} ({'met' if row['full_met'] else 'missed'}, "
              f"{row['full_s']:.0f} s) | {cells}")
    for k in args.k:
        same = sum(r[k]["same_verdict"] for r in rows)
        ratio = sum(r[k]["seconds"] for r in rows) / max(sum(r["full_s"] for r in rows), 1e-9)
        diffs = [r[k]["diff"] for r in rows]
        print(f"k={k}: same budget verdict in {same} of {len(rows)}; metric vs all: {min(diffs):+.2f} to "
              f"{max(diffs):+.2f} (mean {sum(diffs) / len(diffs):+.2f}); search time {ratio:.2f}x of all")
    return rows


if __name__ == "__main__":
    main()
