"""The promotion gate's arithmetic: the paired non-inferiority test and the decision it feeds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import optimize, stats

from tasks.measure.paired import macro_f1_noninferiority, noninferiority, per_class_f1, tango
from tasks.stages.judge import GateParams, decide


def paired(b: int, c: int, both_right: int, both_wrong: int) -> tuple[np.ndarray, np.ndarray]:
    """Correctness of challenger and champion: b rows only the challenger gets, c only the champion."""
    challenger = [True] * b + [False] * c + [True] * both_right + [False] * both_wrong
    champion = [False] * b + [True] * c + [True] * both_right + [False] * both_wrong
    return np.array(challenger), np.array(champion)


def reference_tango(b: int, c: int, n: int, margin: float) -> float:
    """Tango's statistic from a restricted MLE found numerically (scipy), not from the closed form."""
    delta = -margin
    d = n - b - c

    def negative_log_likelihood(p01: float) -> float:
        p10 = p01 + delta
        return -(b * np.log(p10) + c * np.log(p01) + d * np.log(1 - p10 - p01))

    low, high = max(0.0, -delta) + 1e-12, (1 - delta) / 2 - 1e-12
    p01 = optimize.minimize_scalar(negative_log_likelihood, bounds=(low, high), method="bounded",
                                   options={"xatol": 1e-14}).x
    z = (b - c - n * delta) / np.sqrt(n * (2 * p01 + delta * (1 - delta)))
    return float(stats.norm.sf(z))


@pytest.mark.parametrize("b, c, n, margin", [(35, 43, 2000, 0.02), (35, 43, 2000, 0.01), (40, 80, 2000, 0.01),
                                             (12, 3, 500, 0.05), (0, 10, 2000, 0.01), (5, 9, 44, 0.1),
                                             (100, 100, 872, 0.02)])
def test_tangos_test_matches_a_numerical_restricted_likelihood(b, c, n, margin):
    result = noninferiority(*paired(b, c, n - b - c - (n - b - c) // 2, (n - b - c) // 2), margin=margin)
    assert result["rows"] == n and (result["challenger_only_right"], result["champion_only_right"]) == (b, c)
    assert result["p_value"] == pytest.approx(reference_tango(b, c, n, margin), rel=1e-6)


def test_at_the_margin_it_is_never_promoted_by_arithmetic():
    # Two points worse on a two-point margin: every one of 40 disagreements of 2,000 rows lost.
    at_margin = noninferiority(*paired(b=0, c=40, both_right=1860, both_wrong=100), margin=0.02)
    assert at_margin["accuracy_difference"] == pytest.approx(-0.02) and at_margin["p_value"] == pytest.approx(0.5)
    # Within the margin with too few disagreements to lose it is evidence, not proof: judged by the same test.
    assert 0 < noninferiority(*paired(b=0, c=10, both_right=1900, both_wrong=90), margin=0.01)["p_value"] < 0.05
    same = noninferiority(*paired(b=0, c=0, both_right=1900, both_wrong=100), margin=0.01)
    assert same["p_value"] < 0.001  # total agreement on 2,000 rows is within one point
    assert noninferiority(*paired(b=0, c=0, both_right=90, both_wrong=10), margin=0.0)["p_value"] == 1.0
    with pytest.raises(ValueError, match="same rows"):
        noninferiority(np.ones(3, bool), np.ones(4, bool), 0.01)


def test_its_size_at_the_margin_is_alpha():
    # Simulated at the null's boundary (the challenger exactly two points worse, 4% of rows discordant):
    # a test that is right at the margin rejects about alpha of the time, not far more.
    rng = np.random.default_rng(1)
    n, margin, rejected, trials = 2000, 0.02, 0, 4000
    cells = rng.multinomial(n, [0.01, 0.03, 0.96], size=trials)  # p10 - p01 = -0.02
    for b, c, _ in cells:
        rejected += tango(int(b), int(c), n, margin)[1] < 0.05
    assert 0.03 < rejected / trials < 0.07


def test_the_macro_f1_bootstrap_sees_a_dropped_class_that_accuracy_hides():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 6, 2000)
    truth[:40] = 5  # a rare class: 40 + ~330 rows
    truth[40:] = np.where(truth[40:] == 5, 0, truth[40:])
    champion = truth.copy()
    champion[rng.random(2000) < 0.07] = 0  # 7% wrong, spread
    challenger = champion.copy()
    challenger[truth == 5] = 1  # every rare row lost ...
    challenger[(truth == 0) & (champion != truth)] = 0  # ... while others are won back: accuracy barely moves
    result = macro_f1_noninferiority(challenger, champion, truth, 6, margin=0.02)
    assert result["macro_f1_difference"] < -0.1 and result["p_value"] > 0.5
    same = macro_f1_noninferiority(champion, champion, truth, 6, margin=0.02)
    assert same["macro_f1_difference"] == 0 and same["p_value"] < 0.001
    f1 = per_class_f1(challenger, truth, 6)
    assert f1[5] == 0 and np.allclose(per_class_f1(truth, truth, 6), 1)


def judgement(b: int, c: int, rows: int = 2000, macro_p: float = 0.001, champion_f1: dict | None = None,
              challenger_f1: dict | None = None) -> dict:
    classes = {"joy": 0.9, "fear": 0.9}
    return {"rows": rows,
            "challenger": {"accuracy": 0.93, "macro_f1": 0.9, "per_class_f1": challenger_f1 or classes},
            "champion": {"accuracy": 0.93, "macro_f1": 0.9, "per_class_f1": champion_f1 or classes},
            "paired": noninferiority(*paired(b, c, rows - b - c - 100, 100), margin=0.01),
            "macro_f1_paired": {"p_value": macro_p}}


def test_the_decision_needs_the_floors_and_the_paired_tests():
    gate = GateParams(min_accuracy=0.9, min_macro_f1=0.85, tolerance=0.01, alpha=0.05)
    good = {"accuracy": 0.93, "macro_f1": 0.90}
    first = decide(gate, good, None, None)
    assert first["promote"] and first["reasons"] == [] and first["champion"] is None
    low = decide(gate, {"accuracy": 0.89, "macro_f1": 0.84}, None, None)
    assert not low["promote"] and len(low["reasons"]) == 2 and "below the floor 0.9" in low["reasons"][0]
    assert decide(gate, good, judgement(40, 40), "a" * 64)["promote"]
    refused = decide(gate, good, judgement(40, 80), "a" * 64)
    assert not refused["promote"] and "not shown to be within 0.01 of the production model (run aaaaaaaaaaaa)" in refused["reasons"][0]
    already = decide(gate, good, None, "b" * 64, already_production=True)
    assert not already["promote"] and "already in production" in already["reasons"][0]
    # Macro-F1 is judged too, and a class whose F1 falls by more than class_f1_drop is refused by name.
    worse_f1 = decide(gate, good, judgement(40, 40, macro_p=0.4), "a" * 64)
    assert not worse_f1["promote"] and worse_f1["reasons"][0].startswith("macro-F1 not shown to be within 0.02")
    dropped = decide(gate, good, judgement(40, 40, challenger_f1={"joy": 0.95, "fear": 0.70},
                                           champion_f1={"joy": 0.9, "fear": 0.9}), "a" * 64)
    assert not dropped["promote"] and len(dropped["reasons"]) == 1 and "class 'fear': F1 0.700" in dropped["reasons"][0]
    old = {k: v for k, v in judgement(40, 40).items() if k != "macro_f1_paired"}
    assert "no macro-F1 test" in decide(gate, good, old, "a" * 64)["reasons"][0]


def test_floors_relative_to_the_runs_own_teacher():
    gate = GateParams(below_teacher=0.05)
    teacher = {"accuracy": 0.65, "macro_f1": 0.60}
    refused = decide(gate, {"accuracy": 0.567, "macro_f1": 0.503}, None, None, teacher=teacher)
    assert not refused["promote"] and len(refused["reasons"]) == 2
    assert "more than 0.05 below its own teacher's 0.6500" in refused["reasons"][0]
    assert decide(gate, {"accuracy": 0.63, "macro_f1": 0.58}, None, None, teacher=teacher)["promote"]
    assert decide(GateParams(), {"accuracy": 0.1, "macro_f1": 0.1}, None, None, teacher=teacher)["promote"]  # none set


@pytest.mark.parametrize("field, value", [("min_accuracy", 1.5), ("min_macro_f1", -0.1), ("tolerance", 2), ("alpha", 0),
                                          ("below_teacher", -0.1), ("macro_f1_tolerance", 1.5), ("class_f1_drop", -1)])
def test_thresholds_outside_their_range_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        GateParams(**{field: value})
