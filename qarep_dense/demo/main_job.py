"""The main job: the paper's story on the embedded data, three tasks, one results folder.

``tools/demo.py`` (behind ``scripts/demo.sh``) parses the command line into :class:`DemoOptions` and
runs :class:`Demo`. Classification (the story): RepVGG with its authors' recipe (custom L2 + identity-gamma
decay), QARepVGG and RepOpt-VGG (optionally RepVGG with normal L2) over seeds; FP32, INT8 (max and entropy
calibration), weights-only and activations-only INT8, the mechanism figures per model, the dead-channel
repair and the paper's Fig. 2-4 for the RepVGG seed with the largest INT8 drop. Detection and segmentation
(the paper's Tables 8 and 9 at CPU scale): each block's classifier fine-tuned on the digit canvases as a detector
and as an FCN segmentor, FP32 vs INT8 (and ONNX Runtime INT8) AP / mIoU, tools/quantize.py's all-INT8 choice,
and the mechanism per backbone stage. Speed: FP32 vs ORT INT8 latency. Pictures: FP32 and INT8 predictions
side by side on validation canvases.

Each stage calls the ``tasks`` functions behind the tools, as the tools call them (:mod:`.stage_jobs`), in a
process of its own that leads its own session, logged to OUT/logs/<stage>.log (:mod:`.processes`): Ctrl-C or
a kill of the main job ends every running stage and what it started, with one message and a non-zero exit.
Independent stages run side by side (``jobs`` at a time), each on ONE thread: these small models use a second
thread poorly, and a one-thread run gives the same numbers whatever runs beside it and whatever ``jobs`` is
(benchmarks/bench_parallel_train.py measures both). Every stage leaves a done-marker in OUT/.stages
(:class:`~qarep_dense.demo.stages.StageRunner`): a rerun reuses finished stages. OUT and every stage's output
folder are claimed (:mod:`qarep_dense.fileio.ownership`): the demo writes only inside OUT, never deletes or
replaces a file it did not write, and a second main job (or a leftover stage) in the same folder is refused.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

from tqdm import tqdm

from ..choices import TASK_NAMES
from ..fileio import claim, write_json_atomic, write_text_atomic
from . import cls_story, stage_jobs
from .config_digest import config_digest
from .processes import run_in_process, stop_on_signals
from .progress import TimeLeft, describe, expected_seconds
from .speed import measure_speed
from .stages import Stage, StageRunner
from .results import DENSE_PAIR, RESULTS_FILE, dense_stage, write_results
from .summary import render_summary

ROOT = Path(__file__).resolve().parents[2]  # the checkout: tools/ and configs/ live beside the package

log = logging.getLogger(__name__)
TASKS = tuple(TASK_NAMES)
PROFILES = ("full", "quick", "tiny")
DEFAULT_OUT = {"full": Path("work_dirs/demo"), "quick": Path("work_dirs/demo_quick"),
               "tiny": Path("work_dirs/demo_tiny")}
SETTINGS_FILE = "demo_settings.json"  # what the stages in a results folder were run with
STAGE_THREADS = 1  # every stage's torch/OpenMP threads (the speed stage runs alone with --threads)
# The classification recipe of benchmarks/bench_recipe_study.py ("s24_nowarm_e40" at the profile's epochs):
# lr 0.4 from the first step (no warm-up), weight decay 5e-4, digits at 24x24 (about 0.6x the compute of
# 32x32, so the 40 epochs the dead channels need take under 2 minutes per model; at 16x16 QARepVGG did not
# train at this rate); RepVGG's custom L2 also decays the identity-BN gammas, as its authors' code does.
CLS_IMAGE_SIZE = 24
CLS_RECIPE = ["optim.lr=0.4", "optim.weight_decay=5e-4", "optim.warmup_epochs=0", f"data.image_size={CLS_IMAGE_SIZE}"]
# The trainings stay eager NCHW: train.channels_last (1.24-1.33x for two one-thread trainings side by side) trains
# other models than the documented tables' and would still leave the default over 30 minutes on the 2-core
# machine (BENCHMARKS.md, "The main job with channels-last classifiers").
# The story's classifiers are evaluated every 10th epoch (and after the last) instead of every epoch: the same models
# bit for bit (the loaders draw from their own seeded generators and evaluation draws no global random number:
# tests/test_train_cls.py), about 0.4 s less per evaluation left out (1.04x at 10 epochs; BENCHMARKS.md). The
# Hyper-Search run keeps every epoch: the best of them (its best.pt) gives RepOpt-VGG its scales.
CLS_EVAL_INTERVAL = 10
PIPELINE_MODELS = ("repvgg_custom", "qarepvgg")  # tools/quantize.py runs on these (the story's pair)
CLS_MODELS = {  # name -> (config, extra overrides); the RepOpt scales come from one Hyper-Search run
    "repvgg_custom": ("digits_repvgg.toml", ["optim.l2=custom"]),
    "repvgg_normal": ("digits_repvgg.toml", ["optim.l2=normal"]),
    "qarepvgg": ("digits_qarepvgg.toml", []),
    "repopt": ("digits_repopt.toml", []),
}
# Detection and segmentation fine-tune the classification stage's classifiers on the digit canvases (real
# handwriting; qarep_dense.data.digits_canvas), as the paper's dense models start from ImageNet backbones:
# each block's detector / segmentor starts from that block's classifier of the same seed.
BACKBONE_OF = {"repvgg": "repvgg_custom", "qarepvgg": "qarepvgg", "repopt": "repopt"}  # dense block -> its classifier
# The default dense rows: the story's pair. --dense-blocks adds RepOpt-VGG (measured on a 2-core machine: about 14
# more stage-minutes per seed for its classifier, detector and segmentor, and about 10 once for the Hyper-Search
# classifier and detector).
DENSE_BLOCKS = DENSE_PAIR
DENSE_PIPELINE_BLOCKS = DENSE_PAIR  # tools/quantize.py runs on these dense models (the story's pair)
CANVAS_DATA = "digits_canvas"  # OUT/data/<this>: the canvases both dense tasks read (one export)
STORY_MODELS = ("repvgg_custom", "qarepvgg")  # the comparison every run makes (verdict, figures, speed)
# The default trains the story's pair in every task, to keep it shorter; --cls-models (and --dense-blocks) bring
# back the rows it leaves out: RepOpt-VGG, the optimizer-side baseline (its Hyper-Search run and three classifiers
# with their measurements: about 17 of the 2026-12-07 Xeon default's 83 stage-minutes; it held in INT8 in every
# seed of the recorded runs), and RepVGG with normal L2 (the same mechanism, fewer dead channels). Even so the
# default is over 30 minutes on the 2-core machines measured (docs/main_job.md, "How long"). The dense tasks
# train the first seed (--seeds trains all three tasks over the given seeds: about 12 more minutes per seed).
DEFAULT_CLS_MODELS = STORY_MODELS
CLS_CONFIGS = ROOT / "configs" / "cls"
CLS_HS_CONFIG = CLS_CONFIGS / "digits_hs.toml"  # the one Hyper-Search classifier whose scales RepOpt-VGG uses
# What decides the dense models besides the seeds: a results folder made with another recipe is refused.
# The dense models' quantize search is tools/quantize.py --int8-only --max-drop 1 --calibrators max percentile
# mse --bias-correction off. Entropy's histogram search took 90 % of the search's time on a toy detector and
# scored last there; on the digit-canvas RepVGG detectors the bias-corrected candidates took 85 % of the search
# (687-866 of 811-1011 s) and the best candidate without correction was within 1 AP too (seeds 0 and 1: 52.45
# and 55.53 against FP32 53.35 and 55.85). The full search is that command without the two flags.
DENSE_CALIBRATORS = ("max", "percentile", "mse")
DENSE_PTQ_BATCH = 64  # the PTQ tables calibrate on 4 batches: 256 training canvases, as the dense study
DENSE_BIAS_CORRECTION = "off"
# The segmentors: the dense study's closest recipe (seg_lr0.1_4k: rate 0.1, 4000 iterations). At 2000 iterations
# they stopped at 19-59 mIoU, still climbing, too low for a 3-point INT8 drop to mean much; here 55-80.
SEG_CONFIG = "fcn_{block}-a0h_1xb16-4000it_digits-canvas-64x64.py"
DET_CONFIG = "digits_canvas_{block}.toml"
DENSE_RECIPE = {"det": "configs/det/" + DET_CONFIG.format(block="<block>"),
                "seg": "configs/seg/" + SEG_CONFIG.format(block="<block>"), "backbone": BACKBONE_OF,
                "quantize": f"--int8-only --max-drop 1 --calibrators {' '.join(DENSE_CALIBRATORS)} "
                            f"--bias-correction {DENSE_BIAS_CORRECTION}", "ptq_batch": DENSE_PTQ_BATCH}
CANVAS_TEXT = ("digit canvases (64x64, 2-3 handwritten digits at 16/24/32 px; validation canvases only from the "
               "classifiers' validation digits)")
# --quick: the two models of the story at the main recipe's full 40 epochs (QARepVGG needs them to train,
# RepVGG to grow its dead channels), one seed, and the two detectors fine-tuned from them.
QUICK_TASKS = ("cls", "det")  # 10 minutes leave no room for the segmentors (--tasks cls,det,seg adds them)
# The seed: with one thread per training (as the main job runs), RepVGG (custom L2) lost 4.7, 18.6 and 23.6
# points in seeds 0, 1, 2 (measured on this recipe; the two-thread recipe study's ranking differs), and
# QARepVGG seed 2 held (99.7 -> 100.0). Seed 2 shows the story in one seed; the summary computes it anew.
QUICK_SEED = 2


@dataclass
class DemoOptions:
    """What the user asked for (tools/demo.py's command line)."""

    out: Path | None = None  # default: DEFAULT_OUT of the profile
    tasks: list[str] | None = None  # default: all three; --quick: cls,det (10-15 minutes)
    profile: str = "full"  # full | quick (one seed, fewer epochs) | tiny (toy models, for the tests)
    seeds: list[int] | None = None  # default: the profile's
    cls_epochs: int | None = None
    det_epochs: int | None = None
    threads: int = 2  # for the latency measurement (the speed stages run alone)
    jobs: int = 2  # stages side by side, one thread each
    cls_models: list[str] | None = None  # default: the profile's
    dense_blocks: list[str] | None = None  # default: DENSE_BLOCKS

    def __post_init__(self):
        if self.tasks is None:
            self.tasks = list(QUICK_TASKS if self.profile == "quick" else TASKS)
        bad = [t for t in self.tasks if t not in TASKS]
        if bad or not self.tasks:
            raise ValueError(f"tasks: unknown task(s) {bad}; choose from {','.join(TASKS)}")
        if self.profile not in PROFILES:
            raise ValueError(f"profile {self.profile!r}: choose from {', '.join(PROFILES)}")
        if self.seeds is not None:
            self.seeds = [int(s) for s in self.seeds]
            twice = sorted({s for s in self.seeds if self.seeds.count(s) > 1})
            if not self.seeds or twice:
                raise ValueError(f"seeds {self.seeds}: " + (f"seed {twice[0]} given more than once (each seed "
                                                             "counts once in the means)" if twice else "none given"))
            if min(self.seeds) < 0:
                raise ValueError(f"seeds {self.seeds}: seeds are non-negative integers")
        for name in ("cls_epochs", "det_epochs", "threads", "jobs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name.replace('_', '-')} {value}: must be at least 1")
        for name, known, needed in (("cls_models", CLS_MODELS, STORY_MODELS),
                                    ("dense_blocks", BACKBONE_OF, DENSE_BLOCKS)):
            chosen = getattr(self, name)
            if chosen is not None:
                bad = [m for m in chosen if m not in known]
                if bad or len(set(chosen)) != len(chosen) or not set(needed) <= set(chosen):
                    raise ValueError(f"{name.replace('_', '-')} {','.join(chosen)}: choose each at most once from "
                                     f"{','.join(known)}, including {' and '.join(needed)}"
                                     + (f" (unknown: {','.join(bad)})" if bad else ""))
        if self.out is None:
            self.out = DEFAULT_OUT[self.profile]


@dataclass
class Profile:
    """How much the demo runs. ``tiny`` is for the tests: toy models and data, meaningless numbers."""

    name: str
    cls_seeds: list[int]
    det_seeds: list[int]
    cls_epochs: int
    det_epochs: int
    cls_models: tuple[str, ...] = tuple(CLS_MODELS)
    dense_blocks: tuple[str, ...] = DENSE_BLOCKS
    cls_sets: list[str] = field(default_factory=list)
    cls_data: str = "digits"
    speed_repeats: int = 20

    @property
    def tiny(self) -> bool:
        return self.name == "tiny"


def make_profile(opts: DemoOptions) -> Profile:
    if opts.profile == "tiny":
        prof = Profile("tiny", [0], [0], 1, 1, speed_repeats=2, cls_data="synthetic_cls", cls_sets=[
            "model.arch=test", "data.kind=synthetic", "model.num_classes=6", "data.synthetic_per_class_train=16",
            "data.synthetic_per_class_val=8", "data.batch_size=16"])
    elif opts.profile == "quick":
        prof = Profile("quick", [QUICK_SEED], [QUICK_SEED], 40, 10, cls_models=STORY_MODELS)
    else:
        prof = Profile("full", [0, 1, 2], [0], 40, 10, cls_models=DEFAULT_CLS_MODELS)
    if opts.seeds:
        prof.cls_seeds = prof.det_seeds = list(opts.seeds)
    if opts.cls_models:  # in the table's order, whatever the command line's
        prof.cls_models = tuple(m for m in CLS_MODELS if m in opts.cls_models)
    if opts.dense_blocks:
        prof.dense_blocks = tuple(b for b in BACKBONE_OF if b in opts.dense_blocks)
    prof.cls_epochs = opts.cls_epochs if opts.cls_epochs is not None else prof.cls_epochs
    prof.det_epochs = opts.det_epochs if opts.det_epochs is not None else prof.det_epochs
    return prof


# Each dataset is written once, by a stage of its own, before the trainings that read it start side by side
# (two trainings exporting the same folder at once would trip over each other). Each function asks the
# task for the export its trainings would make, so those find it complete and write nothing.
def _prepare_cls_data(config: str, sets: list[str]) -> dict:
    from qarep_dense.config import load_config
    from qarep_dense.tasks.classification import ClsConfig, prepare_data

    cfg = load_config(config, ClsConfig, sets)
    return {"root": str(prepare_data(cfg.data, cfg.model.num_classes))}


def _prepare_det_data(config: str, sets: list[str]) -> dict:
    from qarep_dense.config import load_config
    from qarep_dense.tasks.detection import DetConfig, data_paths

    return {k: str(v) for k, v in data_paths(load_config(config, DetConfig, sets).data).items()}


class Demo:
    """Runs the stages of each task and collects their records for the summary."""

    def __init__(self, opts: DemoOptions):
        self.opts, self.prof = opts, make_profile(opts)
        self.out = Path(opts.out).resolve()
        self.stages = StageRunner(self.out)
        self.skipped: dict[str, str] = {}
        self.failed: dict[str, str] = {}

    # --- helpers ---------------------------------------------------------------------------------

    def in_process(self, stage: str, fn, *args, threads: int = STAGE_THREADS):
        """``fn(*args)`` in a stage process of its own (one thread), logged to OUT/logs/<stage>.log."""
        return run_in_process(fn, args, self.out / "logs" / f"{stage}.log", threads)

    def train(self, stage: str, task: str, config: Path, work: Path, sets: list[str]) -> dict:
        """Train ``task`` ("cls"/"det") into ``work`` (continuing an interrupted run there); its results.json."""
        if not (work / "results.json").is_file():
            self.in_process(stage, stage_jobs.train, task, str(config), str(work), sets, (work / "last.pt").is_file())
        return json.loads((work / "results.json").read_text())

    def run_stages(self, desc: str, jobs: list) -> None:
        """Run the stages (:class:`Stage` s or (name, fn) pairs), ``jobs`` at a time; a failed one is recorded
        (no marker) and the others go on, so one diverged training does not hide the rest. A stage that
        needs a failed one's outputs is not run and says why."""
        stages = [j if isinstance(j, Stage) else Stage(*j) for j in jobs]
        # the time left weighs each stage by its expected cost (tqdm's own estimate counts stages: see .progress)
        left = TimeLeft(expected_seconds([st.name for st in stages], self.prof.cls_epochs, self.prof.det_epochs),
                        self.opts.jobs, alone=[st.name for st in stages if st.alone])
        stages = [replace(st, fn=left.timed(st.name, st.fn)) for st in stages]

        def done(name: str, err: BaseException | None) -> None:
            left.finished(name)
            bar.set_postfix_str(describe(left.seconds_left()), refresh=False)
            bar.update()

        with tqdm(total=len(stages), desc=f"demo {desc}", unit="stage", postfix=describe(left.seconds_left()),
                  bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} stages [{elapsed}{postfix}]") as bar:
            self.failed.update(self.stages.run_all(stages, self.opts.jobs, done))

    # --- classification --------------------------------------------------------------------------

    def cls_sets(self, seed: int, data_root: Path) -> list[str]:
        return [*CLS_RECIPE, f"optim.epochs={self.prof.cls_epochs}", f"train.seed={seed}",
                f"data.root={data_root}", "train.progress=false", "train.deterministic=true", *self.prof.cls_sets]

    def cls_jobs(self) -> list[Stage]:
        """Trainings first (RepOpt's after the Hyper-Search), then per model the PTQ variants and the
        analysis, and the paper's figures once every RepVGG/QARepVGG model has been measured."""
        base, data, models = self.out / "cls", self.cls_data(), self.prof.cls_models
        trains = [self.cls_data_stage()]
        if "repopt" in models:
            trains.append(self.cls_hs_stage())
        measures: list[Stage] = []
        for seed in self.prof.cls_seeds:
            for name in models:
                work, tag = base / f"{name}_s{seed}", f"{name}_s{seed}"
                trains.append(self.cls_train_stage(name, seed))
                measures += [
                    Stage(f"cls_quant_{tag}", lambda w=work, t=tag: self.in_process(
                        f"cls_quant_{t}", cls_story.quant_variants, w / "deploy.pt", data), (f"cls_train_{tag}",)),
                    Stage(f"cls_analyze_{tag}", lambda w=work, t=tag: self.analyze(t, w, data), (f"cls_train_{tag}",)),
                ]
                if name in PIPELINE_MODELS:
                    measures.append(Stage(f"cls_pipeline_{tag}", lambda w=work, t=tag: self.pipeline(t, w, data),
                                          (f"cls_train_{tag}",)))
        pair = [f"cls_{kind}_{m}_s{s}" for kind in ("quant", "analyze") for m in ("repvgg_custom", "qarepvgg")
                for s in self.prof.cls_seeds]
        seeds = "-".join(map(str, self.prof.cls_seeds))  # the pick depends on the seeds run
        figures = Stage(f"cls_figures_s{seeds}", lambda: self.cls_figures(base), tuple(pair))
        return trains + measures + [figures]

    def cls_data(self) -> Path:
        return self.out / "data" / self.prof.cls_data

    def hs_work(self, task: str) -> Path:
        """The folder of the run's one Hyper-Search model of ``task`` ("cls", "det"), whose scales drive RepOpt."""
        return self.out / task / "hs"

    def cls_hs_stage(self) -> Stage:
        """The one Hyper-Search classifier whose scales every RepOpt-VGG model of the run trains with."""
        return Stage("cls_train_hs", lambda: self.train(
            "cls_train_hs", "cls", CLS_HS_CONFIG, self.hs_work("cls"),
            self.cls_sets(0, self.cls_data())), ("cls_data",))

    def cls_data_stage(self) -> Stage:
        """The classification data, written once (with the first model's config) before any training."""
        config, extra = CLS_MODELS[self.prof.cls_models[0]]
        return Stage("cls_data", lambda: self.in_process("cls_data", _prepare_cls_data, str(CLS_CONFIGS / config),
                                                         [*self.cls_sets(0, self.cls_data()), *extra]))

    def cls_train_stage(self, name: str, seed: int) -> Stage:
        """The training of classifier ``name`` (a CLS_MODELS key) of ``seed``; RepOpt's after the Hyper-Search."""
        config, extra = CLS_MODELS[name]
        stage, work = f"cls_train_{name}_s{seed}", self.out / "cls" / f"{name}_s{seed}"
        sets = [*self.cls_sets(seed, self.cls_data()), *extra, f"train.eval_interval={CLS_EVAL_INTERVAL}"]
        after = ("cls_data",)
        if name == "repopt":
            sets, after = [*sets, f"repopt.hs_checkpoint={self.hs_work('cls') / 'best.pt'}"], ("cls_data",
                                                                                                    "cls_train_hs")
        return Stage(stage, lambda: self.train(stage, "cls", CLS_CONFIGS / config, work, sets), after)

    def pipeline(self, tag: str, work: Path, data: Path) -> dict:
        """tools/quantize.py's search on a trained classifier, all INT8 (no float layer), 1-point budget."""
        return self.in_process(f"cls_pipeline_{tag}", stage_jobs.quantize_pipeline, str(work / "deploy.pt"), str(data),
                               str(work / "quantize"))

    def analyze(self, tag: str, work: Path, data: Path) -> dict:
        self.in_process(f"cls_analyze_{tag}", stage_jobs.analyze, str(work / "last.pt"), str(data),
                        str(work / "analysis"))
        return {**cls_story.mechanism(work / "analysis" / "report.json"),
                "report": str(work / "analysis" / "report.md")}

    def figure_seed(self) -> tuple[int, float]:
        """The seed whose RepVGG (custom L2) lost most under INT8 (max), and that loss: the paper's figures
        are about the outliers, so they show the model that has them (ties: the first seed)."""
        drops = [(self.stages.records[f"cls_quant_repvgg_custom_s{s}"], s) for s in self.prof.cls_seeds
                 if f"cls_quant_repvgg_custom_s{s}" in self.stages.records]
        if not drops:
            raise ValueError("no RepVGG (custom L2) model was measured; no seed to draw the figures for")
        rec, seed = max(drops, key=lambda d: d[0]["fp32"] - d[0]["int8_max"])
        return seed, rec["fp32"] - rec["int8_max"]

    def cls_figures(self, base: Path) -> dict:
        """The paper's Fig. 2-4 of RepVGG (custom L2) above QARepVGG of the same seed, for the seed whose
        RepVGG lost most under INT8."""
        seed, drop = self.figure_seed()
        figures = self.in_process(f"cls_figures_s{seed}", cls_story.story_figures, base, seed, drop)
        return {"seed": seed, "repvgg_int8_drop": drop, "figures": figures}

    # --- detection and segmentation: fine-tuned from the classifiers ------------------------------

    def canvas_data(self) -> Path:
        return self.out / "data" / (f"{CANVAS_DATA}_test" if self.prof.tiny else CANVAS_DATA)

    def det_config(self, block: str) -> tuple[Path, list[str]]:
        """The detection config of ``block`` and the overrides the profile adds to it."""
        if self.prof.tiny:
            return ROOT / "configs" / "det" / "digits_canvas_test.toml", [f"model.block={block}"]
        return ROOT / "configs" / "det" / DET_CONFIG.format(block=block), []

    def seg_config(self, block: str) -> tuple[Path, dict]:
        if self.prof.tiny:
            return (ROOT / "configs" / "seg" / "fcn_qarepvgg-test_1xb4-2it_digits-canvas-32x32.py",
                    {"model.backbone.block": block})
        return ROOT / "configs" / "seg" / SEG_CONFIG.format(block=block), {}

    def classifier(self, block: str, seed: int) -> tuple[Path, str]:
        """The train-form classifier a ``block`` dense model of ``seed`` starts from, and its training stage."""
        name = f"{BACKBONE_OF[block]}_s{seed}"
        return self.out / "cls" / name / "last.pt", f"cls_train_{name}"

    def det_sets(self, block: str, seed: int) -> list[str]:
        """The detection overrides of ``block`` (or "hs": the Hyper-Search detector of the RepOpt row, from the
        Hyper-Search classifier) and ``seed``; RepOpt's masks come from the Hyper-Search detector."""
        _, extra = self.det_config(block)
        init = self.hs_work("cls") / "last.pt" if block == "hs" else self.classifier(block, seed)[0]
        hs = [f"repopt.hs_checkpoint={self.hs_work('det') / 'best.pt'}"] if block == "repopt" else []
        return [*extra, f"optim.epochs={self.prof.det_epochs}", f"train.seed={seed}",
                f"data.root={self.canvas_data()}", "train.deterministic=true", "data.workers=0",
                "train.progress=false", f"model.backbone_init={init}", *hs]

    def dense_data_stage(self) -> Stage:
        """The canvases, written once (by the detection config's export; the segmentation configs read the same
        files), before the trainings that read them start side by side."""
        first = DENSE_BLOCKS[0]
        return Stage("canvas_data", lambda: self.in_process(
            "canvas_data", _prepare_det_data, str(self.det_config(first)[0]), self.det_sets(first, 0)))

    def det_jobs(self) -> list[Stage]:
        return self.dense_jobs("det", self.det_train)

    def seg_jobs(self) -> list[Stage]:
        return self.dense_jobs("seg", self.seg_train)

    def dense_jobs(self, task: str, train) -> list[Stage]:
        """The classifiers the ``task`` models start from (the classification section lists the same stages:
        the driver keeps one per name), the canvases, then per seed and block ``train(stage, block, seed, work)``
        and the seed's measurements."""
        blocks = self.prof.dense_blocks
        jobs = [self.cls_data_stage(), *(self.cls_train_stage(BACKBONE_OF[b], s) for s in self.prof.det_seeds
                                         for b in blocks), self.dense_data_stage()]
        hs_after: tuple[str, ...] = ()
        if "repopt" in blocks:
            jobs.append(self.cls_hs_stage())
            if task == "det":  # the detector's masks: one Hyper-Search detector, from the Hyper-Search classifier
                jobs.append(Stage("det_train_hs", lambda: self.det_train("det_train_hs", "hs", 0, self.hs_work("det")),
                                  ("canvas_data", "cls_train_hs")))
                hs_after = ("det_train_hs",)
        for seed in self.prof.det_seeds:
            for block in blocks:
                stage, work = f"{task}_train_{block}_s{seed}", self.out / task / f"{block}_s{seed}"
                after = ("canvas_data", self.classifier(block, seed)[1], *(hs_after if block == "repopt" else ()))
                jobs.append(Stage(stage, lambda st=stage, b=block, s=seed, w=work: train(st, b, s, w), after))
            jobs += self.dense_measure_stages(task, seed, blocks)
        return jobs

    def det_train(self, stage: str, block: str, seed: int, work: Path) -> dict:
        """One detector of ``block`` and ``seed``, its backbone started from that block's classifier."""
        return self.train(stage, "det", self.det_config(block)[0], work, self.det_sets(block, seed))

    def dense_measure_stages(self, task: str, seed: int, blocks: tuple[str, ...]) -> list[Stage]:
        """Per seed: the PTQ table of the blocks, tools/quantize.py's all-INT8 search on each model, and the
        mechanism figure of their backbones (classifier -> fine-tuned)."""
        base = self.out / task
        trains = tuple(f"{task}_train_{b}_s{seed}" for b in blocks)
        works = [base / f"{b}_s{seed}" for b in blocks]
        ptq = dense_stage("ptq", task, seed, blocks)  # its folder: the name without the task
        jobs = [Stage(ptq, lambda: self.ptq_table(ptq, task, [self.dense_checkpoint(w) for w in works],
                                                  base / ptq[len(task) + 1:], DENSE_PTQ_BATCH, self.canvas_data()),
                      trains)]
        for block, work, train in zip(blocks, works, trains):
            if block not in DENSE_PIPELINE_BLOCKS:
                continue
            stage = f"{task}_pipeline_{block}_s{seed}"
            jobs.append(Stage(stage, lambda w=work, st=stage: self.in_process(
                st, stage_jobs.quantize_pipeline, str(self.dense_checkpoint(w)), str(self.canvas_data()),
                str(w / "quantize"), 1.0, DENSE_CALIBRATORS, DENSE_BIAS_CORRECTION), (train,)))
        stage = dense_stage("mechanism", task, seed, blocks)
        pairs = {b: (str(self.classifier(b, seed)[0]), str(w / "last.pt")) for b, w in zip(blocks, works)}
        jobs.append(Stage(stage, lambda: self.in_process(
            stage, stage_jobs.dense_mechanism, task, pairs, str(base / f"{stage[len(task) + 1:]}.png"),
            f"{task} backbones of seed {seed}: largest fused weight per stage, classifier -> fine-tuned "
            "(numbers: near-dead identity channels)"), trains))
        return jobs

    def ptq_table(self, stage: str, task: str, checkpoints: list[Path], out: Path, batch_size: int = 32,
                  data: Path | None = None) -> dict:
        self.in_process(stage, stage_jobs.ptq_table, task, [str(c) for c in checkpoints], str(out), batch_size,
                        None if data is None else str(data))
        table = json.loads((out / "ptq_table.json").read_text())
        return {"metric": table["metric"], "rows": table["rows"], "table": str(out / "ptq_table.md")}

    def seg_train(self, stage: str, block: str, seed: int, work: Path) -> dict:
        """One segmentor of ``block`` and ``seed``, its backbone started from that block's classifier."""
        if not (work / "results.json").is_file():
            config, options = self.seg_config(block)
            init = dict(type="Pretrained", checkpoint=str(self.classifier(block, seed)[0]))
            options = {**options, "randomness.seed": seed, "model.backbone.init_cfg": init}
            if block == "repopt":  # the masks its classifier was trained with: the run's Hyper-Search classifier
                options.update({"optim_wrapper.constructor": "RepOptimizerConstructor",
                                "optim_wrapper.paramwise_cfg.hs_checkpoint": str(self.hs_work("cls") / "best.pt")})
            self.in_process(stage, stage_jobs.train_seg, str(config), str(work), str(self.canvas_data()), options,
                            any(work.glob("iter_*.pth")))
        results = json.loads((work / "results.json").read_text())
        return {"checkpoint": str(self.dense_checkpoint(work)), "results": results}

    @staticmethod
    def dense_checkpoint(work: Path) -> Path:
        """The fused model a detection or segmentation run left (every training writes deploy.pt last)."""
        if not (work / "deploy.pt").is_file():
            raise FileNotFoundError(f"{work}: the training left no deploy.pt")
        return work / "deploy.pt"

    # --- speed and pictures ----------------------------------------------------------------------

    def speed_jobs(self, tasks: list[str]) -> list[Stage]:
        """Latency of the first seed's fused models; each stage runs alone, on ``--threads`` threads."""
        seed_c, seed_d = self.prof.cls_seeds[0], self.prof.det_seeds[0]
        targets = []
        if "cls" in tasks:
            data = str(self.out / "data" / self.prof.cls_data)
            targets += [(f"cls_{m}", "cls", self.out / "cls" / f"{m}_s{seed_c}" / "deploy.pt", data,
                         f"cls_train_{m}_s{seed_c}") for m in ("repvgg_custom", "qarepvgg")]
        if "det" in tasks:
            targets += [(f"det_{b}", "det", self.out / "det" / f"{b}_s{seed_d}" / "deploy.pt", None,
                         f"det_train_{b}_s{seed_d}") for b in ("repvgg", "qarepvgg")]
        return [Stage(f"speed_{name}", lambda t=task, c=ckpt, d=data, n=name: self.speed(c, t, n, d),
                      (after,), alone=True) for name, task, ckpt, data, after in targets]

    def speed(self, ckpt: Path, task: str, name: str, data: str | None) -> dict:
        """Latency on ``--threads`` threads (the stage runs alone)."""
        return self.in_process(f"speed_{name}", measure_speed, ckpt, task, self.out / "speed" / name, data, 8,
                               self.prof.speed_repeats, self.opts.threads, threads=self.opts.threads)

    def picture_jobs(self, tasks: list[str]) -> list[Stage]:
        """FP32 and ONNX Runtime INT8 predictions side by side on validation canvases, per dense model of the
        first seed."""
        seed, jobs = self.prof.det_seeds[0], []
        for task in ("det", "seg"):
            if task in tasks:
                for block in ("repvgg", "qarepvgg"):
                    stage, work = f"pictures_{task}_{block}", self.out / task / f"{block}_s{seed}"
                    jobs.append(Stage(stage, lambda st=stage, w=work, t=task, b=block: self.pictures(
                        st, self.dense_checkpoint(w), self.canvas_images(), self.out / "pictures" / f"{t}_{b}"),
                        (f"{task}_train_{block}_s{seed}",)))
        return jobs

    def canvas_images(self) -> list[Path]:
        """The first validation canvases (written by the data stage: listed when the picture stage runs)."""
        return sorted((self.canvas_data() / "leftImg8bit" / "val").glob("*.png"))[:3]

    def pictures(self, stage: str, ckpt: Path, images: list[Path], out: Path) -> dict:
        """tools/infer.py's inference in FP32 and in ONNX INT8 on ``images``, then each pair side by side."""
        if not images:
            raise FileNotFoundError(f"stage {stage}: no validation images found for the pictures")
        return self.in_process(stage, stage_jobs.pictures, str(ckpt), [str(i) for i in images], str(out))

    # --- driver ----------------------------------------------------------------------------------

    def settings(self) -> dict:
        """What decides the content of a stage (seeds and tasks only add stages): a folder's stages are
        reused only under the same settings."""
        p = self.prof
        return {"profile": p.name, "cls_epochs": p.cls_epochs, "det_epochs": p.det_epochs, "cls_recipe": CLS_RECIPE,
                "cls_sets": p.cls_sets, "cls_data": p.cls_data, "dense_recipe": DENSE_RECIPE,
                "cls_quantize": cls_quantize_setting(), "configs": self.config_digests(),
                "stage_threads": STAGE_THREADS}  # a training's numbers depend on its thread count

    def config_digests(self) -> dict[str, str]:
        """A digest of every config file a stage of this profile may train with (all models and blocks, so
        that other --cls-models or --dense-blocks still only add stages): a changed recipe is a change of
        settings, not a finished stage to reuse."""
        files = {f"cls/{name}": CLS_CONFIGS / config for name, (config, _) in CLS_MODELS.items()}
        files["cls/hs"] = CLS_HS_CONFIG
        for block in (*BACKBONE_OF, "hs"):
            files[f"det/{block}"] = self.det_config(block)[0]
        for block in BACKBONE_OF:
            files[f"seg/{block}"] = self.seg_config(block)[0]
        return {key: config_digest(path) for key, path in files.items()}

    def check_settings(self) -> None:
        """Refuse to add to a results folder made under other settings (its finished stages would be reused
        and reported under this run's settings); record the settings in a new one."""
        path = self.out / SETTINGS_FILE
        mine = json.loads(json.dumps(self.settings()))
        if path.is_file():
            try:
                theirs = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise ValueError(f"{path}: unreadable ({err}); choose another --out") from err
            changed = {k: (theirs.get(k), v) for k, v in mine.items() if theirs.get(k) != v}
            if changed:
                listed = ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in changed.items())
                raise ValueError(f"{self.out} holds a demo run with other settings: {listed}. Its finished stages "
                                 "would be reused under this run's settings; choose another --out")
        elif (self.out / ".stages").is_dir() and any((self.out / ".stages").glob("*.json")):
            raise ValueError(f"{self.out} holds demo stages without a record of their settings ({SETTINGS_FILE}, "
                             "written by this version); choose another --out")
        else:
            write_json_atomic(path, mine, indent=1)

    def run(self) -> Path:
        """Claim OUT (a folder of someone else's, or one another main job is writing, is refused), run the
        stages (Ctrl-C or SIGTERM ends them all: :class:`~.processes.Interrupted`), write the summary, seal."""
        tasks = self.opts.tasks
        # writes: a file of someone else's where summary.md or results.json go is refused, not replaced
        with claim(self.out, "demo", keep=True, label="--out", writes=["summary.md", RESULTS_FILE]) as claimed:
            self.check_settings()
            # Long stages first: the scheduler starts the ready ones in this order, one thread each.
            jobs = {"cls": self.cls_jobs, "det": self.det_jobs, "seg": self.seg_jobs}
            # (the dense tasks list the classifier trainings and data they need: one stage per name)
            listed = [st for task in TASKS if task in tasks for st in jobs[task]()]
            unique: dict[str, Stage] = {}
            for st in listed:
                unique.setdefault(st.name, st)
            stages = list(unique.values())
            # the dense models' classifiers, then the dense trainings (the longest), then the other classifiers
            dense = {n for st in stages if st.name.startswith(("det_train_", "seg_train_")) for n in st.after}
            trains = sorted((st for st in stages if "_train_" in st.name),
                            key=lambda st: 0 if st.name in dense else 1 if st.name.startswith(("det_", "seg_")) else 2)
            stages = ([st for st in stages if st.name.endswith("_data")] + trains
                      + [st for st in stages if "_train_" not in st.name and not st.name.endswith("_data")]
                      + self.picture_jobs(tasks) + self.speed_jobs(tasks))
            with stop_on_signals():
                self.run_stages(",".join(tasks), stages)
            info = vars_for_summary(self)
            summary = render_summary(self.out, self.stages.records, tasks, self.skipped, info, self.failed)
            write_results(self.out, self.stages.records, tasks, info)  # the summary's rows, machine-readable
            path = self.out / "summary.md"
            write_text_atomic(path, summary)
            claimed.seal({"failed": sorted(self.failed)})
        return path


def cls_quantize_setting() -> str:
    """The classifiers' quantize search as a command line: its default bias correction, which corrects the few
    best candidates (a folder made when it corrected all of them is not reused)."""
    from ..tasks.quantize_pipeline import BIAS_CORRECTION

    return f"--int8-only --max-drop 1 --bias-correction auto ({BIAS_CORRECTION['auto'][1]} best corrected)"


def vars_for_summary(demo: Demo) -> dict:
    p = demo.prof
    size = f"{CLS_IMAGE_SIZE}x{CLS_IMAGE_SIZE}"
    data = "toy synthetic shapes, arch test" if p.tiny else f"digits (1437 train / 360 val) at {size}, A0h"
    return {"cls_data": data, "cls_seeds": p.cls_seeds, "det_seeds": p.det_seeds, "cls_epochs": p.cls_epochs,
            "det_epochs": p.det_epochs, "cls_recipe": CLS_RECIPE, "profile": p.name,
            "reused_stages": len(demo.stages.reused), "threads": demo.opts.threads, "jobs": demo.opts.jobs,
            "cls_models": list(p.cls_models), "det_blocks": list(p.dense_blocks), "seg_seeds": p.det_seeds,
            "canvas_data": "digit canvases, 32x32 (toy)" if p.tiny else CANVAS_TEXT,
            "dense_quantize": DENSE_RECIPE["quantize"],
            "dense_configs": {"det_config": DENSE_RECIPE["det"], "seg_config": DENSE_RECIPE["seg"]}}
