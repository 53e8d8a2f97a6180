"""The main job (tools/demo.py) and its library: collapse verdict, resumable stages, summary page."""
from __future__ import annotations

import importlib
import importlib.util
import json
from dataclasses import asdict
from pathlib import Path

import pytest
from support import cls_quant_record, no_stages

from qarep_dense.demo import Criteria, StageRunner, seed_range, verdict
from qarep_dense.demo.main_job import Demo, DemoOptions, make_profile
from qarep_dense.demo.results import load_results, task_table
from qarep_dense.demo.stages import Stage
from qarep_dense.demo.summary import SECTIONS, render_summary, stage_span
from qarep_dense.demo.verdict import format_range

ROOT = Path(__file__).resolve().parents[1]


def _rows(rep: list[tuple[float, float]], qa: list[tuple[float, float]]) -> list[dict]:
    rows = [{"seed": s, "block": "repvgg", "fp32": f, "int8": i} for s, (f, i) in enumerate(rep)]
    return rows + [{"seed": s, "block": "qarepvgg", "fp32": f, "int8": i} for s, (f, i) in enumerate(qa)]


HOLD = [(98.0, 97.5)] * 5


def test_verdict_reproduces_with_four_collapses_of_five_and_qa_holding():
    v = verdict(_rows([(98, 20), (97, 50), (98, 97.9), (99, 80), (98, 87.9)], HOLD))
    assert v["reproduces"] and v["collapsed"] == [0, 1, 3, 4] and v["held"] == [0, 1, 2, 3, 4]
    assert "4 of 5" in v["summary"] and "reproduced" in v["summary"]


@pytest.mark.parametrize("rep, qa, why", [
    ([(98, 20), (97, 50), (98, 97.9), (99, 80), (98, 88.1)], HOLD, "only 3 collapses (a drop of 9.9 is not one)"),
    ([(98, 20)] * 5, [(98, 97.5)] * 4 + [(98, 96.4)], "QARepVGG lost 1.6 points in one seed"),
    ([(98, 20)] * 4, [(98, 97.5)] * 4, "4 seeds are fewer than 5"),
    ([(98, 20)] * 3 + [(50, 10)] * 2, HOLD, "an untrained RepVGG (FP32 50) is no collapse"),
    ([(98, 20)] * 5, [(98, 97.5)] * 4 + [(10, 10)], "a QARepVGG at chance does not 'hold'"),
])
def test_verdict_refuses(rep, qa, why):
    v = verdict(_rows(rep, qa))
    assert not v["reproduces"], why
    assert "not reproduced" in v["summary"]


def test_verdict_counts_only_seeds_with_both_blocks_and_names_untrained_runs():
    rows = _rows([(98, 20)] * 5, HOLD) + [{"seed": 9, "block": "repvgg", "fp32": 98, "int8": 10}]
    assert verdict(rows)["seeds"] == [0, 1, 2, 3, 4]
    v = verdict(_rows([(98, 20)] * 4 + [(40, 40)], HOLD))
    assert v["untrained"] == ["repvgg/s4"] and v["collapsed"] == [0, 1, 2, 3] and v["reproduces"]  # 4 of 5
    strict = Criteria(collapse_drop=90.0)
    assert verdict(_rows([(98, 20)] * 5, HOLD), strict)["collapsed"] == []


def test_verdict_counts_the_direction_whatever_the_floor():
    # seed 0: 10 points more; seed 1: 1 point more (under the 8.5-point gap of the default thresholds);
    # seed 2: RepVGG below the floor but 30 points more; seed 3: QARepVGG lost more
    v = verdict(_rows([(98, 87), (98, 96), (60, 29), (98, 97.9)], [(98, 97)] * 3 + [(98, 97)]))
    assert v["more"] == [0, 1, 2] and v["clearly_more"] == [0, 2]
    assert v["untrained"] == ["repvgg/s2"]
    assert "not counted, FP32 below 90: repvgg/s2" in v["summary"]
    assert "lost more than qarepvgg in 3 of 4 seeds, more than 8.5 points more in 2" in v["summary"]


def test_seed_range_and_format():
    stats = seed_range([97.0, 99.0, 98.0])
    assert stats == {"mean": 98.0, "min": 97.0, "max": 99.0, "n": 3}
    assert format_range(stats) == "98.00 (97.00-99.00)"
    assert format_range(seed_range([1.234])) == "1.23"
    with pytest.raises(ValueError, match="no values"):
        seed_range([])


def test_stage_runner_runs_once_and_reuses_after_restart(tmp_path):
    calls = []
    runner = StageRunner(tmp_path)
    assert runner.run("a", lambda: calls.append(1) or {"x": 1}) == {"x": 1}
    assert runner.run("a", lambda: calls.append(2) or {"x": 2}) == {"x": 1}
    again = StageRunner(tmp_path)  # a new process: the marker on disk decides
    assert again.run("a", lambda: calls.append(3) or {"x": 3}) == {"x": 1}
    assert calls == [1] and again.reused == ["a"]
    assert not list((tmp_path / ".stages").glob("*.tmp"))


def test_stage_runner_writes_no_marker_when_the_stage_fails(tmp_path):
    runner = StageRunner(tmp_path)

    def boom():
        raise RuntimeError("stage broke")

    with pytest.raises(RuntimeError, match="stage broke"):
        runner.run("b", boom)
    assert not runner.done("b")
    assert runner.run("b", lambda: 5) == 5
    with pytest.raises(ValueError, match="stage name"):
        runner.run("../escape", lambda: 1)
    (tmp_path / ".stages" / "c.json").write_text("{not json")
    with pytest.raises(ValueError, match="c.json: unreadable stage marker"):
        runner.run("c", lambda: 1)


def _info(**kw) -> dict:
    info = {"profile": "quick", "threads": 2, "reused_stages": 0, "cls_data": "digits", "cls_seeds": [0, 1],
            "det_seeds": [0], "cls_epochs": 8, "det_epochs": 5, "cls_recipe": ["optim.lr=0.4"],
            "cls_models": ["repvgg_custom", "qarepvgg"], "det_blocks": ["repvgg"], "seg_seed": 0,
            "dense_configs": {"det_config": "det.toml", "seg_config": "seg.py"}}
    return {**info, **kw}


def test_summary_states_the_calibration_images_the_stages_used(tmp_path):
    """Taken from the records (it used to be a typed "256"), so a change of the stage's loader shows."""
    one = {"cls_quant_qarepvgg_s0": cls_quant_record(97.0, 97.0, 192),
           "cls_quant_qarepvgg_s1": cls_quant_record(99.0, 98.0, 192)}
    text = render_summary(tmp_path, one, ["cls"], {}, _info())
    assert "every conv and FC input), max calibration, 192 calibration images;" in text
    two = {**one, "cls_quant_qarepvgg_s1": cls_quant_record(99.0, 98.0, 256)}
    assert "max calibration, 192-256 calibration images;" in render_summary(tmp_path, two, ["cls"], {}, _info())
    assert "256 calibration images" not in render_summary(tmp_path, {}, ["cls"], {}, _info())


def test_summary_names_the_flag_that_brings_repopt_back_when_it_is_left_out(tmp_path):
    one = {"cls_quant_qarepvgg_s0": cls_quant_record(97.0, 97.0, 192)}
    hint = "`--cls-models repvgg_custom,qarepvgg,repopt` adds its rows"
    assert hint in render_summary(tmp_path, one, ["cls"], {}, _info())
    with_it = render_summary(tmp_path, one, ["cls"], {}, _info(cls_models=["repvgg_custom", "qarepvgg", "repopt"]))
    assert hint not in with_it and "one Hyper-Search run (cls/hs)" in with_it


def test_summary_has_every_section_tables_from_records_and_skip_lines(tmp_path):
    records = {"cls_quant_repvgg_custom_s0": cls_quant_record(98.0, 20.0),
               "cls_quant_repvgg_custom_s1": cls_quant_record(96.0, 94.0),
               "cls_quant_qarepvgg_s0": cls_quant_record(97.0, 97.0),
               "cls_quant_qarepvgg_s1": cls_quant_record(99.0, 98.0),
               "det_ptq_s0": {"metric": "AP", "table": str(tmp_path / "det" / "t.md"), "rows": [
                   {"model": "repvgg_s0/deploy", "block": "repvgg", "fp32": 50.0, "int8": 45.0, "drop": 5.0,
                    "ort_int8": 44.0, "ort_integer_convs": "30/30"}]}}
    text = render_summary(tmp_path, records, ["cls", "det"], {"pictures": "tools/infer.py is missing"}, _info())
    for title in SECTIONS:
        assert f"## {title}" in text
    # no training record names the block here: the row leaves it out
    assert "| repvgg_custom | - | 2 | 97.00 (96.00-98.00) | 57.00 (20.00-94.00) | 40.00 (2.00-78.00) |" in text
    assert "collapsed (INT8 > 10 points below FP32) in 1 of 2 seeds" in text  # computed, not typed
    assert "| repvgg | repvgg | 1 | 50.00 | 45.00 | 5.00 | 44.00 |" in text and "ORT: repvgg 30/30" not in text
    assert "Integer convs in ONNX Runtime: repvgg 30/30." in text
    assert "[seed 0](det/t.md)" in text
    assert "Segmentation\n\nNot run (not in --tasks cls,det)." in text
    assert "Pictures unavailable: tools/infer.py is missing." in text


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_recipe_study", ROOT / "benchmarks" / "bench_recipe_study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_recipe_study_markdown_shows_the_computed_verdict():
    bench = _load_bench()
    rows = [{**r, "dead_identity_channels": 7, "max_fused_weight": 600.0, "cpu_seconds": 100.0}
            for r in _rows([(98, 20)] * 5, HOLD)]
    study = {"criteria": asdict(Criteria()), "seeds": list(range(5)),
             "recipes": {"nowarm_e15": {"rows": rows, "verdict": verdict(rows)}}}
    text = bench.render(study)
    assert "collapsed (INT8 > 10 points below FP32) in 5 of 5 seeds" in text
    assert "the paper's result is reproduced" in text
    assert "| 0 | repvgg | 98.00 | 20.00 | 78.00 | 7 | 600 | 100 |" in text
    assert set(bench.RECIPES) >= {"nowarm_e15", "nowarm_e15_noiddecay", "synthetic_nowarm_e15"}


def test_recipe_study_leaves_untrained_models_out_of_the_drop_range_and_gives_no_verdict_on_a_screen():
    bench = _load_bench()
    extra = {"dead_identity_channels": 3, "max_fused_weight": 300.0, "cpu_seconds": 90.0}
    rows = [{"seed": 0, "block": "repvgg", "fp32": 98.0, "int8": 80.0, **extra},
            {"seed": 1, "block": "repvgg", "fp32": 59.0, "int8": 59.0, **extra},  # did not train
            {"seed": 2, "block": "repvgg", "fp32": 97.0, "int8": 93.0, **extra}]
    study = {"criteria": asdict(Criteria()), "seeds": [0, 1, 2],
             "recipes": {"screen": {"rows": rows, "verdict": verdict(rows)}}}
    text = bench.render(study)
    assert "| trained | repvgg | | | 11.00 (4.00-18.00) | | | |" in text
    assert "**Screen only** (no seed has both blocks): no verdict." in text and "Verdict" not in text


@pytest.mark.slow
def test_demo_tiny_end_to_end_writes_every_section_and_reuses_stages(tmp_path):
    demo = importlib.import_module("tools.demo")
    out = tmp_path / "demo"
    summary = demo.main(["--tiny", "--tasks", "cls,det,seg", "--out", str(out)])
    text = summary.read_text()
    for title in SECTIONS:
        assert f"## {title}" in text
    assert "| repvgg_custom |" in text and "| qarepvgg |" in text and "| repopt |" in text
    assert (out / "cls" / "fig2_weights.png").is_file()
    assert "ORT INT8" in text and "| det_qarepvgg |" in text
    results = load_results(out / "results.json")  # the same rows as the summary's main tables, in percent
    for task, metric in (("cls", "top1"), ("det", "AP"), ("seg", "mIoU")):
        assert results[task] and {r["metric"] for r in results[task]} == {metric}
        assert "\n".join(task_table(results[task])) in text
        assert all(0 <= r[k] <= 100 for r in results[task] for k in ("fp32", "int8", "int8_ort", "pipeline_int8")
                   if k in r)
    assert all("int8_ort" in r for r in results["det"]) and {r["model"] for r in results["det"]} >= {"repvgg"}
    assert {r["model"] for r in results["cls"] if "pipeline_int8" in r} == {"repvgg_custom", "qarepvgg"}
    markers = sorted((out / ".stages").glob("*.json"))
    assert markers and all(json.loads(m.read_text())["stage"] == m.stem for m in markers)
    logs_before = {p: p.stat().st_size for p in (out / "logs").glob("*.log")}
    text2 = demo.main(["--tiny", "--tasks", "cls,det,seg", "--out", str(out)]).read_text()
    assert f"; {len(markers)} stages reused" in text2
    assert {p: p.stat().st_size for p in (out / "logs").glob("*.log")} == logs_before  # no tool ran again


def test_summary_lists_failed_stages_first(tmp_path):
    text = render_summary(tmp_path, {}, ["cls"], {}, _info(), {"cls_train_qarepvgg_s0": "RuntimeError: diverged"})
    assert "**1 stage(s) failed**" in text
    assert "- `cls_train_qarepvgg_s0`: RuntimeError: diverged (log: `logs/cls_train_qarepvgg_s0.log`)" in text
    assert text.index("failed") < text.index("## Classification")


def test_demo_keeps_going_after_a_failed_stage_and_marks_only_the_good_ones(tmp_path):
    demo_tool = importlib.import_module("tools.demo")
    demo = Demo(demo_tool.parse_args(["--tiny", "--tasks", "cls", "--out", str(tmp_path)]))

    def boom():
        raise RuntimeError("training diverged\nlong traceback")

    demo.run_stages("cls", [("bad", boom), ("good", lambda: {"ok": 1})])
    assert demo.failed == {"bad": "RuntimeError: training diverged"}
    assert demo.stages.records == {"good": {"ok": 1}}
    assert demo.stages.done("good") and not demo.stages.done("bad")
    with pytest.raises(SystemExit):
        demo_tool.parse_args(["--tasks", "cls,nope"])


def test_demo_options_refuse_unknown_tasks_and_profiles(tmp_path):
    with pytest.raises(ValueError, match="unknown task"):
        DemoOptions(out=tmp_path, tasks=["cls", "nope"])
    with pytest.raises(ValueError, match="profile 'huge'"):
        DemoOptions(out=tmp_path, profile="huge")


def test_demo_refuses_a_results_folder_made_under_other_settings(tmp_path):
    first = Demo(DemoOptions(out=tmp_path, tasks=["cls"], profile="tiny"))
    first.check_settings()
    assert json.loads((tmp_path / "demo_settings.json").read_text())["profile"] == "tiny"
    Demo(DemoOptions(out=tmp_path, tasks=["cls", "det"], profile="tiny", seeds=[0, 1])).check_settings()  # adds stages
    with pytest.raises(ValueError, match=r"other settings: profile \('tiny' -> 'quick'\), cls_epochs \(1 -> 40\)"):
        Demo(DemoOptions(out=tmp_path, tasks=["cls"], profile="quick")).check_settings()
    with pytest.raises(ValueError, match=r"cls_epochs \(1 -> 3\)"):
        Demo(DemoOptions(out=tmp_path, tasks=["cls"], profile="tiny", cls_epochs=3)).check_settings()
    older = tmp_path / "older"
    (older / ".stages").mkdir(parents=True)
    (older / ".stages" / "cls_train_hs.json").write_text("{}")
    with pytest.raises(ValueError, match="without a record of their settings"):
        Demo(DemoOptions(out=older, tasks=["cls"], profile="tiny")).check_settings()
    Demo(DemoOptions(out=tmp_path, tasks=["cls"], profile="tiny", seeds=[3])).check_settings()  # seeds add stages
    recorded = json.loads((tmp_path / "demo_settings.json").read_text())  # a run of another dense recipe
    (tmp_path / "demo_settings.json").write_text(json.dumps({**recorded, "dense_recipe": {"det": "older.toml"}}))
    with pytest.raises(ValueError, match=r"dense_recipe \(\{'det': 'older.toml'\}"):
        Demo(DemoOptions(out=tmp_path, tasks=["det"], profile="tiny")).check_settings()
    (tmp_path / "demo_settings.json").write_text(json.dumps(  # a run whose detection config said another lr0
        {**recorded, "configs": {**recorded["configs"], "det/repvgg": "0" * 16}}))
    with pytest.raises(ValueError, match=r"other settings: configs"):
        Demo(DemoOptions(out=tmp_path, tasks=["det"], profile="tiny")).check_settings()
    assert DemoOptions(profile="quick").out == Path("work_dirs/demo_quick")


# --- arguments, ownership, scheduling, figures -----------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    ({"seeds": [0, 0]}, "seed 0 given more than once"),
    ({"seeds": [1, 2, 1]}, "seed 1 given more than once"),
    ({"seeds": [-1]}, "non-negative"),
    ({"cls_epochs": 0}, "cls-epochs 0: must be at least 1"),
    ({"cls_epochs": -3}, "cls-epochs -3: must be at least 1"),
    ({"det_epochs": 0}, "det-epochs 0: must be at least 1"),
    ({"jobs": 0}, "jobs 0: must be at least 1"),
    ({"threads": 0}, "threads 0: must be at least 1"),
    ({"cls_models": ["qarepvgg", "repopt"]}, "including repvgg_custom and qarepvgg"),
    ({"cls_models": ["repvgg_custom", "qarepvgg", "qarepvgg"]}, "at most once"),
    ({"cls_models": ["repvgg_custom", "qarepvgg", "yolo"]}, r"unknown: yolo"),
])
def test_demo_options_are_validated_up_front(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        DemoOptions(out=tmp_path, **kwargs)


def test_demo_command_line_refuses_bad_arguments_before_running(capsys):
    demo_tool = importlib.import_module("tools.demo")
    for argv, message in ((["--seeds", "0", "0"], "seed 0 given more than once"),
                          (["--cls-epochs", "0"], "cls-epochs 0: must be at least 1"),
                          (["--cls-epochs", "-3"], "cls-epochs -3")):
        with pytest.raises(SystemExit):
            demo_tool.parse_args(argv)
        assert message in capsys.readouterr().err
    assert make_profile(demo_tool.parse_args(["--cls-epochs", "7", "--tiny"])).cls_epochs == 7


def test_demo_never_replaces_a_summary_it_did_not_write(tmp_path):
    (tmp_path / "summary.md").write_text("my notes")
    with pytest.raises(FileExistsError, match=r"holds files this project did not write \(summary.md\)"):
        no_stages(Demo(DemoOptions(out=tmp_path, tasks=["cls"], profile="tiny"))).run()
    assert (tmp_path / "summary.md").read_text() == "my notes"
    assert not (tmp_path / ".stages").exists()  # refused before any stage ran


def test_demo_replaces_its_own_summary_but_not_one_edited_since(tmp_path):
    out = tmp_path / "demo"
    path = no_stages(Demo(DemoOptions(out=out, tasks=["cls"], profile="tiny"))).run()
    assert path.read_text().startswith("# qarep-dense main job")
    no_stages(Demo(DemoOptions(out=out, tasks=["cls"], profile="tiny"))).run()  # its own file: replaced
    path.write_text(path.read_text() + "\nmy addition\n")
    with pytest.raises(FileExistsError, match="summary.md was written by an earlier run and changed since"):
        no_stages(Demo(DemoOptions(out=out, tasks=["cls"], profile="tiny"))).run()
    assert path.read_text().endswith("my addition\n")


def test_run_all_runs_independent_stages_side_by_side_and_dependent_ones_after(tmp_path):
    import threading

    barrier = threading.Barrier(2, timeout=20)  # passes only if both stages run at the same time
    order: list[str] = []

    def meet(name):
        barrier.wait()
        order.append(name)
        return name

    stages = [Stage("later", lambda: order.append("later") or 3, after=("a", "b")),
              Stage("a", lambda: meet("a")), Stage("b", lambda: meet("b"))]
    failed = StageRunner(tmp_path).run_all(stages, workers=2)
    assert failed == {} and order[-1] == "later" and sorted(order[:2]) == ["a", "b"]


def test_run_all_skips_stages_after_a_failed_one_and_runs_alone_stages_alone(tmp_path):
    import threading
    import time

    running, seen = [], []
    lock = threading.Lock()

    def work(name, fail=False):
        with lock:
            running.append(name)
            seen.append(sorted(running))
        time.sleep(0.05)
        with lock:
            running.remove(name)
        if fail:
            raise RuntimeError(f"{name} broke\ndetails")
        return name

    stages = [Stage("train", lambda: work("train", fail=True)), Stage("quant", lambda: work("quant"), ("train",)),
              Stage("x", lambda: work("x")), Stage("y", lambda: work("y")), Stage("speed", lambda: work("speed"),
                                                                                 alone=True)]
    runner = StageRunner(tmp_path)
    failed = runner.run_all(stages, workers=3)
    assert failed == {"train": "RuntimeError: train broke", "quant": "not run: it needs stage train, which failed"}
    assert ["speed"] in seen and not any("speed" in s and len(s) > 1 for s in seen)
    assert set(runner.records) == {"x", "y", "speed"}


def test_figures_are_drawn_for_the_repvgg_seed_with_the_largest_int8_drop(tmp_path):
    demo = Demo(DemoOptions(out=tmp_path, tasks=["cls"], profile="tiny", seeds=[0, 1, 2]))
    for seed, (fp32, int8) in enumerate([(98.0, 97.0), (99.0, 70.0), (97.0, 90.0)]):
        demo.stages.records[f"cls_quant_repvgg_custom_s{seed}"] = cls_quant_record(fp32, int8)
    assert demo.figure_seed() == (1, 29.0)
    figures = {"seed": 1, "repvgg_int8_drop": 29.0, "figures": {"fig2_weights": str(tmp_path / "cls" / "f.png")}}
    text = render_summary(tmp_path, {"cls_figures_s0-1-2": figures}, ["cls"], {}, _info())
    assert "Fig. 2-4 for seed 1" in text and "lost most under INT8 (max): 29.0 points" in text
    assert "![Fig. 2, seed 1](cls/f.png)" in text
    stage = next(st for st in demo.cls_jobs() if st.name.startswith("cls_figures"))
    assert stage.name == "cls_figures_s0-1-2"
    assert {f"cls_quant_repvgg_custom_s{s}" for s in (0, 1, 2)} <= set(stage.after)


def test_quick_profile_trains_the_two_models_of_the_story_at_the_full_recipe(tmp_path):
    demo = Demo(DemoOptions(out=tmp_path, profile="quick"))
    assert demo.opts.tasks == ["cls", "det"] and DemoOptions(out=tmp_path).tasks == ["cls", "det", "seg"]
    names = [st.name for st in demo.cls_jobs() + demo.det_jobs()]
    assert sorted({n for n in names if "_train_" in n}) == [
        "cls_train_qarepvgg_s2", "cls_train_repvgg_custom_s2", "det_train_qarepvgg_s2", "det_train_repvgg_s2"]
    assert demo.prof.cls_epochs == make_profile(DemoOptions(out=tmp_path)).cls_epochs  # not a shortened recipe


def test_trainings_side_by_side_start_after_their_dataset_was_written_once(tmp_path):
    demo = Demo(DemoOptions(out=tmp_path, tasks=["cls", "det", "seg"], profile="tiny"))
    stages = demo.cls_jobs() + demo.det_jobs() + demo.seg_jobs()
    for st in stages:
        if "_train_" in st.name and st.name != "cls_train_hs":  # two exports of one folder at once trip over each other
            data = "cls_data" if st.name.startswith("cls_") else "canvas_data"
            assert data in st.after, st.name
        if st.name.startswith(("det_train_", "seg_train_")):  # each dense model starts from its block's classifier
            block, seed = st.name.split("_")[2], st.name.split("_s")[-1]
            assert f"cls_train_{'repvgg_custom' if block == 'repvgg' else block}_s{seed}" in st.after, st.name
    from qarep_dense.demo.main_job import _prepare_cls_data

    root = Path(_prepare_cls_data(str(ROOT / "configs" / "cls" / "digits_repvgg.toml"),
                                  demo.cls_sets(0, tmp_path / "data" / "synthetic_cls"))["root"])
    assert (root / "train").is_dir() and (root / "val").is_dir()


def test_stage_span_is_the_wall_time_of_stages_run_side_by_side(tmp_path):
    runner = StageRunner(tmp_path)
    runner.mark("a", 1, 10.0, start=100.0)
    runner.mark("b", 2, 10.0, start=104.0)
    span = stage_span(tmp_path)
    assert span is not None and span > 0
    assert stage_span(tmp_path / "none") is None


def test_side_by_side_figures_stack_and_fit_the_page_width(tmp_path):
    import numpy as np
    from matplotlib.image import imread, imsave

    from qarep_dense.analysis.plots import plot_side_by_side

    for name in ("a", "b"):
        imsave(tmp_path / f"{name}.png", np.random.default_rng(0).random((300, 2000, 3)))
    out = plot_side_by_side([tmp_path / "a.png", tmp_path / "b.png"], ["A", "B"], tmp_path / "ab.png", stack=True,
                            title="t")
    h, w = imread(str(out)).shape[:2]
    assert w <= 1600 and h > 2 * 300 * 1600 / 2000  # two rows, scaled to the page width
    wide = plot_side_by_side([tmp_path / "a.png", tmp_path / "b.png"], ["A", "B"], tmp_path / "wide.png")
    assert imread(str(wide)).shape[1] <= 1600


def test_default_profile_trains_the_story_and_optional_rows_come_back_on_request(tmp_path):
    demo = Demo(DemoOptions(out=tmp_path))
    trains = {st.name for st in demo.cls_jobs() + demo.det_jobs() + demo.seg_jobs() if "_train_" in st.name}
    assert sorted(n for n in trains if n.startswith("cls_")) == [
        f"cls_train_{m}_s{s}" for m in ("qarepvgg", "repvgg_custom") for s in (0, 1, 2)]  # no RepOpt, no Hyper-Search
    assert sorted(n for n in trains if n.startswith(("det_", "seg_"))) == [
        "det_train_qarepvgg_s0", "det_train_repvgg_s0", "seg_train_qarepvgg_s0", "seg_train_repvgg_s0"]
    baseline = Demo(DemoOptions(out=tmp_path, cls_models=["repvgg_custom", "qarepvgg", "repopt"]))
    names = {st.name for st in baseline.cls_jobs()}
    assert {"cls_train_hs", "cls_train_repopt_s2", "cls_quant_repopt_s2", "cls_analyze_repopt_s2"} <= names
    every = Demo(DemoOptions(out=tmp_path, cls_models=["repopt", "repvgg_normal", "qarepvgg", "repvgg_custom"]))
    names = [st.name for st in every.cls_jobs() + every.det_jobs()]
    assert "cls_train_repvgg_normal_s2" in names
    assert every.prof.cls_models == ("repvgg_custom", "repvgg_normal", "qarepvgg", "repopt")  # table order


@pytest.mark.slow
def test_a_training_side_by_side_gives_the_same_weights_as_alone(tmp_path):
    """The main job's determinism rule: one thread per stage, so a run's result does not depend on what runs
    beside it (nor on --jobs)."""
    import torch

    from qarep_dense.demo.stages import Stage

    demo = Demo(DemoOptions(out=tmp_path, tasks=["cls"], profile="tiny", jobs=2))
    data = tmp_path / "data" / "synthetic_cls"
    config = ROOT / "configs" / "cls" / "digits_qarepvgg.toml"

    def train(name, seed):
        return Stage(name, lambda: demo.train(name, "cls", config, tmp_path / name,
                                              demo.cls_sets(seed, data)), ("data",))

    data_stage = Stage("data", lambda: __import__("qarep_dense.demo.main_job", fromlist=["x"])._prepare_cls_data(
        str(config), demo.cls_sets(0, data)))
    assert demo.stages.run_all([data_stage, train("pair_a", 0), train("pair_b", 1)], workers=2) == {}
    assert demo.stages.run_all([train("alone_a", 0)], workers=1) == {}

    def weights(name):
        return torch.load(tmp_path / name / "last.pt", map_location="cpu", weights_only=True)["model"]

    side, alone = weights("pair_a"), weights("alone_a")
    assert side.keys() == alone.keys() and all(torch.equal(side[k], alone[k]) for k in side)
    assert not all(torch.equal(side[k], weights("pair_b")[k]) for k in side)  # the other seed differs


def test_the_quantize_pipeline_runs_on_the_story_pair_and_is_shown_next_to_plain_ptq(tmp_path):
    demo = Demo(DemoOptions(out=tmp_path, cls_models=["repvgg_custom", "qarepvgg", "repopt"]))
    stages = {st.name: st for st in demo.cls_jobs()}
    for seed in (0, 1, 2):
        for model in ("repvgg_custom", "qarepvgg"):
            assert stages[f"cls_pipeline_{model}_s{seed}"].after == (f"cls_train_{model}_s{seed}",)
        assert f"cls_pipeline_repopt_s{seed}" not in stages
    records = {"cls_pipeline_repvgg_custom_s1": {"fp32": 99.17, "int8": 98.61, "int8_ort": 98.89, "drop": 0.56,
                                                 "budget_met": True, "candidate": "percentile+repair_cle",
                                                 "report": str(tmp_path / "cls" / "r.md")}}
    text = render_summary(tmp_path, records, ["cls"], {}, _info())
    row = next(line for line in text.splitlines() if line.startswith("| repvgg_custom | 1 | 99.17 | - |"))
    assert "percentile+repair_cle | 98.61 | 98.9 | 0.56 | yes | [report](cls/r.md)" in row


def test_dense_stages_start_from_their_blocks_classifier_and_run_the_documented_search(tmp_path, monkeypatch):
    demo = Demo(DemoOptions(out=tmp_path, tasks=["det", "seg"]))
    calls = []
    monkeypatch.setattr(demo, "in_process", lambda stage, fn, *args, **kw: calls.append((stage, fn.__name__, args)))
    monkeypatch.setattr(Demo, "dense_checkpoint", staticmethod(lambda work: work / "deploy.pt"))
    stages = {st.name: st for st in demo.det_jobs() + demo.seg_jobs()}
    stages["det_pipeline_repvgg_s0"].fn()
    stage, fn, args = calls[-1]
    assert (stage, fn) == ("det_pipeline_repvgg_s0", "quantize_pipeline")
    assert args[0] == str(tmp_path / "det" / "repvgg_s0" / "deploy.pt")
    assert args[3:] == (1.0, ("max", "percentile", "mse"), "off")
    assert "--calibrators max percentile mse --bias-correction off" in demo.settings()["dense_recipe"]["quantize"]
    with pytest.raises(FileNotFoundError):  # the training's results are read after the stage process
        stages["seg_train_repvgg_s0"].fn()
    stage, fn, args = calls[-1]
    assert fn == "train_seg" and args[3]["model.backbone.init_cfg"]["checkpoint"] == str(
        tmp_path / "cls" / "repvgg_custom_s0" / "last.pt")
    assert stages["det_train_qarepvgg_s0"].after == ("canvas_data", "cls_train_qarepvgg_s0")


def test_story_classifiers_are_evaluated_every_tenth_epoch_and_the_hyper_search_every_epoch(tmp_path, monkeypatch):
    """Sparser evaluation trains the same models (tests/test_train_cls.py); the Hyper-Search run's best.pt needs
    every epoch's evaluation."""
    demo = Demo(DemoOptions(out=tmp_path, tasks=["cls"], cls_models=["repvgg_custom", "qarepvgg", "repopt"]))
    calls = {}
    monkeypatch.setattr(demo, "in_process", lambda stage, fn, *args, **kw: calls.setdefault(stage, args))
    stages = {st.name: st for st in demo.cls_jobs()}
    for name in ("cls_train_repvgg_custom_s1", "cls_train_qarepvgg_s0", "cls_train_repopt_s2", "cls_train_hs"):
        with pytest.raises(FileNotFoundError):  # the training's results.json is read after the stage process
            stages[name].fn()
    interval = {name: [s for s in args[3] if s.startswith("train.eval_interval=")] for name, args in calls.items()}
    assert interval == {"cls_train_repvgg_custom_s1": ["train.eval_interval=10"],
                        "cls_train_qarepvgg_s0": ["train.eval_interval=10"],
                        "cls_train_repopt_s2": ["train.eval_interval=10"], "cls_train_hs": []}


def test_repopt_dense_rows_come_on_request_with_their_hyper_search_models(tmp_path, monkeypatch):
    default = Demo(DemoOptions(out=tmp_path / "d", tasks=["det", "seg"]))
    assert not any("repopt" in st.name or "hs" in st.name for st in default.det_jobs() + default.seg_jobs())
    demo = Demo(DemoOptions(out=tmp_path, tasks=["det", "seg"], dense_blocks=["repopt", "qarepvgg", "repvgg"]))
    assert demo.prof.dense_blocks == ("repvgg", "qarepvgg", "repopt")  # BACKBONE_OF's order
    pair = Demo(DemoOptions(out=tmp_path / "p", tasks=["det"], dense_blocks=["qarepvgg", "repvgg"]))
    assert {"det_ptq_s0", "det_mechanism_s0"} <= {st.name for st in pair.det_jobs()}  # the default's stages
    stages = {st.name: st for st in demo.det_jobs() + demo.seg_jobs()}
    assert stages["det_train_hs"].after == ("canvas_data", "cls_train_hs")
    assert stages["det_train_repopt_s0"].after == ("canvas_data", "cls_train_repopt_s0", "det_train_hs")
    assert stages["seg_train_repopt_s0"].after == ("canvas_data", "cls_train_repopt_s0")
    assert stages["cls_train_repopt_s0"].after == ("cls_data", "cls_train_hs") and "cls_train_hs" in stages
    assert "det_pipeline_repopt_s0" not in stages and "det_pipeline_qarepvgg_s0" in stages  # the story pair only
    # measured together under names of their own: a folder of the pair's run measures all three anew
    assert {"det_ptq_s0_repvgg-qarepvgg-repopt", "seg_mechanism_s0_repvgg-qarepvgg-repopt"} <= set(stages)
    assert "det_ptq_s0" not in stages
    hs = tmp_path / "cls" / "hs"
    assert f"model.backbone_init={hs / 'last.pt'}" in demo.det_sets("hs", 0)
    sets = demo.det_sets("repopt", 0)
    assert f"model.backbone_init={tmp_path / 'cls' / 'repopt_s0' / 'last.pt'}" in sets
    assert f"repopt.hs_checkpoint={tmp_path / 'det' / 'hs' / 'best.pt'}" in sets
    calls = []
    monkeypatch.setattr(demo, "in_process", lambda stage, fn, *args, **kw: calls.append((stage, fn.__name__, args)))
    with pytest.raises(FileNotFoundError):  # the training's results are read after the stage process
        stages["seg_train_repopt_s0"].fn()
    options = calls[-1][2][3]
    assert options["optim_wrapper.constructor"] == "RepOptimizerConstructor"
    assert options["optim_wrapper.paramwise_cfg.hs_checkpoint"] == str(hs / "best.pt")
    with pytest.raises(ValueError, match="dense-blocks repopt: choose each at most once"):
        DemoOptions(out=tmp_path, dense_blocks=["repopt"])
