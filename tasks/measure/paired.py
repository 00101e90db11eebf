"""Is a new model no worse than the one it replaces? An exact paired test on the rows both classified.

Two models scored on the same rows differ only where one is right and the other wrong:
`b` rows only the challenger gets right, `c` rows only the champion does (McNemar's
discordant pairs). The accuracy difference is (b - c) / N. The gate asks the
non-inferiority question: is the challenger's accuracy more than `margin` below the
champion's?

    H0: acc(challenger) - acc(champion) <= -margin      H1: it is above -margin

Conditional on the n = b + c discordant rows, each is a challenger win with probability
theta, and the difference is n (2 theta - 1) / N; the margin's boundary is theta0 =
1/2 - margin N / (2 n). The p-value is the exact binomial tail P(X >= b | n, theta0).
With margin 0 this is the exact one-sided McNemar test. Conditioning treats the
discordance rate as known (the usual price of an exact test here); with theta0 <= 0 the
discordant rows are too few to lose `margin` even if the champion won all of them, so
p = 0. Why this test and not a difference of two accuracies: the same rows are shared,
so most of the noise cancels; only the rows where the two models disagree carry
evidence, and a bare difference of means ignores how many there were.
"""

from __future__ import annotations

import math

import numpy as np

TEST_NAME = "exact conditional McNemar non-inferiority test (one-sided, discordant rows)"


def binomial_upper_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed exactly in log space (n up to millions)."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q = math.log(p), math.log1p(-p)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(k, n + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def noninferiority(challenger_correct: np.ndarray, champion_correct: np.ndarray, margin: float) -> dict:
    """The paired test of `challenger_correct` against `champion_correct` (booleans, one per shared row)."""
    challenger_correct = np.asarray(challenger_correct, dtype=bool)
    champion_correct = np.asarray(champion_correct, dtype=bool)
    if challenger_correct.shape != champion_correct.shape:
        raise ValueError(f"paired test: {challenger_correct.shape} against {champion_correct.shape} rows; the two "
                         f"models must be scored on the same rows")
    rows = len(challenger_correct)
    b = int((challenger_correct & ~champion_correct).sum())
    c = int((~challenger_correct & champion_correct).sum())
    discordant = b + c
    if discordant == 0:
        # The two agree on every row: the difference is exactly 0, above -margin when margin > 0.
        theta0, p_value = None, (0.0 if margin > 0 else 1.0)
    else:
        theta0 = 0.5 - margin * rows / (2 * discordant)
        p_value = 0.0 if theta0 <= 0 else binomial_upper_tail(b, discordant, theta0)
    return {
        "test": TEST_NAME,
        "rows": rows,
        "challenger_only_right": b,
        "champion_only_right": c,
        "accuracy_difference": round((b - c) / rows, 6) if rows else 0.0,
        "margin": margin,
        "theta0": None if theta0 is None else round(theta0, 6),
        "p_value": p_value,
    }
