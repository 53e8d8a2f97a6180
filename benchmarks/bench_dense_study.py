"""Do detectors and segmentors fine-tuned from RepVGG classifiers lose INT8 accuracy where QARepVGG's hold
(the paper's Tables 8 and 9), on real handwriting at CPU scale?

Backbones: the digits classifiers of both blocks (A0h; RepVGG with its authors' custom L2, QARepVGG with plain L2),
one per seed, as ``--models-root/{repvgg_custom,qarepvgg}_s<seed>/last.pt``. Each is fine-tuned on the digit
canvases (qarep_dense.data.digits_canvas) as a detector (configs/det/digits_canvas_<block>.toml: YOLOv6's recipe)
and as a segmentor (configs/seg/fcn_<block>-a0h_*_digits-canvas-64x64.py: mmseg's schedule, norm_decay_mult=0);
detection also trains the same network from scratch (row "scratch", as YOLOv6 trains). Then, for every model,
the fused model is quantized with W8A8 PTQ (max calibration, the same 256 training canvases and quantizer
settings for every model) and evaluated on the validation canvases (digits no classifier trained on):

    FP32, INT8, weights-only INT8, activations-only INT8 (AP and AP75 for detection, mIoU for segmentation);
    the mechanism per backbone stage: near-dead identity channels and the largest fused weight, in the
    pretrained classifier and after fine-tuning.

    python benchmarks/bench_dense_study.py --seeds 0 1 --recipes base                  # screening
    OMP_NUM_THREADS=1 nohup python benchmarks/bench_dense_study.py --seeds 0 1 2 3 4 &  # the 5-seed study
    python benchmarks/bench_dense_study.py --report-only                               # tables of what finished
    python benchmarks/bench_dense_study.py --rows pretrained --pipeline                # + the quantize search

``--pipeline`` runs the main job's quantize search (``tools/quantize.py --int8-only --max-drop 1`` with the
dense tasks' calibrators and bias correction) on every pretrained row into WORK/pipeline/ and adds its all-INT8
result to the tables, with the count of seeds it brought within 1 point of FP32.

Finished runs are reused (each run folder's results.json and dense_ptq.json); the tables are rebuilt from the
run folders after every run, so two invocations (say ``--tasks det`` and ``--tasks seg``) may share a work dir.
Writes ``--out`` (Markdown) and the same name with ``.json``. The verdict is computed, never typed in.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from dataclasses import asdict
from pathlib import Path

import torch

from qarep_dense.demo import stage_jobs
from qarep_dense.demo.results import task_table
from qarep_dense.demo.verdict import DENSE_CRITERIA, verdict

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("det", "seg")
BLOCKS = {"repvgg": "repvgg_custom", "qarepvgg": "qarepvgg"}  # block -> the classifier folder's prefix
METRICS = {"det": ("AP", "AP75"), "seg": ("mIoU",)}
# Candidate fine-tuning recipes: detection --set overrides, segmentation --cfg-options; a recipe runs only the
# tasks it names. "base" is where the study started: YOLOv6's from-scratch detection rate (lr0 0.01, its runs
# are named so) and the segmentation configs as they are; the detection configs now hold the rate the screen
# of det_lr0.0x chose (0.08).
RECIPES: dict[str, dict] = {
    "base": {"det": ["optim.lr0=0.01"], "seg": {}},
    "seg_lr0.1": {"seg": {"optim_wrapper.optimizer.lr": 0.1}},
    # Twice as long at 0.1 (the poly schedule stretched with it): at 2000 iterations QARepVGG's training loss
    # stays above RepVGG's at either rate; does its FP32 catch up with more iterations?
    "seg_lr0.1_4k": {"seg": {"optim_wrapper.optimizer.lr": 0.1, "train_cfg.max_iters": 4000,
                             "train_cfg.val_interval": 4000, "default_hooks.checkpoint.interval": 4000,
                             "param_scheduler": [dict(type="PolyLR", eta_min=1e-4, power=0.9, begin=0, end=4000,
                                                      by_epoch=False)]}},
    # The same steps on half the batch (8 canvases): half the compute of the main job's segmentors, which are a
    # third of its stage time. Does the story survive (RepVGG collapses, QARepVGG holds, FP32 trained)?
    "seg_lr0.1_4k_b8": {"seg": {"optim_wrapper.optimizer.lr": 0.1, "train_cfg.max_iters": 4000,
                                "train_cfg.val_interval": 4000, "default_hooks.checkpoint.interval": 4000,
                                "train_dataloader.batch_size": 8,
                                "param_scheduler": [dict(type="PolyLR", eta_min=1e-4, power=0.9, begin=0, end=4000,
                                                         by_epoch=False)]}},
    "det_lr0.02": {"det": ["optim.lr0=0.02"]},
    "det_lr0.03": {"det": ["optim.lr0=0.03"]},
    "det_lr0.04": {"det": ["optim.lr0=0.04"]},
    "det_lr0.08": {"det": ["optim.lr0=0.08"]},
    "det_lr0.16": {"det": ["optim.lr0=0.16"]},
    # Twice as long at the chosen rate (mosaic stays on throughout, as at 10 epochs): does QARepVGG's trunk,
    # whose classifiers also needed more epochs than RepVGG's, close its FP32 gap with more iterations?
    "det_lr0.08_e20": {"det": ["optim.lr0=0.08", "optim.epochs=20"]},
}
# The targets: RepVGG loses >= 3 points in >= 4 of 5 seeds, QARepVGG stays within 1.3 in every seed,
# FP32 of the two blocks within 2 points (mean over seeds), detection well over 50 AP.
CRITERIA = DENSE_CRITERIA
FP32_GAP = 2.0


def names_task(recipe: str, job: tuple) -> bool:
    """Whether ``recipe`` covers the task of ``job`` ((task, row, seed, block))."""
    return job[0] in RECIPES[recipe]


def rows_of(task: str) -> tuple[str, ...]:
    return ("pretrained", "scratch") if task == "det" else ("pretrained",)


def run_dir(work: Path, recipe: str, task: str, row: str, seed: int, block: str) -> Path:
    return work / recipe / task / row / f"s{seed}_{block}"


def pipeline_dir(work: Path, recipe: str, task: str, row: str, seed: int, block: str) -> Path:
    """Where --pipeline writes tools/quantize.py's report for a run (outside the run folders the trainer owns)."""
    return work / "pipeline" / recipe / task / row / f"s{seed}_{block}"


def classifier(models_root: Path, block: str, seed: int) -> Path:
    """The classifier a pretrained row starts from: its final train-form checkpoint."""
    return models_root / f"{BLOCKS[block]}_s{seed}" / "last.pt"


# --- training ------------------------------------------------------------------------------------

LOCK = ".study.lock"  # beside the run folder (the trainer claims the folder itself): the pid running its job


def lock_of(run: Path) -> Path:
    return run.parent / f"{run.name}{LOCK}"


def claim(run: Path) -> bool:
    """Take the job of ``run`` for this process; False when another live process holds it (several invocations
    may share a work dir and split its jobs). A lock whose process is gone is taken over."""
    run.parent.mkdir(parents=True, exist_ok=True)
    lock = lock_of(run)
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            pid = int(lock.read_text().strip() or 0)
            if pid <= 0:
                raise ValueError(pid)
            os.kill(pid, 0)
            return False
        except (ProcessLookupError, ValueError):
            lock.unlink(missing_ok=True)
            return claim(run)
    with os.fdopen(fd, "w") as f:
        f.write(str(os.getpid()))
    return True



def train_run(run: Path, recipe: str, task: str, row: str, block: str, seed: int, init: Path | None,
              data_root: Path) -> dict:
    """Fine-tune (or reuse) one model; returns its results.json with the wall seconds training took."""
    if (run / "results.json").is_file():
        return json.loads((run / "results.json").read_text())
    start = time.perf_counter()
    if task == "det":
        from qarep_dense.config import load_config
        from qarep_dense.tasks.detection import DetConfig, train

        sets = [*RECIPES[recipe]["det"], f"train.seed={seed}", f"data.root={data_root}",
                f"model.backbone_init={init or ''}"]
        results = train(load_config(ROOT / "configs" / "det" / f"digits_canvas_{block}.toml", DetConfig, sets), run,
                        device="cpu", overwrite=True)
    else:
        from qarep_dense.tasks.segmentation import train

        config = ROOT / "configs" / "seg" / f"fcn_{block}-a0h_1xb16-2000it_digits-canvas-64x64.py"
        options = {**RECIPES[recipe]["seg"], "randomness.seed": seed,
                   "model.backbone.init_cfg": None if init is None else dict(type="Pretrained", checkpoint=str(init))}
        data_root.mkdir(parents=True, exist_ok=True)
        results = train(config, run, cfg_options=options, data_root=data_root, progress=False, overwrite=True)
    results["wall_seconds"] = time.perf_counter() - start
    from qarep_dense.fileio import write_json_atomic

    write_json_atomic(run / "results.json", results)
    return results


# --- measuring -----------------------------------------------------------------------------------


def quant_row(run: Path, task: str, init: Path | None, calib_batches: int, batch_size: int) -> dict:
    """FP32 / INT8 / weights-only / activations-only metrics and the mechanism of ``run``; cached in dense_ptq.json."""
    cache = run / "dense_ptq.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from qarep_dense.quant import quantize_one_side
    from qarep_dense.tasks.quant_check import CheckOptions, QuantConfig, quantize_and_check
    from qarep_dense.tasks.registry import get_task, load_fused
    from qarep_dense.tasks.splits import request_for

    fused, meta = load_fused(run / "deploy.pt", task)
    evaluator = get_task(task).make_evaluator(request_for(run / "deploy.pt", meta, None, batch_size, progress=False))
    keys = METRICS[task]

    def scores(model: torch.nn.Module) -> dict[str, float]:
        metrics = evaluator.evaluate(model)
        return {k: float(metrics[k]) for k in keys}

    fp32 = scores(fused)
    config = QuantConfig(calibrator="max", num_calib_batches=calib_batches)
    report = quantize_and_check(fused, evaluator.calibration_loader(), evaluator.preprocess, config, evaluator,
                                CheckOptions(ort=False, progress=False), fp32=fp32[keys[0]])
    row = {"fp32": fp32, "int8": {k: float(report.int8_metrics[k]) for k in keys},
           "weights_only": scores(quantize_one_side(report.model, "weights")),
           "acts_only": scores(quantize_one_side(report.model, "activations")),
           "calib_images": report.ptq.calib_images,
           "mechanism": {"before": stage_jobs.checkpoint_mechanism(str(init), "cls") if init else None,
                         "after": stage_jobs.checkpoint_mechanism(str(run / "last.pt"), task)}}
    from qarep_dense.fileio import write_json_atomic

    write_json_atomic(cache, row, indent=1)
    return row


def pipeline_row(run: Path, out: Path, data_root: Path) -> dict:
    """The main job's quantize search (``tools/quantize.py DEPLOY --int8-only --max-drop 1`` with the main job's
    dense calibrators and bias correction, :data:`~qarep_dense.demo.main_job.DENSE_RECIPE`) on ``run``'s fused
    model; its report.json in ``out`` is reused when there."""
    if not (out / "report.json").is_file():
        from qarep_dense.demo.main_job import DENSE_BIAS_CORRECTION, DENSE_CALIBRATORS

        out.parent.mkdir(parents=True, exist_ok=True)
        stage_jobs.quantize_pipeline(str(run / "deploy.pt"), str(data_root), str(out),
                                     calibrators=DENSE_CALIBRATORS, bias_correction=DENSE_BIAS_CORRECTION)
    return pipeline_fields(out)


def pipeline_fields(out: Path) -> dict | None:
    """The main job's fields of a finished pipeline report in ``out`` (None when there is none)."""
    if not (out / "report.json").is_file():
        return None
    return stage_jobs.pipeline_fields(json.loads((out / "report.json").read_text()), out)


# --- the report ----------------------------------------------------------------------------------


def collect(work: Path, recipes: list[str], expected: list[tuple[str, str, int, str]]) -> dict:
    """Every finished row under ``work`` (run folders with both results), per recipe, and which of ``expected``
    ((task, row, seed, block) jobs) have not finished."""
    study: dict = {"criteria": {t: {**asdict(c), "fp32_gap": FP32_GAP} for t, c in CRITERIA.items()}, "recipes": {}}
    for recipe in recipes:
        rows = []
        for cache in sorted((work / recipe).glob("*/*/s*_*/dense_ptq.json")):
            run = cache.parent
            task, row = run.parent.parent.name, run.parent.name
            seed, block = run.name[1:].split("_", 1)
            results = json.loads((run / "results.json").read_text())
            pipeline = pipeline_fields(pipeline_dir(work, recipe, task, row, int(seed), block))
            rows.append({"task": task, "row": row, "seed": int(seed), "block": block,
                         "wall_seconds": results.get("wall_seconds"), **json.loads(cache.read_text()),
                         **({"pipeline": pipeline} if pipeline else {})})
        done = {(r["task"], r["row"], r["seed"], r["block"]) for r in rows}
        if rows:
            study["recipes"][recipe] = {"sets": RECIPES.get(recipe), "rows": rows,
                                        "missing": [list(job) for job in expected
                                                    if job not in done and names_task(recipe, job)],
                                        "verdict": {t: task_verdict(rows, t) for t in TASKS}}
    return study


def task_verdict(rows: list[dict], task: str) -> dict:
    """The pretrained rows' verdict: drops by the demo's rule, plus FP32 comparability (mean over seeds)."""
    head = METRICS[task][0]
    flat = [{"seed": r["seed"], "block": r["block"], "fp32": r["fp32"][head], "int8": r["int8"][head]}
            for r in rows if r["task"] == task and r["row"] == "pretrained"]
    out = verdict(flat, CRITERIA[task])
    means = {b: statistics.fmean([r["fp32"] for r in flat if r["block"] == b and r["seed"] in out["seeds"]])
             for b in BLOCKS} if out["seeds"] else {}
    gap = abs(means["repvgg"] - means["qarepvgg"]) if means else None
    out["fp32_mean"], out["fp32_gap"] = means, gap
    out["reproduces"] = bool(out["reproduces"] and gap is not None and gap <= FP32_GAP)
    if gap is not None:
        out["summary"] += f"; mean FP32 gap {gap:.2f} points ({'within' if gap <= FP32_GAP else 'over'} {FP32_GAP:g})"
    return out


def _pair(before: float | None, after: float, fmt: str) -> str:
    return format(after, fmt) if before is None else f"{format(before, fmt)} → {format(after, fmt)}"


def render(study: dict) -> str:
    lines = ["Dense study: digit canvases (64x64, 2-3 handwritten digits), A0h trunk from the digits classifiers "
             "(`pretrained`) or from scratch (`scratch`); W8A8 PTQ of the fused model, max calibration, "
             "the same 256 training canvases for every model; metrics in percent on the validation canvases. "
             "W-only / A-only: only the weights / only the activations in INT8. Dead: near-dead identity channels "
             "of the trunk (classifier → fine-tuned); max w: its largest fused weight.", ""]
    for recipe, entry in study["recipes"].items():
        lines += [f"## recipe `{recipe}`", "", f"overrides: `{json.dumps(entry['sets'])}`", ""]
        if entry["missing"]:
            lines += ["Not finished: " + ", ".join(f"{t}/{r} s{s} {b}" for t, r, s, b in entry["missing"]) + ".", ""]
        for task in TASKS:
            rows = sorted((r for r in entry["rows"] if r["task"] == task), key=lambda r: (r["row"], r["seed"], r["block"]))
            if rows:
                lines += _task_table(task, rows) + ["", f"**Verdict ({task})**: {entry['verdict'][task]['summary']}.", ""]
    return "\n".join(lines)


def _task_table(task: str, rows: list[dict]) -> list[str]:
    keys = METRICS[task]
    head = " | ".join(f"{k} FP32 | {k} INT8 | {k} drop" for k in keys)
    summary = [{"model": f"{r['row']} {r['block']}", "block": r["block"], "seed": r["seed"], "metric": keys[0],
                "fp32": r["fp32"][keys[0]], "int8": r["int8"][keys[0]],
                **({"pipeline_int8": r["pipeline"]["int8"]} if "pipeline" in r else {})} for r in rows]
    lines = [f"### {task}", "", f"Over seeds (mean (min-max), {keys[0]}):", "", *task_table(summary), "",
             *_pipeline_lines(rows, keys[0]),
             f"| row | seed | block | {head} | W-only | A-only | pipeline | dead | max w | train s |",
             "|---" * (9 + 3 * len(keys)) + "|"]
    for r in rows:
        cells = " | ".join(f"{r['fp32'][k]:.2f} | {r['int8'][k]:.2f} | {r['fp32'][k] - r['int8'][k]:.2f}" for k in keys)
        before, after = r["mechanism"]["before"], r["mechanism"]["after"]
        dead = _pair(sum(s["dead"] for s in before) if before else None, sum(s["dead"] for s in after), "d")
        maxw = _pair(max(s["max_fused_weight"] for s in before) if before else None,
                     max(s["max_fused_weight"] for s in after), ".3g")
        pipe = r.get("pipeline")
        pipe = f"{pipe['int8']:.2f} ({pipe['candidate']})" if pipe else "-"
        lines.append(f"| {r['row']} | {r['seed']} | {r['block']} | {cells} | {r['weights_only'][keys[0]]:.2f} | "
                     f"{r['acts_only'][keys[0]]:.2f} | {pipe} | {dead} | {maxw} | "
                     f"{r.get('wall_seconds') or float('nan'):.0f} |")
    lines += ["", "Per stage (0-4), dead channels / max fused weight, classifier → fine-tuned:", ""]
    for r in rows:
        before = r["mechanism"]["before"] or [None] * len(r["mechanism"]["after"])
        stages = "; ".join(f"{a['stage']}: {_pair(b and b['dead'], a['dead'], 'd')} / "
                           f"{_pair(b and b['max_fused_weight'], a['max_fused_weight'], '.3g')}"
                           for b, a in zip(before, r["mechanism"]["after"]))
        lines.append(f"- {r['row']} s{r['seed']} {r['block']}: {stages}")
    return lines


def _pipeline_lines(rows: list[dict], metric: str) -> list[str]:
    """Per model with pipeline runs: in how many seeds the all-INT8 choice came within the budget."""
    lines = []
    for model in dict.fromkeys(f"{r['row']} {r['block']}" for r in rows):
        runs = [r for r in rows if f"{r['row']} {r['block']}" == model and "pipeline" in r]
        if runs:
            met = [r["seed"] for r in runs if r["pipeline"]["budget_met"] and r["pipeline"]["is_int8"]]
            lines.append(f"- pipeline ({model}): every layer INT8 within 1.0 {metric} of FP32 in {len(met)} of "
                         f"{len(runs)} seeds" + (f" (seeds {', '.join(map(str, met))})" if met else ""))
    return [*lines, ""] if lines else []


def write_report(work: Path, recipes: list[str], out: Path, expected: list[tuple[str, str, int, str]]) -> dict:
    from qarep_dense.fileio import write_json_atomic, write_text_atomic

    study = collect(work, recipes, expected)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out.with_suffix(".json"), study, indent=1)
    write_text_atomic(out, render(study))
    return study


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", nargs="+", default=["base"], choices=list(RECIPES))
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--rows", nargs="+", default=["pretrained", "scratch"], choices=("pretrained", "scratch"))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--blocks", nargs="+", default=list(BLOCKS), choices=list(BLOCKS))
    p.add_argument("--models-root", type=Path, default=Path("work_dirs/pipeline_models"),
                   help="folder of the digits classifiers {repvgg_custom,qarepvgg}_s<seed>/last.pt")
    p.add_argument("--work-dir", type=Path, default=Path("work_dirs/bench_dense_study"))
    p.add_argument("--data-root", type=Path, default=Path("data/digits_canvas"))
    p.add_argument("--calib-batches", type=int, default=8, help="calibration batches of --batch-size images")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--pipeline", action="store_true",
                   help="also run the main job's quantize search on every pretrained row (the 'pipeline' column)")
    p.add_argument("--report-only", action="store_true", help="rebuild the tables from the finished runs")
    p.add_argument("--wait-minutes", type=float, default=0.0,
                   help="wait this long for classifiers still in training (their folder has no results.json yet)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/dense_study.md"))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    expected = [(task, row, seed, block) for row in args.rows for seed in args.seeds for task in args.tasks
                if row in rows_of(task) for block in args.blocks]
    jobs = [] if args.report_only else [(recipe, *job) for recipe in args.recipes for job in expected
                                        if names_task(recipe, job)]
    deadline = time.monotonic() + 60 * args.wait_minutes
    while jobs:
        waiting = []
        for recipe, task, row, seed, block in jobs:
            init = classifier(args.models_root, block, seed) if row == "pretrained" else None
            if init is not None and not (init.parent / "results.json").is_file():  # not trained yet, or training
                waiting.append((recipe, task, row, seed, block))
                continue
            run = run_dir(args.work_dir, recipe, task, row, seed, block)
            if not claim(run):
                print(recipe, task, row, seed, block, "is being run by another process", flush=True)
                continue
            try:
                train_run(run, recipe, task, row, block, seed, init, args.data_root)
                quant_row(run, task, init, args.calib_batches, args.batch_size)
                if args.pipeline and row == "pretrained":
                    pipeline_row(run, pipeline_dir(args.work_dir, recipe, task, row, seed, block), args.data_root)
            finally:
                lock_of(run).unlink(missing_ok=True)
            print(recipe, task, row, seed, block, "done", flush=True)
            write_report(args.work_dir, args.recipes, args.out, expected)
        if waiting and time.monotonic() < deadline:
            time.sleep(30)
        elif waiting:
            print("not run (classifier not finished):", waiting, flush=True)
            waiting = []
        jobs = waiting
    study = write_report(args.work_dir, args.recipes, args.out, expected)
    print(render(study))
    return study


if __name__ == "__main__":
    main()
