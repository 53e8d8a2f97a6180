"""The quantization pipeline's search and budget logic: selection scores decide, validation only reports."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("pytorch_quantization")

from qarep_dense.data.preprocess import Preprocess  # noqa: E402
from qarep_dense.quant.calibration import entropy_amax  # noqa: E402
from qarep_dense.quant.search import (CandidateResult, CandidateSpec, SearchData, SelectionScore, agreement,  # noqa: E402
                                      candidate_specs, choose, run_search, spearman)

pytestmark = pytest.mark.usefixtures("one_thread")


def _result(calibrator, transform, score, seconds=1.0):
    return CandidateResult(CandidateSpec(calibrator, transform), seconds, SelectionScore(score=score, rel_mse=score))


def test_choose_takes_the_lowest_selection_score_and_breaks_ties_by_cost():
    results = [_result("max", "none", 0.5), _result("entropy", "cle", 0.1), _result("percentile", "repair", 0.3)]
    assert choose(results).spec.name == "entropy+cle"
    tied = [_result("mse", "cle_repair", 0.2), _result("percentile", "repair", 0.2), _result("max", "repair", 0.2)]
    assert choose(tied).spec.name == "max+repair"
    broken = [_result("max", "none", float("nan")), _result("mse", "none", 3.0)]
    assert choose(broken).spec.name == "mse"


def test_candidate_specs_cover_calibrators_times_transforms():
    specs = candidate_specs()
    assert len(specs) == 40 and len({s.name for s in specs}) == 40
    assert {s.cle for s in specs} == {"off", "on", "before_repair", "after_repair"}
    assert sum(s.bias_correction for s in specs) == 20
    corrected = CandidateSpec("mse", "repair_cle", bias_correction=True)
    assert corrected.name == "mse+repair_cle+bc" and corrected.calibrated == CandidateSpec("mse", "repair_cle")
    assert corrected.cost_rank() > CandidateSpec("entropy", "repair_cle").cost_rank()  # ties: uncorrected wins
    assert len(candidate_specs(bias_correction=(False,))) == 20
    with pytest.raises(ValueError, match="calibrator"):
        CandidateSpec("minmax")
    with pytest.raises(ValueError, match="transform"):
        CandidateSpec("max", "bias_absorption")


def test_agreement_kl_and_top1_for_classifiers():
    ref = [torch.tensor([[4.0, 0.0, 0.0], [0.0, 3.0, 0.0]])]
    same = agreement(ref, ref, [torch.tensor([0, 2])], classification=True)
    assert same.score == pytest.approx(0.0, abs=1e-7) and same.top1_agreement == 1.0 and same.top1 == 50.0
    off = agreement([torch.tensor([[0.0, 4.0, 0.0], [0.0, 3.0, 0.0]])], ref, classification=True)
    assert off.score > 0.5 and off.top1_agreement == 0.5
    det = agreement([(torch.ones(2, 3),)], [(2 * torch.ones(2, 3),)])
    assert det.score == pytest.approx(0.25) and det.kl is None


def test_spearman():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2], [1, 2]) is None
    assert spearman([1, 1, 1], [1, 2, 3]) is None


class _Outlier(nn.Module):
    """1x1 conv -> ReLU -> 1x1 conv -> pool -> fc: small activations, plus rare huge pixels."""

    def __init__(self):
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 8, 1), nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x):
        x = self.c2(torch.relu(self.c1(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(torch.relu(x), 1), 1))


def test_search_picks_the_candidate_with_the_best_selection_score():
    """Calibration images hold one huge pixel: max calibration wastes INT8 resolution on it, percentile
    clips it. The selection images are ordinary, so percentile must score better and be chosen."""
    torch.manual_seed(0)
    model = _Outlier().eval()
    g = torch.Generator().manual_seed(0)

    def batch(n):
        return torch.randint(0, 20, (n, 3, 8, 8), dtype=torch.uint8, generator=g)

    calib = [batch(16) for _ in range(2)]
    calib[0][0, :, 0, 0] = 255
    data = SearchData(calib, [batch(8)], [batch(16), batch(16)])
    specs = [CandidateSpec("max"), CandidateSpec("percentile")]
    results, models, floats = run_search(model, data, Preprocess(), specs, classification=True, progress=False)
    scores = {r.spec.name: r.selection.score for r in results}
    assert scores["percentile"] < scores["max"]
    assert choose(results).spec.name == "percentile"
    assert set(models) == {"max", "percentile"} and set(floats) == {"none"}
    assert all(r.seconds > 0 for r in results)


def test_entropy_calibrator_survives_an_empty_histogram():
    hist = np.zeros(2048, dtype=np.int64)
    hist[0] = 100  # every value in the zero bin (a dead channel's input): once crashed on an int64 bincount
    assert np.isfinite(entropy_amax(hist, np.linspace(0.0, 1.0, 2049), 8, unsigned=True))
