"""The candidate search of the quantization pipeline: which calibrator, repair and CLE, chosen honestly.

A candidate is a calibrator (max, percentile, mse, entropy) applied after a float transform of the
fused model: none, the dead-channel repair, CLE, or both in either order ("cle_repair" = CLE, then
the repair on the equalized model; "repair_cle" = the reverse); each with and without bias
correction after calibration ("+bc", :mod:`~qarep_dense.quant.bias_correction`). Both transforms keep
the FP32 function (the repair up to channels that are dead on the data it saw, CLE exactly), so
candidates differ only in how well their INT8 model follows the FP32 one. Bias correction usually
helps and sometimes does not (a model that already quantizes well can lose a little), so both forms
compete on the same score. It costs 3-4x a calibration, so by default (``correct_best``) only the best
few uncorrected candidates get a corrected twin: on the 20 recorded searches of every candidate in both
forms, the three best kept every model on the same side of its budget at 3-4x less search time
(benchmarks/bench_search_refine.py).

Candidates are scored on a *selection* split (training images neither calibration nor the repair
saw), never on the validation split that is reported. Top-1 on training images saturates (most
candidates score 99.5-100%), so the score is the agreement of the INT8 outputs with the FP32
outputs, which does not: for classifiers the mean KL divergence of the softmax (FP32 || INT8), for
other tasks the relative MSE of all outputs. The lowest score wins; ties go to the cheaper
candidate (no bias correction, fewer transforms, then the calibrator order of :data:`CALIBRATORS`).
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Sequence

import torch
from scipy.stats import spearmanr
from torch import nn
from tqdm import tqdm

from ..data.preprocess import Preprocess
from .bias_correction import correct_bias
from .calibration import flatten_outputs, forward_batches
from .cle import equalize
from .config import CALIBRATORS, QuantConfig
from .ptq import quantize_ptq
from .repair import repair_dead_channels
from .sensitivity import relative_mse

log = logging.getLogger(__name__)

# Float transforms before calibration, cheapest first (the tie-break order).
TRANSFORMS: tuple[str, ...] = ("none", "repair", "cle", "cle_repair", "repair_cle")
ENTROPY_STRIDE = 4  # see run_search


@dataclass(frozen=True)
class CandidateSpec:
    calibrator: str
    transform: str = "none"
    bias_correction: bool = False

    def __post_init__(self) -> None:
        if self.calibrator not in CALIBRATORS:
            raise ValueError(f"candidate: unknown calibrator {self.calibrator!r}; expected one of {list(CALIBRATORS)}")
        if self.transform not in TRANSFORMS:
            raise ValueError(f"candidate: unknown transform {self.transform!r}; expected one of {list(TRANSFORMS)}")

    @property
    def name(self) -> str:
        name = self.calibrator if self.transform == "none" else f"{self.calibrator}+{self.transform}"
        return name + "+bc" if self.bias_correction else name

    @property
    def calibrated(self) -> "CandidateSpec":
        """The same candidate before bias correction (the model bias correction starts from)."""
        return replace(self, bias_correction=False)

    @property
    def repair(self) -> bool:
        return "repair" in self.transform

    @property
    def cle(self) -> str:
        """"off", "before_repair", "after_repair" or "on" (CLE without the repair)."""
        if "cle" not in self.transform:
            return "off"
        if not self.repair:
            return "on"
        return "before_repair" if self.transform == "cle_repair" else "after_repair"

    def cost_rank(self) -> tuple[int, int, int]:
        return int(self.bias_correction), TRANSFORMS.index(self.transform), CALIBRATORS.index(self.calibrator)


def candidate_specs(calibrators: Sequence[str] = CALIBRATORS, transforms: Sequence[str] = TRANSFORMS,
                    bias_correction: Sequence[bool] = (False, True)) -> list[CandidateSpec]:
    """Every (transform, calibrator, bias correction) triple, cheapest transform first; a corrected
    candidate right after the one it starts from."""
    return [CandidateSpec(c, t, bc) for t in transforms for c in calibrators for bc in bias_correction]


@dataclass
class SelectionScore:
    """Agreement of a candidate's outputs with the FP32 model's on the selection split (lower score = better).

    score: the ranking key (``kl`` for classifiers, else ``rel_mse``); kl: mean KL(softmax FP32 || softmax
    INT8) per image; top1_agreement: fraction of images with the same argmax; top1: accuracy on the
    selection labels (classifiers with labels only; it saturates, so it is reported, not ranked on).
    """

    score: float
    rel_mse: float
    kl: float | None = None
    top1_agreement: float | None = None
    top1: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class CandidateResult:
    """One candidate: its spec, its cost in seconds (transform + calibration), its selection score and what
    the transforms did; ``validation`` is filled only AFTER the choice, for the report."""

    spec: CandidateSpec
    seconds: float
    selection: SelectionScore
    transform_info: dict = field(default_factory=dict)
    validation: float | None = None

    def as_dict(self) -> dict:
        return {"name": self.spec.name, "calibrator": self.spec.calibrator, "transform": self.spec.transform,
                "repair": self.spec.repair, "cle": self.spec.cle, "seconds": round(self.seconds, 3),
                "selection": self.selection.as_dict(), "validation": self.validation, **self.transform_info}


# --- float transforms -----------------------------------------------------------------------------

def transform_float(fused: nn.Module, transform: str, batches: Sequence[torch.Tensor], heldout: Sequence[torch.Tensor],
                    preprocess: Preprocess, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """(a transformed copy of ``fused``, a summary of what was done). ``fused`` is not changed."""
    if transform not in TRANSFORMS:
        raise ValueError(f"transform_float: unknown transform {transform!r}; expected one of {list(TRANSFORMS)}")
    model, info = copy.deepcopy(fused).to(device).eval(), {}
    steps = {"none": [], "repair": ["repair"], "cle": ["cle"], "cle_repair": ["cle", "repair"],
             "repair_cle": ["repair", "cle"]}[transform]
    for step in steps:
        if step == "cle":
            model, report = equalize(model)
            info["cle_pairs"] = len(report.pairs)
            info["cle_spread"] = [round(report.spread_before, 3), round(report.spread_after, 3)]
            if report.skipped:
                info["cle_skipped"] = report.skipped
        else:
            report = repair_dead_channels(model, batches, preprocess, device, heldout=heldout)
            info["repaired_channels"] = report.zeroed_channels
            info["repair_heldout_max_abs_diff"] = report.heldout_max_abs_diff
    return model, info


# --- scoring --------------------------------------------------------------------------------------

def forward_selection(model: nn.Module, batches: Sequence[torch.Tensor], preprocess: Preprocess,
                      device: str | torch.device = "cpu") -> list:
    """The model's outputs (on the CPU) for every selection batch, in eval mode."""
    return forward_batches(model.eval(), batches, preprocess, device, progress=False, keep_outputs=True)


def agreement(outputs: Sequence, reference: Sequence, labels: Sequence[torch.Tensor] | None = None,
              classification: bool = False) -> SelectionScore:
    """Score ``outputs`` against the FP32 ``reference`` outputs of the same selection batches."""
    rel = relative_mse(outputs, reference)
    if not classification:
        return SelectionScore(score=rel, rel_mse=rel)
    q = torch.cat([flatten_outputs(o)[0].float() for o in outputs])
    r = torch.cat([flatten_outputs(o)[0].float() for o in reference])
    log_q, log_r = torch.log_softmax(q, 1), torch.log_softmax(r, 1)
    kl = float((log_r.exp() * (log_r - log_q)).sum(1).mean())
    agree = float((q.argmax(1) == r.argmax(1)).float().mean())
    top1 = None
    if labels is not None:
        y = torch.cat([torch.as_tensor(t) for t in labels]).long()
        top1 = 100.0 * float((q.argmax(1) == y).float().mean())
    return SelectionScore(score=kl, rel_mse=rel, kl=kl, top1_agreement=agree, top1=top1)


def choose(results: Sequence[CandidateResult]) -> CandidateResult:
    """The candidate with the lowest selection score; ties (equal scores) go to the cheaper one.

    A candidate whose score is not finite (NaN: a broken model) never wins while another is finite.
    """
    if not results:
        raise ValueError("choose: no candidates")
    return min(results, key=_choice_key)


def _choice_key(r: CandidateResult) -> tuple:
    s = r.selection.score
    finite = s == s and s != float("inf")
    return (not finite, s if finite else 0.0, r.spec.cost_rank())


def corrected_twins(results: Sequence[CandidateResult], k: int) -> list[CandidateSpec]:
    """The bias-corrected twins of the ``k`` best uncorrected candidates of ``results`` (in :func:`choose`'s
    order), leaving out twins ``results`` already holds."""
    done = {r.spec for r in results}
    ranked = sorted((r for r in results if not r.spec.bias_correction), key=_choice_key)[:k]
    return [t for t in (replace(r.spec, bias_correction=True) for r in ranked) if t not in done]


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); None for fewer than 3 pairs or a constant side."""
    if len(xs) != len(ys) or len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return float(spearmanr(xs, ys).statistic)


def candidate_config(spec: CandidateSpec, base: QuantConfig, entropy_stride: int = ENTROPY_STRIDE) -> QuantConfig:
    """The PTQ settings of ``spec`` on top of ``base`` (the float transform is applied to the model instead)."""
    stride = entropy_stride if spec.calibrator == "entropy" else base.hist_stride
    return replace(base, calibrator=spec.calibrator, hist_stride=stride, repair_dead_channels=False,
                   bias_correction=spec.bias_correction)


# --- the search -----------------------------------------------------------------------------------

@dataclass
class SearchData:
    """The images of a search: calibration batches, the repair's held-out batch, the selection batches
    (and their labels for classifiers), all uint8, all from the training split and pairwise disjoint."""

    calib: list[torch.Tensor]
    heldout: list[torch.Tensor]
    selection: list[torch.Tensor]
    selection_labels: list[torch.Tensor] | None = None


def run_search(fused: nn.Module, data: SearchData, preprocess: Preprocess, specs: Sequence[CandidateSpec],
               base: QuantConfig | None = None, classification: bool = False, device: str | torch.device = "cpu",
               progress: bool = True, entropy_stride: int | None = None, correct_best: int = 0
               ) -> tuple[list[CandidateResult], dict[str, nn.Module], dict[str, nn.Module]]:
    """Quantize and score every candidate. Returns (results in ``specs`` order, then any ``correct_best``
    twins; {name: fake-quant model}; {transform: transformed float model}); each transform is computed once
    and shared by its calibrators, its time charged to each of them. A bias-corrected candidate starts from a
    copy of its uncorrected twin when that ran before it (the same calibration), and is charged the twin's
    cost plus its own.

    correct_best: after ``specs``, also score the bias-corrected twins of the ``correct_best`` best
    uncorrected candidates (in :func:`choose`'s order) that ``specs`` did not already hold.

    entropy_stride: the entropy calibrator tries every ``entropy_stride``-th histogram bin as its clipping
    point (``QuantConfig.hist_stride``). 4 was chosen when the KL search cost ~1 s per quantizer at stride 1
    (within 4 bins of 2048 of the full search); the prefix-sum search now takes milliseconds at any stride, and 4
    stays so that recorded searches keep their candidates.
    """
    base = replace(base or QuantConfig(), repair_dead_channels=False, num_calib_batches=len(data.calib))
    entropy_stride = ENTROPY_STRIDE if entropy_stride is None else entropy_stride
    reference = forward_selection(fused, data.selection, preprocess, device)
    floats: dict[str, tuple[nn.Module, dict, float]] = {}
    calibrated: dict[CandidateSpec, tuple[nn.Module, float]] = {}  # uncorrected candidates: (model, seconds)
    results, models = [], {}

    def candidates():  # the twins are chosen once every spec has been scored
        yield from specs
        if correct_best > 0:
            yield from corrected_twins(results, correct_best)

    for spec in tqdm(candidates(), desc="candidates", disable=not progress):
        if spec.transform not in floats:
            start = time.perf_counter()
            model, info = transform_float(fused, spec.transform, data.calib, data.heldout, preprocess, device)
            floats[spec.transform] = (model, info, time.perf_counter() - start)
        model, info, t_seconds = floats[spec.transform]
        start = time.perf_counter()
        uncorrected = calibrated.get(spec.calibrated)
        if spec.bias_correction and uncorrected is not None:
            # the same calibration as quantize_ptq would do again: start from it (cost charged in full)
            qmodel = copy.deepcopy(uncorrected[0])
            correct_bias(qmodel, model, data.calib, preprocess, base.backend, device)
            seconds = uncorrected[1] + time.perf_counter() - start
        else:
            config = candidate_config(spec, base, entropy_stride)
            qmodel, _ = quantize_ptq(model, data.calib, preprocess, config, device, progress=False)
            seconds = t_seconds + time.perf_counter() - start
        if not spec.bias_correction:
            calibrated[spec] = (qmodel, seconds)
        outputs = forward_selection(qmodel, data.selection, preprocess, device)
        score = agreement(outputs, reference, data.selection_labels, classification)
        results.append(CandidateResult(spec, seconds, score, dict(info)))
        models[spec.name] = qmodel
        log.info("candidate %-22s selection score %.3g (%.1f s)", spec.name, score.score, seconds)
    return results, models, {t: m for t, (m, _, _) in floats.items()}


# --- the budget strategy: what to try after the candidate search ----------------------------------

def ladder_sizes(n: int) -> list[int]:
    """1, 2, 3, 4, 6, 9, ... up to ``n`` (``n``: the most units that may stay float)."""
    steps, k = [], 1
    while k <= n:
        steps.append(k)
        k = k + 1 if k < 4 else int(k * 1.5)
    if n and steps[-1] != n:
        steps.append(n)
    return steps


@dataclass(frozen=True)
class Step:
    """One model to try: the chosen candidate with ``float_layers`` kept in float, or (``qat``) the best
    model so far after a short QAT fine-tune."""

    float_layers: tuple[str, ...] = ()
    qat: bool = False

    @property
    def how(self) -> str:
        how = f"partial PTQ, {len(self.float_layers)} layers in float" if self.float_layers else "all-INT8 PTQ"
        return how + " + QAT" if self.qat else how


@dataclass
class Trial:
    """A step as the loop measured it: its validation ``metric`` and how many convs its fake-quant model
    quantizes (0: not an INT8 model, whatever its metric)."""

    step: Step
    metric: float
    quantized_convs: int
    model: nn.Module | None = field(default=None, repr=False, compare=False)

    def as_dict(self, fp32: float) -> dict:
        return {"float_layers": list(self.step.float_layers), "qat": self.step.qat, "validation": self.metric,
                "drop": fp32 - self.metric, "quantized_convs": self.quantized_convs}


class BudgetStrategy:
    """What to try next to meet ``max_drop`` on validation, apart from the loop that quantizes, evaluates and
    checks (the loop: :func:`~qarep_dense.tasks.quantize_pipeline.quantize_checkpoint`).

    The loop records the chosen all-INT8 candidate first. While no trial meets the budget, the strategy asks
    for the ladder's steps (1, 2, 3, 4, 6, ... of the units ``rank()`` lists, most sensitive first, kept in
    float; never all of them), then with ``qat`` one QAT fine-tune of the best trial so far. A trial meets
    the budget only when it quantizes at least one conv. :meth:`best` is the trial to ship: the met one, or
    else the highest metric among INT8 trials (fewer float layers on ties), so a ladder that misses ships
    its best step, not its last, and a QAT that made things worse is not kept.

    rank: () -> the units as dicts with a "name" (e.g. ``LayerSensitivity.as_dict()``), most sensitive first,
        called once when the ladder starts (kept as ``ranking``); None: no layer may stay float.
    """

    def __init__(self, fp32: float, max_drop: float, rank: Callable[[], Sequence[dict]] | None = None,
                 qat: bool = False) -> None:
        self.fp32, self.max_drop, self.rank, self.qat = fp32, max_drop, rank, qat
        self.trials: list[Trial] = []
        self.ranking: list[dict] = []
        self._ladder: list[Step] | None = None if rank is not None else []

    def met(self, trial: Trial) -> bool:
        return trial.quantized_convs > 0 and self.fp32 - trial.metric <= self.max_drop

    def record(self, trial: Trial) -> None:
        self.trials.append(trial)

    def next_step(self) -> Step | None:
        """The next step to try; None when a trial met the budget or nothing is left to try."""
        if not self.trials:
            return Step()
        if any(self.met(t) for t in self.trials):
            return None
        if self._ladder is None:
            self.ranking = list(self.rank())
            names = [entry["name"] for entry in self.ranking]
            self._ladder = [Step(tuple(names[:k])) for k in ladder_sizes(len(names) - 1)]  # one stays quantized
        tried = {t.step for t in self.trials}
        pending = [s for s in self._ladder if s not in tried]
        if pending:
            return pending[0]
        if self.qat and not any(t.step.qat for t in self.trials):
            return Step(self.best().step.float_layers, qat=True)
        return None

    def best(self) -> Trial:
        if not self.trials:
            raise ValueError("BudgetStrategy.best: nothing was tried")
        met = [t for t in self.trials if self.met(t)]
        if met:
            return met[0]
        return max(self.trials, key=lambda t: (t.quantized_convs > 0, t.metric, -len(t.step.float_layers)))

    def ladder_trials(self) -> list[Trial]:
        return [t for t in self.trials if t.step.float_layers and not t.step.qat]

    def qat_trial(self) -> Trial | None:
        return next((t for t in self.trials if t.step.qat), None)
