"""The anchor, side by side: NVIDIA Model Optimizer's own INT8 paths next to tools/quantize.py on each backend.

    python benchmarks/bench_backends.py --models /work/runs/pipeline_models --work /work/runs/backends/anchor \
        --results benchmarks/results/backends

On the main job's digits models (``<name>_s<seed>/deploy.pt`` under --models, made by
``benchmarks/bench_quantize.py --train``), or with ``--task det`` / ``--task seg`` on its detectors and segmentors
(--models OUT/det or OUT/seg of a main job, --data its canvases OUT/data/digits_canvas), per model:

- ``mtq_default``: ``mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop)`` as modelopt ships it (per-channel
  weights, signed per-tensor inputs, max calibration), calibrated on the pipeline's 8 calibration batches;
- ``mtq_ort_fix``: the same with the input quantizers after a ReLU unsigned (those never negative on the
  calibration batches: the first layer's input and a detector head's SiLU outputs stay signed), the fix that lets
  onnxruntime fuse modelopt's plain export;
- ``autoquant``: ``mtq.auto_quantize`` (gradient scores of the task's own loss on the calibration batches:
  cross-entropy on the labels, YOLOv6's detection loss on the boxes, the decode head's loss on the masks) over
  ``INT8_DEFAULT_CFG`` and "no quantization" per layer, at an effective-bits constraint that admits at most two
  float layers (8 + 8 * (p1 + p2 + p3/2) / P bits, p_i the smallest layers' weight counts, P all of them);
- ``quantize_pq`` / ``quantize_mo``: ``tools/quantize.py --int8-only`` (its library call) with
  ``--backend pytorch-quantization`` / ``modelopt``; for detectors and segmentors the main job's command
  (``--calibrators max percentile mse --bias-correction off``), whose pytorch-quantization report the main job
  already wrote beside the model (``quantize/report.json``: read, not rerun).

Columns: the task's metric (top-1, AP, mIoU) on the validation split (PyTorch fake quant), drop from FP32, layers left in float, integer convs in
ORT (the project's check, ``check_ort_int8``; for the modelopt rows the plain ``torch.onnx.export`` file, and in
brackets after the project's exact ORT rewrites), wall time of the quantization (mtq rows: calibration and search;
pipeline rows: the whole command, 40 candidates, validation of all of them and the ORT check). A model already done
in WORK is reused (rows.json per model). Prints the table and appends it to RESULTS.md / RESULTS.json.
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from qarep_dense.demo.main_job import DENSE_BIAS_CORRECTION, DENSE_CALIBRATORS  # noqa: E402
from qarep_dense.demo.stage_jobs import quantize_pipeline  # noqa: E402
from qarep_dense.quant.backends import get_backend  # noqa: E402
from qarep_dense.quant.export import activations_to_uint8, check_ort_int8, requantize_before_relu  # noqa: E402
from qarep_dense.deploy.ort import export_graph  # noqa: E402
from qarep_dense.tasks.quantize_pipeline import QuantizeOptions, quantize_checkpoint  # noqa: E402
from qarep_dense.tasks.registry import get_task, load_fused  # noqa: E402
from qarep_dense.tasks.splits import request_for, task_data  # noqa: E402
from _timing import append_report, digits_models_parser, trained_models  # noqa: E402

NAMES = {"cls": ("repvgg_custom", "qarepvgg"), "det": ("repvgg", "qarepvgg"), "seg": ("repvgg", "qarepvgg")}
CALIB_BATCHES, BATCH = 8, 32


def parse_args() -> argparse.Namespace:
    p = digits_models_parser(__doc__.split("\n\n")[0], sorted({n for names in NAMES.values() for n in names}))
    p.add_argument("--task", choices=tuple(NAMES), default="cls",
                   help="the models under --models: classifiers (default), or a main job's detectors / segmentors")
    p.add_argument("--skip-pipeline", action="store_true", help="only the modelopt rows (no tools/quantize.py runs)")
    p.add_argument("--report-only", action="store_true", help="run nothing: the table of what WORK already holds")
    p.set_defaults(names=None)
    args = p.parse_args()
    names = args.names or list(NAMES[args.task])  # default: the task's two blocks
    unknown = sorted(set(names) - set(NAMES[args.task]))
    if unknown:
        p.error(f"--names {unknown}: not a {args.task} model name; choose from {list(NAMES[args.task])}")
    args.names = names
    return args


# --- modelopt's own paths ---------------------------------------------------------------------------

def float_layers(model: nn.Module) -> list[str]:
    """Conv/Linear layers whose weight quantizer is off (or that have none) after a modelopt flow."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            q = getattr(m, "weight_quantizer", None)
            if q is None or not q.is_enabled:
                out.append(name)
    return out


def nonnegative_inputs(model: nn.Module, batches: list, preprocess) -> list[str]:
    """Conv/Linear layers whose input was never negative on the calibration batches: the inputs that come out of
    a ReLU (the first layer's normalized image and a head's SiLU outputs are negative on any real batch)."""
    lowest: dict[str, float] = {}
    hooks = [m.register_forward_pre_hook(lambda _, inputs, n=name: lowest.__setitem__(
        n, min(lowest.get(n, 0.0), float(inputs[0].min()))))
        for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            for images, *_ in batches:
                model(preprocess(images))
    finally:
        for h in hooks:
            h.remove()
    return [name for name, low in lowest.items() if low >= 0.0]


def ort_fix_config(mtq, unsigned_layers: list[str]) -> dict:
    """INT8_DEFAULT_CFG with the input quantizers of ``unsigned_layers`` (their inputs come out of a ReLU)
    unsigned."""
    cfg = copy.deepcopy(mtq.INT8_DEFAULT_CFG)
    cfg["quant_cfg"] += [{"quantizer_name": f"{name}.input_quantizer", "cfg": {"num_bits": 8, "axis": None,
                                                                              "unsigned": True}}
                         for name in unsigned_layers]
    return cfg


def out_of_place(model: nn.Module) -> nn.Module:
    """``model`` with in-place activations made out-of-place: AutoQuantize's gradient scores hook every layer's
    backward, and autograd refuses an in-place ReLU on a hooked output ("Output 0 of BackwardHookFunction is a
    view and is being modified inplace")."""
    for m in model.modules():
        if getattr(m, "inplace", False):
            m.inplace = False
    return model


def two_float_layer_bits(fused: nn.Module) -> float:
    """Effective bits that admit any two of the smallest layers in float but never three layers."""
    sizes = sorted(m.weight.numel() for m in fused.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    return 8.0 + 8.0 * (sizes[0] + sizes[1] + sizes[2] / 2) / sum(sizes)


def ort_counts(model: nn.Module, example: torch.Tensor) -> str:
    """Integer convs in ORT of modelopt's plain export, and [after the project's exact ORT rewrites]."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        reference = model(example)
        plain = export_graph(model.eval(), example, Path(tmp) / "plain.onnx", quiet=True)
        first = check_ort_int8(plain, example, reference, pre_process=True)
        proto = onnx.load(str(plain))
        requantize_before_relu(proto)
        activations_to_uint8(proto)
        onnx.save(proto, str(Path(tmp) / "rewritten.onnx"))
        second = check_ort_int8(Path(tmp) / "rewritten.onnx", example, reference, pre_process=True)
    return f"{first.integer_convs}/{first.convs_total} [{second.integer_convs}/{second.convs_total}]"


def task_loss(fused: nn.Module, meta: dict, preprocess):
    """``loss(model, batch)`` for AutoQuantize's gradient scores: the loss the model was trained with, so that a
    layer's score is what its quantization costs the task: the task's own QAT loss (classifiers: cross-entropy;
    detectors: YOLOv6's detection loss with the checkpoint's settings; segmentors: the decode head's loss of the
    checkpoint's mmseg config)."""
    return get_task(meta["task"]).qat_loss(meta, fused, preprocess, "cpu")


def mtq_rows(fused: nn.Module, batches: list, preprocess, evaluate, loss) -> dict:
    get_backend("modelopt")  # imports modelopt with torch.nn as torch ships it (see the backend's module doc)
    import modelopt.torch.quantization as mtq

    def forward_loop(model: nn.Module) -> None:
        with torch.no_grad():
            for images, *_ in batches:
                model(preprocess(images))

    example = preprocess(batches[0][0][:8])
    rows = {}
    for key, cfg in (("mtq_default", mtq.INT8_DEFAULT_CFG), ("mtq_ort_fix", ort_fix_config(
            mtq, nonnegative_inputs(fused, batches, preprocess)))):
        start = time.perf_counter()
        model = mtq.quantize(copy.deepcopy(fused), cfg, forward_loop)
        seconds = time.perf_counter() - start
        rows[key] = {"score": evaluate(model), "float_layers": float_layers(model), "ort": ort_counts(model, example),
                     "seconds": seconds}
    bits = two_float_layer_bits(fused)
    start = time.perf_counter()
    model, _ = mtq.auto_quantize(out_of_place(copy.deepcopy(fused)), constraints={"effective_bits": bits},
                                 quantization_formats=[mtq.INT8_DEFAULT_CFG], data_loader=batches,
                                 forward_step=loss, loss_func=lambda batch_loss, _: batch_loss,
                                 num_calib_steps=len(batches), num_score_steps=len(batches))
    seconds = time.perf_counter() - start
    rows["autoquant"] = {"score": evaluate(model.eval()), "float_layers": float_layers(model),
                         "ort": ort_counts(model, example), "seconds": seconds, "effective_bits": round(bits, 3)}
    return rows


# --- tools/quantize.py on each backend ------------------------------------------------------------

PIPELINES = (("quantize_pq", "pytorch_quantization"), ("quantize_mo", "modelopt"))


def pipeline_row(checkpoint: Path, data: Path, out: Path, backend: str, task: str) -> dict:
    """tools/quantize.py --int8-only on ``backend``: for classifiers its default search, for detectors and
    segmentors the main job's (its pytorch-quantization report beside the model is read, not rerun)."""
    made_by_main_job = checkpoint.parent / "quantize" / "report.json"
    if task != "cls" and backend == "pytorch_quantization" and made_by_main_job.is_file():
        out = made_by_main_job.parent
    if not (out / "report.json").is_file():
        if task == "cls":
            quantize_checkpoint(QuantizeOptions(checkpoint, data, out, int8_only=True, backend=backend,
                                                progress=False))
        else:
            quantize_pipeline(str(checkpoint), str(data), str(out), 1.0, DENSE_CALIBRATORS, DENSE_BIAS_CORRECTION,
                              backend)
    report = json.loads((out / "report.json").read_text())
    return {"score": report["int8"], "float_layers": report["chosen"]["float_layers"],
            "ort": f"{report['integer_convs']}/{report['convs']}", "seconds": report["seconds"]["total"],
            "choice": report["chosen"]["candidate"], "int8_ort": report["int8_ort"], "fp32": report["fp32"],
            "report": str(out / "report.json")}


def finished(checkpoint: Path, data: Path, work: Path, task: str) -> dict | None:
    """The rows WORK already holds for one model (pipeline rows whose report is there), or None."""
    if not (work / "rows.json").is_file():
        return None
    result = json.loads((work / "rows.json").read_text())
    for key, backend in PIPELINES:
        if key not in result["rows"] and (work / key / "report.json").is_file():
            result["rows"][key] = pipeline_row(checkpoint, data, work / key, backend, task)
    return result


def one_model(checkpoint: Path, data: Path, work: Path, pipeline: bool, task: str) -> dict:
    """Every row of one model; the rows already in WORK/rows.json are kept (the pipeline rows added later)."""
    done = work / "rows.json"
    result = json.loads(done.read_text()) if done.is_file() else None
    if result is None:
        result = modelopt_rows(checkpoint, data, task)
    if pipeline:
        for key, backend in PIPELINES:
            if key not in result["rows"]:
                result["rows"][key] = pipeline_row(checkpoint, data, work / key, backend, task)
    work.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(result, indent=1))
    return result


def modelopt_rows(checkpoint: Path, data: Path, task: str) -> dict:
    """FP32 and the three modelopt rows, calibrated on the pipeline's calibration batches."""
    fused, meta = load_fused(checkpoint, task)
    split = task_data(request_for(checkpoint, meta, data, BATCH, progress=False), BATCH * (CALIB_BATCHES + 1), 256)
    batches = []
    for batch in split.calibration:  # the pipeline's calibration batches (its first pass), as the loader gives them
        batches.append(batch)
        if len(batches) == CALIB_BATCHES:
            break
    metric = split.evaluator.metric_name

    def evaluate(model: nn.Module) -> float:
        return float(split.evaluator.evaluate(model)[metric])

    loss = task_loss(fused, meta, split.preprocess)
    return {"fp32": evaluate(fused), "metric": metric,
            "rows": mtq_rows(fused, batches, split.preprocess, evaluate, loss)}


COLUMNS = ("mtq_default", "mtq_ort_fix", "autoquant", "quantize_pq", "quantize_mo")


def score(row: dict) -> float:
    return row["score"] if "score" in row else row["top1"]  # rows.json of classifiers written before det/seg


def table(results: dict[str, dict]) -> str:
    metric = next(iter(results.values()), {}).get("metric", "top-1")
    head = ["model", "FP32", *(f"{c}: {metric} / drop / float / ORT int convs / s" for c in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, res in results.items():
        cells = [name, f"{res['fp32']:.2f}"]
        for c in COLUMNS:
            r = res["rows"].get(c)
            cells.append("" if r is None else f"{score(r):.2f} / {res['fp32'] - score(r):.2f} / "
                         f"{len(r['float_layers'])} / {r['ort']} / {r['seconds']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    for c in COLUMNS:
        drops = [res["fp32"] - score(res["rows"][c]) for res in results.values() if c in res["rows"]]
        if drops:
            lines.append(f"\n{c}: within 1 point of FP32 in {sum(d <= 1.0 for d in drops)} of {len(drops)} models, "
                         f"mean drop {sum(drops) / len(drops):.2f}, worst {max(drops):.2f}")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    if args.task != "cls" and args.data is None:
        raise SystemExit(f"--task {args.task}: give --data, the main job's canvases (OUT/data/digits_canvas)")
    data = args.data or args.models / "data" / "digits24"
    start = time.time()
    results = {}
    for name, seed, checkpoint in trained_models(args):
        key = f"{name}_s{seed}"
        if args.report_only:
            if (held := finished(checkpoint, data, args.work / key, args.task)) is not None:
                results[key] = held
            continue
        results[key] = one_model(checkpoint, data, args.work / key, not args.skip_pipeline, args.task)
        print(table({key: results[key]}).split("\n\n")[0].splitlines()[-1], flush=True)
    machine = platform.processor() or platform.machine()
    text = (f"## backends side by side, {args.task} ({time.strftime('%Y-%m-%d %H:%M')}, {machine}, "
            f"torch threads 1, {time.time() - start:.0f} s)\n\n" + table(results))
    print(text)
    if args.results is not None:
        append_report(args.results.with_suffix(".md"), text)
        path = args.results.with_suffix(".json")
        runs = json.loads(path.read_text()) if path.is_file() else []
        path.write_text(json.dumps(runs + [results], indent=1))


if __name__ == "__main__":
    main()
