"""Is a new model no worse than the one it replaces? Paired tests on the rows both classified.

Two models scored on the same rows differ only where one is right and the other wrong:
`b` rows only the challenger gets right, `c` rows only the champion does (McNemar's
discordant pairs), of N rows. The accuracy difference is d = (b - c) / N. The gate asks
the non-inferiority question: is the challenger's accuracy more than `margin` below the
champion's?

    H0: d <= -margin      H1: d > -margin

**Accuracy: Tango's score test** (Tango 1998, Statistics in Medicine 17:891-908). Under H0's
boundary d = -margin, the cell probabilities are estimated by restricted maximum likelihood
(the closed form of `restricted_p01`), and

    Z = (b - c + N margin) / sqrt(N (2 p01 - margin (1 + margin)))

is compared with the standard normal: p = 1 - Phi(Z). It is right at the margin: a
challenger exactly `margin` worse gets Z = 0, p = 0.5, and is never promoted. The exact
conditional test it replaces conditioned on b + c and had to return p = 0 whenever
b + c < N margin: a challenger that lost all 40 disagreements of 2,000 rows (two points
worse, exactly on a two-point margin) was "shown" non-inferior by arithmetic.

**Macro-F1: a paired bootstrap.** Macro-F1 is no proportion, so its difference is resampled:
the same rows drawn with replacement for both models (seeded), and p is the share of
resamples whose difference is at or below -margin (the one-sided percentile test).
"""

from __future__ import annotations

import math

import numpy as np

TEST_NAME = "Tango's score test for paired proportions (one-sided non-inferiority)"
F1_TEST_NAME = "paired bootstrap of the macro-F1 difference (one-sided percentile)"
RESAMPLES, SEED, CHUNK = 2000, 0, 100


def normal_upper_tail(z: float) -> float:
    """P(Z > z) for a standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2))


def restricted_p01(b: int, c: int, n: int, delta: float) -> float:
    """The restricted MLE of P(champion only right) under p10 - p01 = delta (Tango 1998, eq. 3):
    the larger root of 2n p^2 + (-(b + c) + (2n - b + c) delta) p - c delta (1 - delta) = 0."""
    a_coef = 2 * n
    b_coef = -(b + c) + (2 * n - b + c) * delta
    c_coef = -c * delta * (1 - delta)
    root = math.sqrt(max(0.0, b_coef * b_coef - 4 * a_coef * c_coef))
    return (-b_coef + root) / (2 * a_coef)


def tango(b: int, c: int, n: int, margin: float) -> tuple[float, float]:
    """(Z, one-sided p) of Tango's score test of H0: (b - c) / n <= -margin."""
    if n <= 0:
        return 0.0, 1.0
    if margin >= 1:
        return math.inf, 0.0  # no model can be more than 100 points worse
    delta = -margin
    p01 = restricted_p01(b, c, n, delta)
    variance = n * (2 * p01 + delta * (1 - delta))
    numerator = b - c - n * delta
    if variance <= 0:  # only when nothing is discordant and margin is 0: the difference is exactly 0
        return (math.inf, 0.0) if numerator > 0 else (0.0, 1.0)
    z = numerator / math.sqrt(variance)
    return z, normal_upper_tail(z)


def noninferiority(challenger_correct: np.ndarray, champion_correct: np.ndarray, margin: float) -> dict:
    """Tango's test of `challenger_correct` against `champion_correct` (booleans, one per shared row)."""
    challenger_correct = np.asarray(challenger_correct, dtype=bool)
    champion_correct = np.asarray(champion_correct, dtype=bool)
    if challenger_correct.shape != champion_correct.shape:
        raise ValueError(f"paired test: {challenger_correct.shape} against {champion_correct.shape} rows; the two "
                         f"models must be scored on the same rows")
    rows = len(challenger_correct)
    b = int((challenger_correct & ~champion_correct).sum())
    c = int((~challenger_correct & champion_correct).sum())
    z, p_value = tango(b, c, rows, margin)
    return {
        "test": TEST_NAME,
        "rows": rows,
        "challenger_only_right": b,
        "champion_only_right": c,
        "accuracy_difference": round((b - c) / rows, 6) if rows else 0.0,
        "margin": margin,
        "z": None if math.isinf(z) else round(z, 6),
        "p_value": p_value,
    }


def per_class_f1(predicted: np.ndarray, truth: np.ndarray, classes: int) -> np.ndarray:
    """F1 of each class 0..classes-1 (a prediction outside them counts as wrong); 0 where undefined."""
    predicted, truth = np.asarray(predicted), np.asarray(truth)
    bins = classes + 1
    predicted = np.where((predicted >= 0) & (predicted < classes), predicted, classes)
    tp = np.bincount(truth[predicted == truth], minlength=bins)[:classes]
    both = np.bincount(predicted, minlength=bins)[:classes] + np.bincount(truth, minlength=bins)[:classes]
    return np.divide(2 * tp, both, out=np.zeros(classes), where=both > 0)


def _bootstrap_macro_f1(predicted: np.ndarray, truth: np.ndarray, classes: int, rows: np.ndarray) -> np.ndarray:
    """Macro-F1 of each resample (rows: a (resamples, n) index array), all resamples at once."""
    resamples = rows.shape[0]
    bins = classes + 1
    offsets = (np.arange(resamples) * bins)[:, None]
    p, t = predicted[rows], truth[rows]
    tp = np.bincount((offsets + t)[p == t], minlength=resamples * bins).reshape(resamples, bins)[:, :classes]
    counted = (np.bincount((offsets + p).ravel(), minlength=resamples * bins)
               + np.bincount((offsets + t).ravel(), minlength=resamples * bins)).reshape(resamples, bins)[:, :classes]
    f1 = np.divide(2 * tp, counted, out=np.zeros(tp.shape), where=counted > 0)
    return f1.mean(axis=1)


def macro_f1_noninferiority(challenger: np.ndarray, champion: np.ndarray, truth: np.ndarray, classes: int,
                            margin: float, resamples: int = RESAMPLES, seed: int = SEED) -> dict:
    """The paired bootstrap test of H0: macro-F1(challenger) - macro-F1(champion) <= -margin.

    Predictions are class ids; a champion's answer outside the run's classes is `classes` (wrong)."""
    challenger, champion, truth = (np.asarray(a, dtype=np.int64) for a in (challenger, champion, truth))
    if not challenger.shape == champion.shape == truth.shape:
        raise ValueError("macro-F1 test: the two models must be scored on the same rows")
    difference = float(per_class_f1(challenger, truth, classes).mean() - per_class_f1(champion, truth, classes).mean())
    rng, resampled = np.random.default_rng(seed), []
    for start in range(0, resamples, CHUNK):  # a chunk at a time: a large test set must not need gigabytes
        rows = rng.integers(0, len(truth), size=(min(CHUNK, resamples - start), len(truth)))
        resampled.append(_bootstrap_macro_f1(challenger, truth, classes, rows)
                         - _bootstrap_macro_f1(champion, truth, classes, rows))
    resampled = np.concatenate(resampled)
    return {
        "test": F1_TEST_NAME,
        "rows": len(truth),
        "macro_f1_difference": round(difference, 6),
        "margin": margin,
        "resamples": resamples,
        "lower_5pct": round(float(np.quantile(resampled, 0.05)), 6),
        "p_value": float((resampled <= -margin).sum() + 1) / (resamples + 1),
    }
