"""The main job's estimate of the time left (qarep_dense.demo.progress)."""
from __future__ import annotations

import pytest

from qarep_dense.demo.main_job import Demo, DemoOptions
from qarep_dense.demo.progress import (OTHER_SECONDS, TimeLeft, describe, expected_seconds, reference_seconds,
                                       stage_kind)
from qarep_dense.demo.stages import Stage


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def start(left: TimeLeft, name: str) -> None:
    left.timed(name, lambda: None)()


def test_time_left_weighs_each_stage_by_its_cost_and_learns_the_pace_from_the_finished_ones():
    clock = Clock()
    left = TimeLeft({"a": 100.0, "b": 100.0, "c": 400.0, "d": 200.0}, workers=2, clock=clock)
    assert left.seconds_left() == pytest.approx(400.0)  # (100 + 100 + 400 + 200) / 2 at the reference pace
    start(left, "a"), start(left, "b")
    clock.now = 150.0
    left.finished("a")  # 150 s where the reference took 100: this machine is 1.5x slower
    assert left.pace() == pytest.approx(1.5)
    # b: 1.5 * 100 - 150 = 0 left; c 600 and d 300 on two workers, but c runs on one: 600
    assert left.seconds_left() == pytest.approx(600.0)
    left.finished("b")
    start(left, "c")
    clock.now = 450.0  # c is 300 s in: 300 left of it, and d's 300
    assert left.seconds_left() == pytest.approx((300.0 + 300.0) / 2)


def test_the_time_left_is_never_less_than_its_longest_stage_and_stages_run_alone_count_in_full():
    clock = Clock()
    left = TimeLeft({"long": 600.0, "short": 60.0, "speed": 30.0}, workers=2, alone=["speed"], clock=clock)
    # shared: (600 + 60) / 2 = 330, but 'long' alone needs 600 on one worker; 'speed' runs alone after it all
    assert left.seconds_left() == pytest.approx(600.0 + 30.0)


def test_stages_reused_from_an_earlier_run_cost_nothing_and_say_nothing_of_the_pace():
    clock = Clock()
    left = TimeLeft({"done_before": 300.0, "next": 300.0}, workers=1, clock=clock)
    clock.now = 5.0
    left.finished("done_before")  # ended without starting: reused
    assert left.pace() == 1.0
    assert left.seconds_left() == pytest.approx(300.0)


def test_the_pace_comes_from_the_long_stages_only():
    clock = Clock()
    left = TimeLeft({"data": 10.0, "train": 300.0, "later": 300.0}, workers=1, clock=clock)
    start(left, "data")
    clock.now = 30.0  # the process start dominates a short stage: 3x its reference, which says nothing
    left.finished("data")
    assert left.pace() == 1.0
    start(left, "train")
    clock.now = 30.0 + 240.0
    left.finished("train")  # 0.8x the reference: the machine's real pace
    assert left.pace() == pytest.approx(0.8)
    assert left.seconds_left() == pytest.approx(240.0)


def test_reference_seconds_scale_with_the_recipe_and_take_the_longest_matching_kind():
    assert stage_kind("cls_train_hs") == "cls_train_hs"
    assert stage_kind("cls_train_qarepvgg_s2") == "cls_train"
    assert stage_kind("det_ptq_s0_repvgg-qarepvgg-repopt") == "det_ptq"
    assert stage_kind("cls_trainer") is None  # a prefix of the name is not its kind
    assert reference_seconds("cls_train_repvgg_custom_s0", cls_epochs=20) == pytest.approx(
        reference_seconds("cls_train_repvgg_custom_s0") / 2)
    assert reference_seconds("det_train_qarepvgg_s0", det_epochs=20) == pytest.approx(
        2 * reference_seconds("det_train_qarepvgg_s0"))
    assert reference_seconds("something_new") == OTHER_SECONDS


@pytest.mark.parametrize("options", [
    {},
    {"profile": "quick", "tasks": ["cls", "det", "seg"]},
    {"cls_models": ["repvgg_custom", "repvgg_normal", "qarepvgg", "repopt"],
     "dense_blocks": ["repvgg", "qarepvgg", "repopt"]},
])
def test_every_stage_of_the_main_job_has_a_reference_time(tmp_path, options):
    """A new kind of stage must get its line in REFERENCE_SECONDS, or the estimate treats it as short."""
    options = {"tasks": ["cls", "det", "seg"], **options}
    demo = Demo(DemoOptions(out=str(tmp_path / "demo"), **options))
    tasks = tuple(options["tasks"])
    stages = demo.cls_jobs() + demo.det_jobs() + demo.seg_jobs() + demo.picture_jobs(tasks) + demo.speed_jobs(tasks)
    unknown = [st.name for st in stages if stage_kind(st.name) is None]
    assert stages and not unknown


def test_the_defaults_reference_time_is_the_reference_runs(tmp_path):
    """The default's stages add up to about the 95.6 stage-minutes of the run the table was measured on."""
    demo = Demo(DemoOptions(out=str(tmp_path / "demo"), tasks=["cls", "det", "seg"]))
    tasks = ("cls", "det", "seg")
    names = {st.name for st in demo.cls_jobs() + demo.det_jobs() + demo.seg_jobs() + demo.picture_jobs(tasks)
             + demo.speed_jobs(tasks)}
    assert len(names) == 47
    assert sum(expected_seconds(names, 40, 10).values()) / 60 == pytest.approx(95.6, rel=0.03)


def test_describe_rounds_minutes_up():
    assert describe(59) == "under a minute left"
    assert describe(60) == "about 1 min left"
    assert describe(61) == "about 2 min left"


def test_the_progress_line_shows_the_estimate_as_stages_end(tmp_path, capsys):
    demo = Demo(DemoOptions(out=str(tmp_path / "demo"), tasks=["cls"], profile="tiny"))
    demo.run_stages("test", [Stage("cls_quant_a", lambda: {"x": 1}), Stage("cls_quant_b", lambda: {"x": 2})])
    err = capsys.readouterr().err
    assert "2/2 stages" in err and "under a minute left" in err
    assert demo.stages.records == {"cls_quant_a": {"x": 1}, "cls_quant_b": {"x": 2}}


def _bench_time_left():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_time_left.py"
    spec = importlib.util.spec_from_file_location("bench_time_left", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_replay_benchmark_sets_the_estimate_beside_the_truth(tmp_path, capsys):
    import json

    bench = _bench_time_left()
    marks = tmp_path / "demo" / ".stages"
    marks.mkdir(parents=True)
    # two classifiers side by side at 1.5x the reference (340 s -> 510 s), then a short measurement
    for name, start, end in [("cls_train_a_s0", 0, 510), ("cls_train_b_s0", 0, 520), ("cls_quant_a_s0", 520, 544)]:
        (marks / f"{name}.json").write_text(json.dumps({"stage": name, "start": 1000 + start, "end": 1000 + end,
                                                        "seconds": end - start, "record": {}}))
    rows = bench.replay(bench.load(tmp_path / "demo"), workers=2, cls_epochs=40, det_epochs=10)
    assert [r["stage"] for r in rows] == ["cls_train_a_s0", "cls_train_b_s0", "cls_quant_a_s0"]
    assert [r["truth"] for r in rows] == [34, 24, 0]
    # after the first classifier the pace is 1.5: b has 1.5 * 340 - 510 = 0 left, the measurement 1.5 * 16 = 24
    assert rows[0]["estimate"] == pytest.approx(24.0)
    assert rows[0]["count_based"] == pytest.approx(510 * 2)
    bench.main([str(tmp_path / "demo")])
    assert "| 8.5 | cls_train_a_s0 | 0.4 | 17.0 | 0.6 |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no stage records"):
        bench.load(tmp_path)
