"""The dense study's report: rows read from run folders, the pipeline column and its count of seeds within budget."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import bench_dense_study as study  # noqa: E402

STAGES = [{"stage": i, "dead": 0, "max_fused_weight": 1.0} for i in range(5)]


def _run(work: Path, seed: int, block: str, fp32: float, int8: float, pipeline: tuple[float, bool] | None):
    run = study.run_dir(work, "base", "det", "pretrained", seed, block)
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps({"wall_seconds": 12.0}))
    metrics = lambda ap: {"AP": ap, "AP75": ap}  # noqa: E731
    (run / "dense_ptq.json").write_text(json.dumps({
        "fp32": metrics(fp32), "int8": metrics(int8), "weights_only": metrics(int8), "acts_only": metrics(fp32),
        "calib_images": 256, "mechanism": {"before": STAGES, "after": STAGES}}))
    if pipeline is not None:
        value, met = pipeline
        out = study.pipeline_dir(work, "base", "det", "pretrained", seed, block)
        out.mkdir(parents=True)
        (out / "report.json").write_text(json.dumps({
            "fp32": fp32, "int8": value, "int8_ort": value, "drop": fp32 - value, "budget_met": met, "is_int8": True,
            "chosen": {"candidate": "mse+repair"}, "seconds": {"total": 60.0}}))


def test_pipeline_column_and_seed_count(tmp_path):
    _run(tmp_path, 0, "repvgg", 55.0, 50.0, (54.5, True))
    _run(tmp_path, 1, "repvgg", 52.0, 45.0, (49.0, False))
    _run(tmp_path, 0, "qarepvgg", 54.0, 53.8, None)  # no pipeline run: absent, not counted
    expected = [("det", "pretrained", s, b) for s in (0, 1) for b in ("repvgg", "qarepvgg")]
    result = study.collect(tmp_path, ["base"], expected)["recipes"]["base"]
    assert result["missing"] == [["det", "pretrained", 1, "qarepvgg"]]
    rows = {(r["seed"], r["block"]): r for r in result["rows"]}
    assert rows[(0, "repvgg")]["pipeline"]["int8"] == 54.5
    assert "pipeline" not in rows[(0, "qarepvgg")]
    text = "\n".join(study._task_table("det", result["rows"]))
    assert "- pipeline (pretrained repvgg): every layer INT8 within 1.0 AP of FP32 in 1 of 2 seeds (seeds 0)" in text
    assert "pretrained qarepvgg): every layer" not in text
    assert "| pretrained | 1 | repvgg | 52.00 | 45.00 | 7.00 |" in text and "| 49.00 (mse+repair) |" in text
    assert "| pretrained | 0 | qarepvgg | 54.00 | 53.80 | 0.20 | 54.00 | 53.80 | 0.20 | 53.80 | 54.00 | - |" in text


def test_a_recipe_runs_only_the_tasks_it_names(tmp_path, monkeypatch):
    models = tmp_path / "models"
    for prefix in study.BLOCKS.values():
        (models / f"{prefix}_s0").mkdir(parents=True)
        (models / f"{prefix}_s0" / "results.json").write_text("{}")
    trained = []
    monkeypatch.setattr(study, "train_run", lambda run, recipe, task, *rest: trained.append((recipe, task)))
    monkeypatch.setattr(study, "quant_row", lambda *args: None)
    monkeypatch.setattr(study, "render", lambda result: "")
    study.main(["--recipes", "det_lr0.08", "seg_lr0.1", "--tasks", "det", "seg", "--rows", "pretrained",
                "--seeds", "0", "--models-root", str(models), "--work-dir", str(tmp_path / "work"),
                "--out", str(tmp_path / "study.md")])
    assert sorted(trained) == [("det_lr0.08", "det")] * 2 + [("seg_lr0.1", "seg")] * 2


def test_the_4000_iteration_configs_are_the_recipe_the_study_ran():
    """configs/seg/fcn_<block>-a0h_1xb16-4000it_* hold exactly what the study's seg_lr0.1_4k recipe ran: its overrides
    on the 2000-iteration config of the same block (only the ``iters`` variable of the base differs)."""
    from qarep_dense.integrations.mmseg.runner import load_config

    configs = study.ROOT / "configs" / "seg"
    for block in ("qarepvgg", "repvgg", "repopt"):
        ran = load_config(configs / f"fcn_{block}-a0h_1xb16-2000it_digits-canvas-64x64.py",
                          study.RECIPES["seg_lr0.1_4k"]["seg"]).to_dict()
        config = load_config(configs / f"fcn_{block}-a0h_1xb16-4000it_digits-canvas-64x64.py").to_dict()
        assert (ran.pop("iters"), config.pop("iters")) == (2000, 4000)
        assert config == ran, block
        assert config["train_cfg"]["max_iters"] == config["param_scheduler"][0]["end"] == 4000
        assert config["optim_wrapper"]["optimizer"]["lr"] == 0.1
