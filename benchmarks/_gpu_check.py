"""Helpers of benchmarks/gpu_check.sh: read what each step wrote, check it, and build the summary.

    python benchmarks/_gpu_check.py ddp-evidence TASK WORK_DIR LOG     # exit 1 unless the run went through DDP
    python benchmarks/_gpu_check.py summarize RUN_DIR RESULTS_DIR MODE # gpu_check.{json,md} + the table on stdout
    python benchmarks/_gpu_check.py environment OUT_JSON MODE MODULE...  # the environment check (below)

RUN_DIR holds steps.tsv (name, status, exit code, seconds per step, written by the script), logs/ and
each step's outputs; MODE is "gpu" or "dry-run" (a loss that does not fall fails a step only on the GPU,
where the step runs long enough for it to fall).
"""
from __future__ import annotations

import importlib
import json
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

# Lines that prove a run joined a process group: ours (tasks/common.py) and mmengine's environment dump.
DDP_EVIDENCE = {"cls": "distributed: rank 0 of", "det": "distributed: rank 0 of", "seg": "Distributed training: True"}


def loss_trend(losses: list[float]) -> dict:
    """Mean loss of the first and of the last tenth of the steps (at least one step each), and whether it fell."""
    if not losses:
        return {}
    k = max(1, len(losses) // 10)
    start, end = statistics.fmean(losses[:k]), statistics.fmean(losses[-k:])
    return {"loss_start": start, "loss_end": end, "loss_falls": end < start}


def ddp_evidence(task: str, work_dir: Path, log: Path) -> int:
    texts = [p.read_text(errors="replace") for p in [log, *work_dir.rglob("*.log")] if p.is_file()]
    if any(DDP_EVIDENCE[task] in t for t in texts):
        print(f"{task}: ran through DDP ({DDP_EVIDENCE[task]!r} found)")
        return 0
    print(f"{task}: no sign of a process group ({DDP_EVIDENCE[task]!r} not in {log} or {work_dir}/**/*.log): "
          "the run did not exercise DDP", file=sys.stderr)
    return 1


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def _seg_train(run: Path, name: str) -> dict:
    """Throughput, memory and loss of a tools/train_seg.py run from mmengine's scalars.json."""
    work = run / name
    records = []
    for scalars in sorted(work.glob("*/vis_data/scalars.json")):
        records += [json.loads(line) for line in scalars.read_text().splitlines() if line.strip()]
    train = [r for r in records if "loss" in r and "time" in r]
    batch = _read_json(run / f"{name}.meta.json").get("batch", 1)
    out: dict = {}
    if train:
        steady = train[1:] or train  # the first window holds start-up (cudnn autotune, allocator)
        out["images_per_s"] = batch / statistics.median(r["time"] for r in steady)
        memory = [r["memory"] for r in train if "memory" in r]
        out["peak_memory_gib"] = max(memory) / 1024 if memory else None
        out.update(loss_trend([r["loss"] for r in train]))
    results = _read_json(work / "results.json")
    if results:
        out["metric"] = f"mIoU {results['deploy']['mIoU']:.2f} (deploy)"
    return out


def _metrics(run: Path, name: str) -> dict:
    """The numbers of one step from the files it wrote (empty when it wrote none)."""
    if name in ("det_amp", "cls_amp", "cls_compile"):
        data = _read_json(run / f"{name}.json")
        if name.startswith("cls"):
            data = data.get("compile" if name == "cls_compile" else "eager", {}) | \
                ({"error": data["compile"]["error"]} if "error" in data.get("compile", {}) else {})
        out = {k: data[k] for k in ("images_per_s", "peak_memory_gib", "error") if data.get(k) is not None}
        return out | loss_trend(data.get("losses", []))
    if name == "seg_amp":
        return _seg_train(run, name)
    if name.startswith("ptq_"):
        rows = _read_json(run / name / "ptq_table.json").get("rows", [])
        return {"metric": "; ".join(f"FP32 {r['fp32']:.2f} -> INT8 {r['int8']:.2f} ({r['calibrator']}, "
                                    f"calib {r.get('calib_seconds', 0):.1f} s)" for r in rows)} if rows else {}
    if name.startswith("ddp_"):
        results = _read_json(run / name / "results.json")
        deploy = results.get("deploy", {})
        key = next((k for k in ("top1", "AP", "mIoU") if k in deploy), None)
        return {"metric": f"{key} {deploy[key]:.2f} (deploy)"} if key else {}
    return {}


def summarize(run: Path, results: Path, mode: str) -> int:
    steps = []
    for line in (run / "steps.tsv").read_text().splitlines():
        name, status, code, seconds, note = (line.split("\t") + [""])[:5]
        step = {"name": name, "status": status, "exit_code": int(code), "seconds": float(seconds), "note": note}
        step.update(_metrics(run, name))
        if mode == "gpu" and status == "ok" and step.get("loss_falls") is False:
            step["status"], step["note"] = "FAILED", "loss did not fall"
        steps.append(step)
    failed = [s["name"] for s in steps if s["status"] == "FAILED"]
    summary = {"mode": mode, "ok": not failed, "failed": failed, "steps": steps,
               "environment": _read_json(run / "environment.json")}
    results.mkdir(parents=True, exist_ok=True)
    (results / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    table = render(summary)
    (results / "gpu_check.md").write_text(table)
    print(table, end="")
    return 0


def _fmt(value, spec: str) -> str:
    return format(value, spec) if isinstance(value, (int, float)) else "-"


def render(summary: dict) -> str:
    env = summary["environment"]
    lines = [f"gpu_check ({summary['mode']}): {env.get('device', '?')}, torch {env.get('torch', '?')}, "
             f"python {env.get('python', '?')}", "",
             "| step | status | s | img/s | peak GiB | loss start -> end | result / note |",
             "|---|---|---|---|---|---|---|"]
    for s in summary["steps"]:
        loss = (f"{s['loss_start']:.3f} -> {s['loss_end']:.3f}" + (" (falls)" if s["loss_falls"] else " (flat/up)")
                if "loss_start" in s else "-")
        note = "; ".join(x for x in (s.get("metric", ""), s.get("error", ""), s.get("note", "")) if x) or "-"
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.0f} | {_fmt(s.get('images_per_s'), '.1f')} | "
                     f"{_fmt(s.get('peak_memory_gib'), '.2f')} | {loss} | {note} |")
    lines += ["", "all steps passed" if summary["ok"] else f"FAILED: {', '.join(summary['failed'])}"]
    return "\n".join(lines) + "\n"


NO_CUDA = 3  # environment's exit code when the GPU run finds no CUDA device


def environment(out: Path, mode: str, modules: list[str]) -> int:
    """Import every module the steps need and print, as the last line of stdout, those that fail ("name (Error:
    message)", "; "-joined; empty when all import). When all import: on the GPU, exit NO_CUDA unless torch sees a
    CUDA device; then write the environment (versions, device, commit, free /dev/shm) to ``out``.

    One process for the three checks, since every Python that imports torch takes seconds to start (2-3 s on a
    2-core CPU, a few of them per run): the imports, the device, the record."""
    missing = []
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as err:  # an ImportError, or a broken binary wheel
            missing.append(f"{name} ({type(err).__name__}: {err})")
    print("; ".join(missing), flush=True)
    if missing:
        return 0
    import torch

    if mode == "gpu" and not torch.cuda.is_available():
        return NO_CUDA
    cuda = torch.cuda.is_available() and mode == "gpu"
    try:  # a copied tree may have no .git, a machine no git
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    env = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
           "device": torch.cuda.get_device_name(0) if cuda else "cpu", "commit": commit or None}
    try:  # DataLoader workers pass batches through /dev/shm: a small one makes them die with a bus error
        env["shm_free_gib"] = round(shutil.disk_usage("/dev/shm").free / 2 ** 30, 1)
    except OSError:
        env["shm_free_gib"] = None
    out.write_text(json.dumps(env, indent=2) + "\n")
    print("[gpu_check] " + ", ".join(f"{k} {v}" for k, v in env.items()), file=sys.stderr)
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 4 and argv[0] == "ddp-evidence":
        return ddp_evidence(argv[1], Path(argv[2]), Path(argv[3]))
    if len(argv) == 4 and argv[0] == "summarize":
        return summarize(Path(argv[1]), Path(argv[2]), argv[3])
    if len(argv) >= 3 and argv[0] == "environment":
        return environment(Path(argv[1]), argv[2], argv[3:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
