"""The anchor, side by side: NVIDIA Model Optimizer's own INT8 paths next to tools/quantize.py on each backend.

    python benchmarks/bench_backends.py --models /work/runs/pipeline_models --work /work/runs/backends/anchor \
        --results benchmarks/results/backends

On the main job's digits models (``<name>_s<seed>/deploy.pt`` under --models, made by
``benchmarks/bench_quantize.py --train``), per model:

- ``mtq_default``: ``mtq.quantize(model, mtq.INT8_DEFAULT_CFG, forward_loop)`` as modelopt ships it (per-channel
  weights, signed per-tensor inputs, max calibration), calibrated on the pipeline's 8 calibration batches;
- ``mtq_ort_fix``: the same with the input quantizers after a ReLU unsigned (the first layer's input stays signed),
  the fix that lets onnxruntime fuse modelopt's plain export;
- ``autoquant``: ``mtq.auto_quantize`` (gradient scores, cross-entropy on the calibration labels) over
  ``INT8_DEFAULT_CFG`` and "no quantization" per layer, at an effective-bits constraint that admits at most two
  float layers (8 + 8 * (p1 + p2 + p3/2) / P bits, p_i the smallest layers' weight counts, P all of them);
- ``quantize_pq`` / ``quantize_mo``: ``tools/quantize.py --int8-only`` (its library call) with
  ``--backend pytorch-quantization`` / ``modelopt``.

Columns: top-1 on the validation split (PyTorch fake quant), drop from FP32, layers left in float, integer convs in
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

from qarep_dense.quant.backends import get_backend  # noqa: E402
from qarep_dense.quant.export import activations_to_uint8, check_ort_int8, requantize_before_relu  # noqa: E402
from qarep_dense.deploy.ort import export_graph  # noqa: E402
from qarep_dense.tasks.quantize_pipeline import QuantizeOptions, quantize_checkpoint  # noqa: E402
from qarep_dense.tasks.registry import load_fused  # noqa: E402
from qarep_dense.tasks.splits import request_for, task_data  # noqa: E402
from _timing import append_report, digits_models_parser, trained_models  # noqa: E402

NAMES = ("repvgg_custom", "qarepvgg")
CALIB_BATCHES, BATCH = 8, 32


def parse_args() -> argparse.Namespace:
    p = digits_models_parser(__doc__.split("\n\n")[0], list(NAMES))
    p.add_argument("--skip-pipeline", action="store_true", help="only the modelopt rows (no tools/quantize.py runs)")
    p.add_argument("--report-only", action="store_true", help="run nothing: the table of what WORK already holds")
    return p.parse_args()


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


def ort_fix_config(mtq, first_layer: str) -> dict:
    """INT8_DEFAULT_CFG with every input quantizer unsigned but the first layer's (its input is signed)."""
    cfg = copy.deepcopy(mtq.INT8_DEFAULT_CFG)
    cfg["quant_cfg"] += [{"quantizer_name": "*input_quantizer", "cfg": {"num_bits": 8, "axis": None, "unsigned": True}},
                         {"quantizer_name": f"{first_layer}.input_quantizer", "cfg": {"num_bits": 8, "axis": None}}]
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


def mtq_rows(fused: nn.Module, batches: list, preprocess, evaluate, first_layer: str) -> dict:
    get_backend("modelopt")  # imports modelopt with torch.nn as torch ships it (see the backend's module doc)
    import modelopt.torch.quantization as mtq

    def forward_loop(model: nn.Module) -> None:
        with torch.no_grad():
            for images, _ in batches:
                model(preprocess(images))

    example = preprocess(batches[0][0][:8])
    rows = {}
    for key, cfg in (("mtq_default", mtq.INT8_DEFAULT_CFG), ("mtq_ort_fix", ort_fix_config(mtq, first_layer))):
        start = time.perf_counter()
        model = mtq.quantize(copy.deepcopy(fused), cfg, forward_loop)
        seconds = time.perf_counter() - start
        rows[key] = {"top1": evaluate(model), "float_layers": float_layers(model), "ort": ort_counts(model, example),
                     "seconds": seconds}
    bits = two_float_layer_bits(fused)
    start = time.perf_counter()
    model, _ = mtq.auto_quantize(out_of_place(copy.deepcopy(fused)), constraints={"effective_bits": bits},
                                 quantization_formats=[mtq.INT8_DEFAULT_CFG], data_loader=batches,
                                 forward_step=lambda m, b: m(preprocess(b[0])),
                                 loss_func=lambda out, b: nn.functional.cross_entropy(out, b[1]),
                                 num_calib_steps=len(batches), num_score_steps=len(batches))
    seconds = time.perf_counter() - start
    rows["autoquant"] = {"top1": evaluate(model.eval()), "float_layers": float_layers(model),
                         "ort": ort_counts(model, example), "seconds": seconds, "effective_bits": round(bits, 3)}
    return rows


# --- tools/quantize.py on each backend ------------------------------------------------------------

def pipeline_row(checkpoint: Path, data: Path, out: Path, backend: str) -> dict:
    if (out / "report.json").is_file():
        report = json.loads((out / "report.json").read_text())
    else:
        report = quantize_checkpoint(QuantizeOptions(checkpoint, data, out, int8_only=True, backend=backend,
                                                     progress=False))
    return {"top1": report["int8"], "float_layers": report["chosen"]["float_layers"],
            "ort": f"{report['integer_convs']}/{report['convs']}", "seconds": report["seconds"]["total"],
            "choice": report["chosen"]["candidate"], "int8_ort": report["int8_ort"], "fp32": report["fp32"]}


def finished(checkpoint: Path, data: Path, work: Path) -> dict | None:
    """The rows WORK already holds for one model (pipeline rows whose report is there), or None."""
    if not (work / "rows.json").is_file():
        return None
    result = json.loads((work / "rows.json").read_text())
    for key, backend in (("quantize_pq", "pytorch_quantization"), ("quantize_mo", "modelopt")):
        if key not in result["rows"] and (work / key / "report.json").is_file():
            result["rows"][key] = pipeline_row(checkpoint, data, work / key, backend)
    return result


def one_model(checkpoint: Path, data: Path, work: Path, pipeline: bool) -> dict:
    """Every row of one model; the rows already in WORK/rows.json are kept (the pipeline rows added later)."""
    done = work / "rows.json"
    result = json.loads(done.read_text()) if done.is_file() else None
    if result is None:
        result = modelopt_rows(checkpoint, data)
    if pipeline:
        for key, backend in (("quantize_pq", "pytorch_quantization"), ("quantize_mo", "modelopt")):
            if key not in result["rows"]:
                result["rows"][key] = pipeline_row(checkpoint, data, work / key, backend)
    work.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(result, indent=1))
    return result


def modelopt_rows(checkpoint: Path, data: Path) -> dict:
    """FP32 and the three modelopt rows, calibrated on the pipeline's calibration batches."""
    fused, meta = load_fused(checkpoint, "cls")
    split = task_data(request_for(checkpoint, meta, data, BATCH, progress=False), BATCH * (CALIB_BATCHES + 1), 256)
    batches = []
    for images, labels, *_ in split.calibration:  # the pipeline's calibration batches (its first pass)
        batches.append((images, labels))
        if len(batches) == CALIB_BATCHES:
            break
    metric = split.evaluator.metric_name

    def evaluate(model: nn.Module) -> float:
        return float(split.evaluator.evaluate(model)[metric])

    first_layer = next(n for n, m in fused.named_modules() if isinstance(m, nn.Conv2d))
    return {"fp32": evaluate(fused), "rows": mtq_rows(fused, batches, split.preprocess, evaluate, first_layer)}


COLUMNS = ("mtq_default", "mtq_ort_fix", "autoquant", "quantize_pq", "quantize_mo")


def table(results: dict[str, dict]) -> str:
    head = ["model", "FP32", *(f"{c}: top-1 / drop / float / ORT int convs / s" for c in COLUMNS)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, res in results.items():
        cells = [name, f"{res['fp32']:.2f}"]
        for c in COLUMNS:
            r = res["rows"].get(c)
            cells.append("" if r is None else f"{r['top1']:.2f} / {res['fp32'] - r['top1']:.2f} / "
                         f"{len(r['float_layers'])} / {r['ort']} / {r['seconds']:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    for c in COLUMNS:
        drops = [res["fp32"] - res["rows"][c]["top1"] for res in results.values() if c in res["rows"]]
        if drops:
            lines.append(f"\n{c}: within 1 point of FP32 in {sum(d <= 1.0 for d in drops)} of {len(drops)} models, "
                         f"mean drop {sum(drops) / len(drops):.2f}, worst {max(drops):.2f}")
    return "\n".join(lines)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(1)
    data = args.data or args.models / "data" / "digits24"
    start = time.time()
    results = {}
    for name, seed, checkpoint in trained_models(args):
        key = f"{name}_s{seed}"
        if args.report_only:
            if (held := finished(checkpoint, data, args.work / key)) is not None:
                results[key] = held
            continue
        results[key] = one_model(checkpoint, data, args.work / key, not args.skip_pipeline)
        print(table({key: results[key]}).split("\n\n")[0].splitlines()[-1], flush=True)
    machine = platform.processor() or platform.machine()
    text = (f"## backends side by side ({time.strftime('%Y-%m-%d %H:%M')}, {machine}, "
            f"torch threads 1, {time.time() - start:.0f} s)\n\n" + table(results))
    print(text)
    if args.results is not None:
        append_report(args.results.with_suffix(".md"), text)
        path = args.results.with_suffix(".json")
        runs = json.loads(path.read_text()) if path.is_file() else []
        path.write_text(json.dumps(runs + [results], indent=1))


if __name__ == "__main__":
    main()
