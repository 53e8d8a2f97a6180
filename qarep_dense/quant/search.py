"""The candidate search of the quantization pipeline: which calibrator, repair and CLE, chosen honestly.

A candidate is a calibrator (max, percentile, mse, entropy) applied after a float transform of the
fused model: none, the dead-channel repair, CLE, or both in either order ("cle_repair" = CLE, then
the repair on the equalized model; "repair_cle" = the reverse); each with and without bias
correction after calibration ("+bc", :mod:`~qarep_dense.quant.bias_correction`). Both transforms keep
the FP32 function (the repair up to channels that are dead on the data it saw, CLE exactly), so
candidates differ only in how well their INT8 model follows the FP32 one. Bias correction usually
helps and sometimes does not (a model that already quantizes well can lose a little), so both forms
compete on the same score.

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
from typing import Sequence

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

    def key(r: CandidateResult):
        s = r.selection.score
        finite = s == s and s != float("inf")
        return (not finite, s if finite else 0.0, r.spec.cost_rank())

    return min(results, key=key)


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
               progress: bool = True, entropy_stride: int | None = None
               ) -> tuple[list[CandidateResult], dict[str, nn.Module], dict[str, nn.Module]]:
    """Quantize and score every candidate. Returns (results in ``specs`` order, {name: fake-quant model},
    {transform: transformed float model}); each transform is computed once and shared by its calibrators,
    its time charged to each of them. A bias-corrected candidate starts from a copy of its uncorrected
    twin when that ran before it (the same calibration), and is charged the twin's cost plus its own.

    entropy_stride: the entropy calibrator tries every ``entropy_stride``-th histogram bin as its clipping
    point (``QuantConfig.hist_stride``): its KL search is ~1 s per quantizer on a busy CPU at stride 1, which
    alone would take most of the pipeline's time budget; 4 keeps it within 4 bins of 2048 of the full search.
    """
    base = replace(base or QuantConfig(), repair_dead_channels=False, num_calib_batches=len(data.calib))
    entropy_stride = ENTROPY_STRIDE if entropy_stride is None else entropy_stride
    reference = forward_selection(fused, data.selection, preprocess, device)
    floats: dict[str, tuple[nn.Module, dict, float]] = {}
    calibrated: dict[CandidateSpec, tuple[nn.Module, float]] = {}  # uncorrected candidates: (model, seconds)
    results, models = [], {}
    for spec in tqdm(specs, desc="candidates", disable=not progress):
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
