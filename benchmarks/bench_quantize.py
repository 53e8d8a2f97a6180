"""tools/quantize.py's pipeline on the main job's digits models, per seed, next to the fixed recipes.

    python benchmarks/bench_quantize.py --models /work/runs/pipeline_models --data DIGITS24_ROOT \
        --work /work/runs/pipeline_models/bench --results benchmarks/results/quantize_pipeline
    python benchmarks/bench_quantize.py --foreign --work DIR --results ...   # converted timm RepVGG and YOLOv6

--models holds ``<name>_s<seed>/deploy.pt`` (``--train`` trains the missing ones first, one after the other,
with tools/train_cls.py and the arguments of :data:`RECIPE`) trained with the main job's classification recipe (the recipe
study's ``s24_nowarm_e40``: A0h, 24x24 digits, lr 0.4 from step 1, wd 5e-4, 40 epochs; RepVGG with custom L2
that also decays the identity-BN gammas, QARepVGG with normal L2). Per model, one pipeline run
(``quantize_checkpoint``, default settings, all-INT8: ``--int8-only``) gives every column: the fixed recipes
are its candidates with the max calibrator (plain, + repair, + CLE, CLE then repair, + bias correction, + repair
and bias correction), evaluated on validation AFTER the choice; "choice" is the candidate the selection split
picked, "choice_without_bc" the one it picks among the candidates without bias correction. A report already in WORK is reused.
Prints the table and appends it to RESULTS.md and RESULTS.json (a list of runs).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from qarep_dense.tasks.quantize_pipeline import QuantizeOptions, quantize_checkpoint  # noqa: E402
from _timing import append_report, digits_models_parser, trained_models  # noqa: E402

# The main job's classification recipe as train_cls.py arguments (the recipe study's s24_nowarm_e40).
RECIPE = ["--set", "optim.lr=0.4", "--set", "optim.weight_decay=5e-4", "--set", "optim.warmup_epochs=0",
          "--set", "data.image_size=24", "--set", "optim.epochs=40", "--set", "train.progress=false",
          "--set", "train.deterministic=true"]
CONFIGS = {"repvgg_custom": ("configs/cls/digits_repvgg.toml", ["--set", "optim.l2=custom"]),
           "qarepvgg": ("configs/cls/digits_qarepvgg.toml", [])}
FIXED = {"max": "max", "repair": "max+repair", "cle": "max+cle", "cle+repair": "max+cle_repair", "max+bc": "max+bc",
         "repair+bc": "max+repair+bc"}


def parse_args() -> argparse.Namespace:
    p = digits_models_parser(__doc__.split("\n\n")[0], list(CONFIGS))
    p.add_argument("--max-drop", type=float, default=1.0)
    p.add_argument("--selection-images", type=int, default=256, help="the pipeline's selection split size")
    p.add_argument("--train", action="store_true", help="train the missing models first (about 4 min each, 1 thread)")
    p.add_argument("--foreign", action="store_true", help="run a converted timm RepVGG and a converted YOLOv6 instead")
    return p.parse_args()


def run_one(checkpoint: Path, data: Path | None, out: Path, max_drop: float, **extra) -> dict:
    if (out / "report.json").is_file():
        return json.loads((out / "report.json").read_text())
    opts = QuantizeOptions(checkpoint, data, out, max_drop=max_drop, int8_only=True, progress=False, **extra)
    return quantize_checkpoint(opts)


def row(name: str, seed: int, report: dict, max_drop: float) -> dict:
    by_name = {c["name"]: c for c in report["candidates"]}
    out = {"model": name, "seed": seed, "fp32": report["fp32"],
           **{k: by_name[v]["validation"] for k, v in FIXED.items() if v in by_name},
           "choice": report["chosen"]["candidate"], "choice_int8": report["int8"], "int8_ort": report["int8_ort"],
           "drop": report["drop"], "within": report["drop"] <= max_drop,
           "float_layers": len(report["chosen"]["float_layers"]),
           "integer_convs": f"{report['integer_convs']}/{report['convs']}",
           "spearman": report["selection"]["spearman_score_vs_validation"],
           "seconds": report["seconds"]["total"], "cpu_seconds": report["seconds"].get("total_cpu")}
    # what the selection would have picked without the bias-corrected candidates (the earlier pipeline)
    uncorrected = [c for c in report["candidates"] if not c["name"].endswith("+bc")]
    if len(uncorrected) < len(report["candidates"]):
        before = min(uncorrected, key=lambda c: c["selection"]["score"])
        out["choice_without_bc"] = f"{before['name']} {before['validation']:.2f}"
    best = max(report["candidates"], key=lambda c: c["validation"])
    out["best_on_val"] = f"{best['name']} {best['validation']:.2f}"  # hindsight: NOT available to the pipeline
    return out


def _f(v) -> str:
    return f"{v:.2f}" if isinstance(v, float) else str(v)


def table(rows: list[dict], max_drop: float) -> str:
    cols = ["model", "seed", "fp32", *FIXED, "choice_without_bc", "choice", "choice_int8", "int8_ort", "drop", "within",
            "float_layers",
            "integer_convs", "spearman", "best_on_val", "seconds", "cpu_seconds"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_f(r.get(c, "")) for c in cols) + " |" for r in rows]
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        hits = sum(r["within"] for r in mine)
        worst = max(r["drop"] for r in mine)
        lines.append(f"\n{name}: pipeline's all-INT8 choice within {max_drop:.1f} of FP32 in {hits} of {len(mine)} "
                     f"seeds (worst drop {worst:.2f}); the same models in ONNX Runtime in "
                     f"{sum(r['fp32'] - r['int8_ort'] <= max_drop for r in mine)} of {len(mine)} (worst drop "
                     f"{max(r['fp32'] - r['int8_ort'] for r in mine):.2f}); max calibration alone in "
                     f"{sum(r['fp32'] - r['max'] <= max_drop for r in mine)} of {len(mine)}.")
    return "\n".join(lines)


def train_missing(models: Path, data: Path, names: list[str], seeds: list[int]) -> None:
    """Train every missing ``<name>_s<seed>`` with the main job's recipe (the digits are exported to ``data``)."""
    import subprocess

    for seed in seeds:
        for name in names:
            work = models / f"{name}_s{seed}"
            if (work / "deploy.pt").is_file():
                continue
            config, extra = CONFIGS[name]
            cmd = [sys.executable, str(ROOT / "tools" / "train_cls.py"), str(ROOT / config), "--work-dir", str(work),
                   *RECIPE, *extra, "--set", f"data.root={data}", "--set", f"train.seed={seed}"]
            print(f"train {work.name}", flush=True)
            subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def digits(args: argparse.Namespace) -> list[dict]:
    data = args.data or args.models / "data" / "digits24"
    if args.train:
        train_missing(args.models, data, args.names, args.seeds)
    rows = []
    for name, seed, ckpt in trained_models(args):
        tag = "" if args.selection_images == 256 else f"_sel{args.selection_images}"
        report = run_one(ckpt, data, args.work / f"{name}_s{seed}{tag}", args.max_drop,
                         selection_images=args.selection_images)
        rows.append(row(name, seed, report, args.max_drop))
        print(table(rows[-1:], args.max_drop).split("\n\n")[0].splitlines()[-1], flush=True)
    return rows


def foreign(args: argparse.Namespace) -> list[dict]:
    """Random-weight timm repvgg_a0 (10 classes) on digits, and a YOLOv6-layout detector on the synthetic COCO."""
    import timm

    from qarep_dense.data.synthetic.coco import generate_coco

    args.work.mkdir(parents=True, exist_ok=True)
    rows = []
    timm_file = args.work / "timm_repvgg_a0.pth"
    if not timm_file.exists():
        torch.manual_seed(0)
        torch.save(timm.create_model("repvgg_a0", pretrained=False, num_classes=10).state_dict(), timm_file)
    report = run_one(timm_file, args.data or args.models / "data" / "digits24", args.work / "timm_a0", args.max_drop,
                     source="timm", image_size=24)
    rows.append({"model": "timm repvgg_a0 (random weights)", **_foreign_cols(report)})
    from test_convert_yolov6 import Model, yolov6_modules  # a YOLOv6 v2-era layout, as tests build it

    y6_file = args.work / "yolov6_test.pt"
    if not y6_file.exists():
        with yolov6_modules():
            torch.manual_seed(0)
            torch.save(Model("test", "repvgg", num_classes=3).eval().state_dict(), y6_file)
    det_cfg = ROOT / "configs" / "det" / "synthetic_test.toml"
    generate_coco(args.work / "synthetic_coco", num_train=48, num_val=8, image_size=64, seed=0, num_classes=3)
    report = run_one(y6_file, args.work / "synthetic_coco", args.work / "yolov6_test",
                     args.max_drop, source="yolov6", block="repvgg", image_size=64, data_config=det_cfg, batch_size=4,
                     calib_batches=2, selection_images=8)
    rows.append({"model": "YOLOv6 test scale (random weights)", **_foreign_cols(report)})
    return rows


def _foreign_cols(report: dict) -> dict:
    return {"metric": report["metric"], "fp32": report["fp32"], "choice": report["chosen"]["candidate"],
            "int8": report["int8"], "int8_ort": report["int8_ort"],
            "integer_convs": f"{report['integer_convs']}/{report['convs']}",
            "cle_pairs": max(c.get("cle_pairs", 0) for c in report["candidates"]), "seconds": report["seconds"]["total"]}


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    start = time.time()
    rows = foreign(args) if args.foreign else digits(args)
    if args.foreign:
        cols = list(rows[0])
        text = "\n".join(["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols),
                          *("| " + " | ".join(_f(r[c]) for c in cols) + " |" for r in rows)])
    else:
        text = table(rows, args.max_drop)
    what = "converted checkpoints" if args.foreign else f"digits models, {args.selection_images} selection images"
    head = (f"## quantize pipeline, {what} "
            f"({time.strftime('%Y-%m-%d %H:%M')}, {platform.processor() or platform.machine()}, torch threads 1, "
            f"{time.time() - start:.0f} s)\n")
    print(head + text)
    if args.results is not None:
        append_report(args.results.with_suffix(".md"), head + text)
        path = args.results.with_suffix(".json")
        runs = json.loads(path.read_text()) if path.exists() else []
        runs.append({"kind": "foreign" if args.foreign else "digits", "date": time.strftime("%Y-%m-%d %H:%M"),
                     "rows": rows})
        path.write_text(json.dumps(runs, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
