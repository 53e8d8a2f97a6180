"""The quantization pipeline's search and budget logic: selection scores decide, validation only reports."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("pytorch_quantization")

from qarep_dense.data.preprocess import Preprocess  # noqa: E402
from qarep_dense.quant.calibration import entropy_amax  # noqa: E402
from qarep_dense.quant.search import (BudgetStrategy, CandidateResult, CandidateSpec, SearchData,  # noqa: E402
                                      SelectionScore, Step, Trial, agreement, candidate_specs, choose,
                                      corrected_twins, ladder_sizes, run_search, spearman)

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


def test_corrected_twins_are_those_of_the_best_uncorrected_candidates():
    results = [_result("max", "none", 0.5), _result("mse", "cle", 0.1), _result("percentile", "repair", 0.3),
               CandidateResult(CandidateSpec("mse", "cle", True), 1.0, SelectionScore(score=0.05, rel_mse=0.05))]
    # the best two uncorrected are mse+cle (its twin already scored: left out) and percentile+repair
    assert corrected_twins(results, 2) == [CandidateSpec("percentile", "repair", True)]
    assert corrected_twins(results, 3) == [CandidateSpec("percentile", "repair", True), CandidateSpec("max", "none", True)]
    assert corrected_twins(results, 0) == []


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


def test_search_corrects_only_the_best_candidates_biases_when_asked():
    torch.manual_seed(0)
    model = _Outlier().eval()
    g = torch.Generator().manual_seed(0)
    calib = [torch.randint(0, 20, (16, 3, 8, 8), dtype=torch.uint8, generator=g) for _ in range(2)]
    calib[0][0, :, 0, 0] = 255
    sel = [torch.randint(0, 20, (16, 3, 8, 8), dtype=torch.uint8, generator=g) for _ in range(2)]
    data = SearchData(calib, [calib[1][:8]], sel)
    specs = [CandidateSpec("max"), CandidateSpec("percentile")]
    results, models, _ = run_search(model, data, Preprocess(), specs, classification=True, progress=False,
                                    correct_best=1)
    names = [r.spec.name for r in results]
    assert names == ["max", "percentile", "percentile+bc"]  # the twin of the better one only, scored after both
    assert set(models) == set(names)
    assert results[2].seconds > results[1].seconds  # charged its uncorrected twin's cost plus its own


def test_entropy_calibrator_survives_an_empty_histogram():
    hist = np.zeros(2048, dtype=np.int64)
    hist[0] = 100  # every value in the zero bin (a dead channel's input): once crashed on an int64 bincount
    assert np.isfinite(entropy_amax(hist, np.linspace(0.0, 1.0, 2049), 8, unsigned=True))


UNITS = [{"name": f"layer{i}"} for i in range(8)]


def _drive(strategy: BudgetStrategy, metric_of, convs_of=lambda step: 8 - len(step.float_layers)) -> list[Step]:
    """The loop of the pipeline with scripted metrics: what the strategy asked for, in order."""
    asked = []
    while (step := strategy.next_step()) is not None:
        asked.append(step)
        strategy.record(Trial(step, metric_of(step), max(0, convs_of(step))))
    return asked


def test_strategy_walks_the_ladder_and_stops_at_the_first_step_that_meets_the_budget():
    assert ladder_sizes(7) == [1, 2, 3, 4, 6, 7] and ladder_sizes(0) == []
    strategy = BudgetStrategy(fp32=35.0, max_drop=1.0, rank=lambda: UNITS)
    asked = _drive(strategy, lambda s: 30.0 + len(s.float_layers))
    assert [len(s.float_layers) for s in asked] == [0, 1, 2, 3, 4]
    assert strategy.best().step == asked[-1] and strategy.met(strategy.best())
    assert asked[1].float_layers == ("layer0",)  # the most sensitive unit first


def test_strategy_ships_the_best_ladder_step_when_none_meets_the_budget():
    """The measured case: 4 float layers 34.17, 6 layers 35.00, 7 layers 34.17 -- the 6-layer model ships."""
    scripted = {0: 32.5, 1: 33.0, 2: 33.3, 3: 33.3, 4: 34.17, 6: 35.00, 7: 34.17}
    strategy = BudgetStrategy(fp32=36.5, max_drop=1.0, rank=lambda: UNITS)
    asked = _drive(strategy, lambda s: scripted[len(s.float_layers)])
    assert len(asked[-1].float_layers) == 7 and len(strategy.best().step.float_layers) == 6
    assert not strategy.met(strategy.best())


def test_strategy_never_counts_a_model_without_a_quantized_conv_as_met():
    strategy = BudgetStrategy(fp32=35.0, max_drop=1.0, rank=lambda: UNITS)
    _drive(strategy, lambda s: 35.0 if len(s.float_layers) == 7 else 30.0 + 0.1 * len(s.float_layers),
           convs_of=lambda s: 0 if len(s.float_layers) == 7 else 8 - len(s.float_layers))
    best = strategy.best()
    assert len(best.step.float_layers) == 6 and best.quantized_convs == 2 and not strategy.met(best)


@pytest.mark.parametrize("qat_metric, kept", [(31.0, False), (34.5, True)])
def test_strategy_tries_qat_from_the_best_ptq_model_and_keeps_the_better(qat_metric, kept):
    strategy = BudgetStrategy(fp32=35.0, max_drop=0.1, rank=None, qat=True)  # --int8-only --allow-qat
    asked = _drive(strategy, lambda s: qat_metric if s.qat else 32.5)
    assert [s.qat for s in asked] == [False, True] and asked[1].float_layers == ()
    assert strategy.best().step.qat is kept and strategy.qat_trial().metric == qat_metric
