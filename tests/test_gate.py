"""The promotion gate's arithmetic: the paired non-inferiority test and the decision it feeds."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from tasks.measure.paired import binomial_upper_tail, noninferiority
from tasks.stages.judge import GateParams, decide


def test_the_binomial_tail_matches_a_hand_count_and_scipy():
    assert binomial_upper_tail(8, 10, 0.5) == pytest.approx((45 + 10 + 1) / 1024)  # C(10,8)+C(10,9)+C(10,10) over 2^10
    for k, n, p in [(1, 1, 0.3), (40, 80, 0.375), (0, 5, 0.2), (120, 200, 0.45), (3000, 6000, 0.49)]:
        assert binomial_upper_tail(k, n, p) == pytest.approx(stats.binom.sf(k - 1, n, p), rel=1e-9, abs=1e-300)


def paired(b: int, c: int, both_right: int, both_wrong: int) -> tuple[np.ndarray, np.ndarray]:
    """Correctness of challenger and champion: b rows only the challenger gets, c only the champion."""
    challenger = [True] * b + [False] * c + [True] * both_right + [False] * both_wrong
    champion = [False] * b + [True] * c + [True] * both_right + [False] * both_wrong
    return np.array(challenger), np.array(champion)


def test_with_no_margin_it_is_the_exact_one_sided_mcnemar_test():
    result = noninferiority(*paired(b=30, c=18, both_right=900, both_wrong=52), margin=0.0)
    assert (result["challenger_only_right"], result["champion_only_right"], result["rows"]) == (30, 18, 1000)
    assert result["p_value"] == pytest.approx(stats.binomtest(30, 48, 0.5, alternative="greater").pvalue)


def test_the_margin_moves_the_null_to_its_boundary_on_the_discordant_rows():
    # 2000 rows, 80 discordant, 40 each way: equal accuracy. Within one point? theta0 = 0.5 - 0.01 * 2000 / 160 = 0.375.
    result = noninferiority(*paired(b=40, c=40, both_right=1800, both_wrong=120), margin=0.01)
    assert result["theta0"] == pytest.approx(0.375)
    assert result["p_value"] == pytest.approx(stats.binomtest(40, 80, 0.375, alternative="greater").pvalue)
    assert result["p_value"] < 0.05  # two equally good models are "no worse"
    # Two points worse: 40 against 80. Not shown to be within one point.
    worse = noninferiority(*paired(b=40, c=80, both_right=1760, both_wrong=120), margin=0.01)
    assert worse["accuracy_difference"] == pytest.approx(-0.02) and worse["p_value"] > 0.5


def test_too_few_disagreements_to_lose_the_margin_and_full_agreement():
    # 10 discordant rows of 2000 cannot cost one point (20 rows) even if production won them all.
    assert noninferiority(*paired(b=0, c=10, both_right=1900, both_wrong=90), margin=0.01)["p_value"] == 0.0
    same = noninferiority(*paired(b=0, c=0, both_right=90, both_wrong=10), margin=0.01)
    assert same["p_value"] == 0.0 and same["theta0"] is None
    assert noninferiority(*paired(b=0, c=0, both_right=90, both_wrong=10), margin=0.0)["p_value"] == 1.0
    with pytest.raises(ValueError, match="same rows"):
        noninferiority(np.ones(3, bool), np.ones(4, bool), 0.01)


def judgement(b: int, c: int, rows: int = 2000) -> dict:
    return {"rows": rows, "challenger": {"accuracy": 0.93, "macro_f1": 0.9}, "champion": {"accuracy": 0.93, "macro_f1": 0.9},
            "paired": noninferiority(*paired(b, c, rows - b - c - 100, 100), margin=0.01)}


def test_the_decision_needs_the_floors_and_the_paired_test():
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


@pytest.mark.parametrize("field, value", [("min_accuracy", 1.5), ("min_macro_f1", -0.1), ("tolerance", 2), ("alpha", 0)])
def test_thresholds_outside_their_range_are_refused(field, value):
    with pytest.raises(ValueError, match=field):
        GateParams(**{field: value})
