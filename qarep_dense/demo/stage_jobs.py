"""What the main job's stages run, each in its own process (:mod:`.processes`): the ``tasks`` functions behind
the tools, called as the tools call them (same defaults), so a stage's numbers are what a user's command gives.
Every function here is module-level with plain arguments (paths as strings): the stage process unpickles it."""
from __future__ import annotations

from pathlib import Path

# task -> (module of tasks/, its typed config class): what tools/train_{cls,det}.py load and call
_TRAINERS = {"cls": ("classification", "ClsConfig"), "det": ("detection", "DetConfig")}


def train(task: str, config: str, work: str, sets: list[str], resume: bool) -> dict:
    """``tools/train_{task}.py CONFIG --work-dir WORK [--resume] --set SETS``; returns its results.json."""
    import importlib

    from ..config import load_config

    module_name, config_class = _TRAINERS[task]
    module = importlib.import_module(f"qarep_dense.tasks.{module_name}")
    cfg = load_config(config, getattr(module, config_class), sets)
    module.train(cfg, Path(work), resume=resume, device=None, overwrite=False)
    return {"work": work}


def train_seg(config: str, work: str, data_root: str, options: dict, resume: bool) -> dict:
    """``tools/train_seg.py CONFIG --work-dir WORK [--resume] --data-root D --cfg-options ...``."""
    from ..tasks.segmentation import train

    train(config, work, "auto" if resume else False, False, options, "none", progress=False, data_root=data_root)
    return {"work": work}


def ptq_table(task: str, checkpoints: list[str], out: str, batch_size: int, data: str | None) -> dict:
    """``tools/ptq_eval.py --task T --checkpoints ... --calibrator max --calib-batches 4 --ort --out OUT``."""
    from ..tasks.ptq_study import PtqStudy, run_study
    from ..tasks.quant_check import QuantConfig

    study = PtqStudy(task, [Path(c) for c in checkpoints], Path(out), None if data is None else Path(data), ["max"],
                     QuantConfig(calibrator="max", num_calib_batches=4), batch_size, ort=True, progress=False)
    run_study(study)
    return {"out": out}


def infer(checkpoint: str, images: list[str], out: str, int8: bool) -> dict:
    """``tools/infer.py CHECKPOINT IMAGES... [--int8] --out OUT``."""
    from ..inference.predict import InferOptions, run_inference

    run_inference(InferOptions(Path(checkpoint), [Path(i) for i in images], Path(out), int8=int8))
    return {"out": out}


def analyze(checkpoint: str, data: str, out: str, num_batches: int = 4, batch_size: int = 32) -> dict:
    """``tools/analyze.py CHECKPOINT --data DATA --out OUT``: the C1/C2 analysis on validation images."""
    import itertools

    from ..analysis import analyze_model
    from ..tasks.classification import preprocess_of, validation_loader
    from ..tasks.registry import load_model

    model, meta = load_model(checkpoint, "cls")
    preprocess = preprocess_of(meta)
    loader = validation_loader(Path(data), meta["image_size"], batch_size, 0)
    batches = (preprocess(images) for images, _ in itertools.islice(loader, num_batches))
    info = {"checkpoint": checkpoint, **{k: meta[k] for k in ("task", "arch", "scale", "block", "num_classes", "fused")
                                         if k in meta}}
    analyze_model(model, batches, Path(out), model_info=info, input_note=f"images from {Path(data) / 'val'}",
                  progress=False)
    return {"out": out}


def pictures(checkpoint: str, images: list[str], out: str) -> dict:
    """``tools/infer.py`` in FP32 and in ONNX INT8 on ``images`` (into OUT/fp32, OUT/int8), then each pair side
    by side."""
    from ..analysis.plots import plot_side_by_side

    files: dict[str, list[str]] = {}
    for mode in ("fp32", "int8"):
        infer(checkpoint, images, str(Path(out) / mode), mode == "int8")
        files[mode] = sorted(str(p) for p in (Path(out) / mode).glob("*") if p.suffix in (".jpg", ".png"))
    pairs = []
    for image in map(Path, images):
        drawn = [next((Path(f) for f in files[m] if Path(f).stem == image.stem), None) for m in ("fp32", "int8")]
        if all(drawn):
            pairs.append(str(plot_side_by_side(drawn, ["FP32", "ONNX Runtime INT8"],
                                               Path(out) / f"{image.stem}_fp32_vs_int8.png")))
    return {**files, "side_by_side": pairs}


def quantize_pipeline(deploy_path: str, data_root: str, out: str, max_drop: float = 1.0,
                      calibrators: tuple[str, ...] | None = None, bias_correction: str = "auto",
                      backend: str = "pytorch_quantization") -> dict:
    """``tools/quantize.py DEPLOY --data DATA --int8-only --max-drop 1`` in-process (its report.json in ``out``);
    returns the fields the summary shows: FP32 / chosen INT8 / ORT INT8 (the task's metric), the drop, the choice.
    Any task: the checkpoint says which. ``calibrators``: ``--calibrators`` (default: all four);
    ``bias_correction``: ``--bias-correction``; ``backend``: ``--backend``."""
    from ..tasks.quantize_pipeline import QuantizeOptions, quantize_checkpoint

    report = quantize_checkpoint(QuantizeOptions(checkpoint=Path(deploy_path), data=Path(data_root), out=Path(out),
                                                 max_drop=max_drop, int8_only=True, diagnose=False,
                                                 bias_correction=bias_correction, backend=backend,
                                                 **({"calibrators": tuple(calibrators)} if calibrators else {}),
                                                 latency_repeats=1, progress=False))
    return pipeline_fields(report, out)


def pipeline_fields(report: dict, out: str | Path) -> dict:
    """What the main job's tables show of a quantize report (report.json's dict) written into ``out``."""
    return {"fp32": report["fp32"], "int8": report["int8"], "int8_ort": report["int8_ort"], "drop": report["drop"],
            "budget_met": report["budget_met"], "is_int8": report["is_int8"],
            "candidate": report["chosen"]["candidate"], "report": str(Path(out) / "report.md")}


def checkpoint_mechanism(checkpoint: str, task: str) -> list[dict]:
    """:func:`~qarep_dense.analysis.trunk.stage_mechanism` of a train-form ``task`` checkpoint (last.pt)."""
    from ..analysis.trunk import stage_mechanism
    from ..tasks.registry import load_model

    model, meta = load_model(checkpoint, task)
    if meta.get("fused"):
        raise ValueError(f"{checkpoint}: the mechanism needs the train-form checkpoint (last.pt), not a fused one")
    return stage_mechanism(model, task)


def dense_mechanism(task: str, pairs: dict[str, tuple[str, str]], figure: str, title: str) -> dict:
    """Per block: the per-stage mechanism of the classifier and of the ``task`` model fine-tuned from it
    (``pairs``: {block: (classifier last.pt, dense last.pt)}), and the figure of both."""
    from ..analysis.trunk import plot_stage_mechanism

    models = {block: {"before": checkpoint_mechanism(before, "cls"), "after": checkpoint_mechanism(after, task)}
              for block, (before, after) in pairs.items()}
    return {"blocks": models, "figure": str(plot_stage_mechanism(models, figure, title))}
