"""The main job's results.json: rows built from the stages' records, the summary's tables from the same rows,
and the renderer of docs/results.md's tables (python -m qarep_dense.demo.results)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from support import cls_quant_record, no_stages

from qarep_dense.demo.main_job import ROOT, Demo, DemoOptions, vars_for_summary
from qarep_dense.demo.results import (build_rows, load_results, main, model_name, render_tables, task_table,
                                      write_results)
from qarep_dense.demo.summary import render_summary
from qarep_dense.fileio import RECORD

INFO = {"profile": "full", "threads": 2, "reused_stages": 0, "cls_data": "digits", "cls_seeds": [0, 1],
        "det_seeds": [0, 1], "cls_epochs": 40, "det_epochs": 10, "cls_recipe": ["optim.lr=0.4"],
        "cls_models": ["repvgg_custom", "qarepvgg"], "det_blocks": ["qarepvgg", "repvgg"], "seg_seeds": [0, 1],
        "dense_configs": {"det_config": "configs/det/digits_canvas_<block>.toml",
                          "seg_config": "configs/seg/fcn_<block>-a0h_1xb16-4000it_digits-canvas-64x64.py"}}


def _quant(fp32: float, int8: float) -> dict:
    return cls_quant_record(fp32, int8, calib_images=256)


def _ptq_stage(tmp_path: Path, name: str, metric: str, rows: list[dict], calib_images: int) -> dict:
    """A PTQ-table stage's record (Demo.ptq_table), with the ptq_table.json that the tool wrote beside it."""
    folder = tmp_path / name
    folder.mkdir(exist_ok=True)
    reports = {f"{r['model']}/max": {"calib_images": calib_images} for r in rows}
    (folder / "ptq_table.json").write_text(json.dumps({"metric": metric, "rows": rows, "ptq_reports": reports}))
    return {"metric": metric, "rows": rows, "table": str(folder / "ptq_table.md")}


def _ptq_row(label: str, block: str, fp32: float, int8: float, ort: float | None) -> dict:
    return {"model": label, "block": block, "arch": "n", "calibrator": "max", "scheme": "W8A8", "fp32": fp32,
            "int8": int8, "drop": fp32 - int8, "ort_int8": ort, "ort_integer_convs": "56/56"}


def _records(tmp_path: Path) -> dict:
    """Records as a run writes them: two cls models x 2 seeds (the pipeline on one), detection seed 0 only
    (seed 1's PTQ stage failed), segmentation with one ORT check that gave no number."""
    records = {f"cls_train_{m}_s{s}": {"task": "cls", "block": b, "deploy": {"top1": 99.0}}
               for m, b in (("repvgg_custom", "repvgg"), ("qarepvgg", "qarepvgg")) for s in (0, 1)}
    records.update({"cls_quant_repvgg_custom_s0": _quant(98.0, 80.0), "cls_quant_repvgg_custom_s1": _quant(99.0, 97.0),
                    "cls_quant_qarepvgg_s0": _quant(97.5, 97.0), "cls_quant_qarepvgg_s1": _quant(99.5, 99.5),
                    "cls_pipeline_repvgg_custom_s1": {"fp32": 99.0, "int8": 98.5, "int8_ort": 98.0, "drop": 0.5,
                                                      "budget_met": True, "candidate": "max+repair", "report": "r.md"},
                    # a detection training's own results.json: COCO fractions, which the rows must not read
                    "det_train_repvgg_s0": {"task": "det", "block": "repvgg", "deploy": {"AP": 0.5}},
                    "det_ptq_s0": _ptq_stage(tmp_path, "det_ptq_s0", "AP", [
                        _ptq_row("qarepvgg_s0/deploy", "qarepvgg", 40.0, 39.5, 39.0),
                        _ptq_row("repvgg_s0/deploy", "repvgg", 50.0, 45.0, 44.0)], 64),
                    "seg_ptq_s0": _ptq_stage(tmp_path, "seg_ptq_s0", "mIoU", [
                        _ptq_row("qarepvgg_s0/deploy", "qarepvgg", 30.0, 29.0, float("nan")),
                        _ptq_row("repvgg_s0/deploy", "repvgg", 31.0, 30.5, 30.25)], 96)})
    return records


def test_rows_are_percent_from_the_measurement_stages_and_leave_out_what_was_not_measured(tmp_path):
    rows = build_rows(_records(tmp_path), ["cls", "det", "seg"], INFO)
    assert list(rows) == ["cls", "det", "seg"]
    assert rows["cls"][0] == {"model": "repvgg_custom", "block": "repvgg", "seed": 0, "fp32": 98.0, "int8": 80.0,
                              "metric": "top1"}  # no ORT run of plain PTQ, no pipeline on seed 0: absent
    assert rows["cls"][1]["pipeline_int8"] == 98.5 and "int8_ort" not in rows["cls"][1]
    assert [(r["model"], r["seed"]) for r in rows["det"]] == [("qarepvgg", 0), ("repvgg", 0)]  # seed 1 not measured
    repvgg = rows["det"][1]
    assert repvgg == {"model": "repvgg", "block": "repvgg", "seed": 0, "fp32": 50.0, "int8": 45.0, "int8_ort": 44.0,
                      "metric": "AP"}  # the PTQ stage's percent, not the training's 0.5
    assert "int8_ort" not in rows["seg"][0] and rows["seg"][1]["int8_ort"] == 30.25
    assert {r["metric"] for r in rows["seg"]} == {"mIoU"} and {r["seed"] for r in rows["seg"]} == {0}
    assert "null" not in json.dumps(rows)
    assert build_rows(_records(tmp_path), ["det"], INFO).keys() == {"det"}


def test_a_ptq_row_is_named_after_its_work_folder_without_the_seed():
    assert model_name("repvgg_scratch_s12/deploy", 12, "repvgg") == "repvgg_scratch"
    assert model_name("seg/repvgg_s1/deploy", 0, "repvgg") == "repvgg_s1"  # another seed's suffix stays
    assert model_name("best", 0, "qarepvgg") == "qarepvgg"  # a label without a folder: the block


def test_results_json_holds_units_the_int8_setting_and_the_run_and_is_recorded(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    data = json.loads(write_results(out, _records(tmp_path), ["cls", "det", "seg"], INFO).read_text())
    assert data["units"] == "percent"
    assert data["int8"]["cls"] == {"scheme": ["W8A8"], "calibrator": ["max"], "calib_images": [256]}
    assert data["int8"]["det"]["calib_images"] == [64] and data["int8"]["seg"]["calib_images"] == [96]
    assert data["settings"]["det_seeds"] == [0, 1] and data["settings"]["profile"] == "full"
    assert data["det"] == build_rows(_records(tmp_path), ["det"], INFO)["det"]
    no_stages(Demo(DemoOptions(out=tmp_path / "demo", tasks=["cls"], profile="tiny"))).run()
    assert json.loads((tmp_path / "demo" / "results.json").read_text())["cls"] == []  # asked for, nothing measured
    assert "results.json" in json.loads((tmp_path / "demo" / RECORD).read_text())["files"]  # sealed with OUT


def test_summary_main_tables_are_the_results_json_rows(tmp_path):
    records = _records(tmp_path)
    text = render_summary(tmp_path, records, ["cls", "det", "seg"], {}, INFO)
    data = json.loads(write_results(tmp_path, records, ["cls", "det", "seg"], INFO).read_text())
    for task in ("cls", "det", "seg"):
        assert "\n".join(task_table(data[task])) in text
    # by hand: repvgg_custom FP32 98 and 99, INT8 80 and 97 -> drops 18 and 2
    assert "| repvgg_custom | repvgg | 2 | 98.50 (98.00-99.00) | 88.50 (80.00-97.00) | 10.00 (2.00-18.00) |" in text
    assert "repvgg_custom [s0: 18.00, s1: 2.00]" in text
    assert "max calibration, 256 calibration images" in text and "max calibration, 64 calibration images" in text
    assert "repvgg_custom collapsed" not in text and "repvgg collapsed (INT8 > 10 points below FP32) in 1 of 2" in text


def test_task_table_mean_min_max_and_drop_by_hand():
    rows = [{"model": "a", "block": "repvgg", "seed": s, "fp32": f, "int8": i, "metric": "AP"}
            for s, f, i in ((0, 98.0, 90.0), (1, 96.0, 96.0), (2, 97.0, 94.0))]
    rows[0]["int8_ort"], rows[2]["int8_ort"] = 89.0, 95.0
    rows.append({"model": "b", "block": "qarepvgg", "seed": 0, "fp32": 50.0, "metric": "AP"})  # no INT8 measured
    lines = task_table(rows)
    assert lines[0] == "| model | block | seeds | FP32 AP | INT8 AP | drop | ORT INT8 |"
    assert lines[2] == ("| a | repvgg | 3 | 97.00 (96.00-98.00) | 93.33 (90.00-96.00) | 3.67 (0.00-8.00) | "
                        "92.00 (89.00-95.00) [2 of 3 seeds] |")
    assert lines[3] == "| b | qarepvgg | 1 | 50.00 | - | - | - |"
    assert lines[-1] == "INT8 drop per seed (AP points): a [s0: 8.00, s1: 0.00, s2: 3.00]; b []"


def test_renderer_prints_each_task_of_a_results_file(tmp_path, capsys):
    path = write_results(tmp_path, _records(tmp_path), ["det", "seg"], INFO)
    assert main([str(path)]) == 0
    printed = capsys.readouterr().out
    assert printed == render_tables(load_results(path))
    assert "### Detection" in printed and "### Segmentation" in printed and "### Classification" not in printed
    assert "| repvgg | repvgg | 1 | 50.00 | 45.00 | 5.00 | 44.00 |" in printed
    assert "max calibration, 64 calibration images" in printed


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a readable JSON file"),
    ('{"det": []}', 'no "units": "percent"'),
    ('{"units": "percent", "det": {"model": "x"}}', '"det" is dict, not a list'),
    ('{"units": "percent", "det": [{"model": "x", "seed": 0, "metric": "AP", "fp32": null}]}',
     r"row x/s0: not a finite number: \['fp32'\]"),
    ('{"units": "percent", "cls": [{"model": "x", "seed": 0, "top1": 9}]}',
     r"missing \['metric'\]; unknown \['top1'\]"),
])
def test_renderer_refuses_a_malformed_file_naming_it(tmp_path, capsys, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_results(path)
    with pytest.raises(SystemExit):
        main([str(path)])
    assert f"{path}: " in capsys.readouterr().err


def test_a_results_json_of_someone_else_is_never_replaced(tmp_path):
    """A folder of an earlier version (its record lists no results.json) with a user's results.json in it."""
    out = tmp_path / "demo"
    no_stages(Demo(DemoOptions(out=out, tasks=["cls"], profile="tiny"))).run()
    record = json.loads((out / RECORD).read_text())
    del record["files"]["results.json"]
    (out / RECORD).write_text(json.dumps(record))
    (out / "results.json").write_text("mine")
    with pytest.raises(FileExistsError, match="results.json exists and was not written by this project"):
        no_stages(Demo(DemoOptions(out=out, tasks=["cls"], profile="tiny"))).run()
    assert (out / "results.json").read_text() == "mine"


def test_dense_sections_judge_by_the_dense_thresholds_and_show_pipeline_and_mechanism(tmp_path):
    """Detection: RepVGG 50 -> 45 (more than 3 AP) collapses, QARepVGG 40 -> 39.5 is below the 50-AP floor
    (untrained), so no verdict; the quantize pipeline sits beside plain PTQ and the mechanism per stage shows."""
    records = _records(tmp_path)
    records["det_pipeline_repvgg_s0"] = {"fp32": 50.0, "int8": 49.4, "int8_ort": 49.2, "drop": 0.6,
                                         "budget_met": True, "candidate": "mse+repair", "report": "q/report.md"}
    stage = [{"stage": 0, "dead": 0, "max_fused_weight": 1.5}, {"stage": 1, "dead": 9, "max_fused_weight": 628.0}]
    records["det_mechanism_s0"] = {"figure": str(tmp_path / "det" / "mechanism_s0.png"),
                                   "blocks": {"repvgg": {"before": stage, "after": stage}}}
    text = render_summary(tmp_path, records, ["det"], {}, INFO)
    assert "repvgg collapsed (INT8 > 3 points below FP32) in 1 of 1 seeds" in text
    assert "qarepvgg held (within 1.3 points) in 0 of 1" in text
    assert "| repvgg | 0 | 50.00 | 45 | mse+repair | 49.40 | 49.2 | 0.60 | yes |" in text
    assert "| repvgg | 1 | 9 -> 9 | 628 -> 628 |" in text and "![mechanism, seed 0](det/mechanism_s0.png)" in text


def test_summary_names_the_dense_configs_the_main_job_trains_with(tmp_path):
    """The summary's recipe line comes from the configs the stages train with (it was typed once and kept naming
    the 2000-iteration segmentors after the main job moved on)."""
    demo = Demo(DemoOptions(out=tmp_path / "demo", tasks=["det", "seg"]))
    info = vars_for_summary(demo)
    text = render_summary(tmp_path, _records(tmp_path), ["det", "seg"], {}, info)
    for block in ("repvgg", "qarepvgg"):
        seg_file, _ = demo.seg_config(block)
        det_file, _ = demo.det_config(block)
        assert seg_file.is_file() and det_file.is_file()
        assert info["dense_configs"]["seg_config"].replace("<block>", block) == str(seg_file.relative_to(ROOT))
        assert info["dense_configs"]["det_config"].replace("<block>", block) == str(det_file.relative_to(ROOT))
    assert f"`{info['dense_configs']['seg_config']}`" in text and f"`{info['dense_configs']['det_config']}`" in text
