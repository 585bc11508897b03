"""Rows over seeds and verdicts from their spread, shared by the reproductions in miniature.

One run of a small model says little: two seeds of the same recipe can differ by more than the effect a paper
claims. Every reproduction therefore trains each row with several seeds, reports mean +- standard deviation, and
decides each claim from the spread with Welch's t-test (unequal variances, as two kinds of model need not vary
alike). A claim ends in one of three verdicts: ``holds``, ``does not hold`` or ``not resolved at this size``.
"""

import math


HOLDS, DOES_NOT_HOLD, NOT_RESOLVED = "holds", "does not hold", "not resolved at this size"


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def summarise(per_seed: dict[int, dict[str, float]]) -> dict:
    """A row: each metric's values per seed (in seed order; a seed without the metric is left out), mean and
    standard deviation. A metric is any number some seed has."""
    seeds = sorted(per_seed)
    metrics: list[str] = []
    for seed in seeds:
        for key, value in per_seed[seed].items():
            if isinstance(value, (int, float)) and key not in metrics:
                metrics.append(key)
    values = {
        key: [float(per_seed[seed][key]) for seed in seeds if per_seed[seed].get(key) is not None] for key in metrics
    }
    values = {key: found for key, found in values.items() if found}
    return {
        "seeds": seeds,
        "values": values,
        "mean": {key: mean_std(found)[0] for key, found in values.items()},
        "std": {key: mean_std(found)[1] for key, found in values.items()},
    }


def welch(baseline: list[float], treated: list[float]) -> dict:
    """``treated`` minus ``baseline``: the difference of means, Welch's two-sided p-value and 95% confidence
    interval. With fewer than two values on a side only the difference is known (the rest is None; all is None
    when a side has none, e.g. no seed drew a grid); with no spread on either side the difference is exact (p is 0,
    or 1 for no difference, and the interval is the point)."""
    from scipy import stats

    result = {"difference": None, "p_value": None, "ci_low": None, "ci_high": None}
    if not baseline or not treated:
        return result
    difference = mean_std(treated)[0] - mean_std(baseline)[0]
    result["difference"] = difference
    if min(len(baseline), len(treated)) < 2:
        return result
    shares = (mean_std(treated)[1] ** 2 / len(treated), mean_std(baseline)[1] ** 2 / len(baseline))
    variance = sum(shares)
    if variance == 0:
        return {**result, "p_value": 0.0 if difference else 1.0, "ci_low": difference, "ci_high": difference}
    # t = difference / its standard error, with the Welch-Satterthwaite degrees of freedom
    degrees = variance**2 / sum(share**2 / (len(group) - 1) for share, group in zip(shares, (treated, baseline)))
    p_value = float(2 * stats.t.sf(abs(difference) / math.sqrt(variance), degrees))
    half = float(stats.t.ppf(0.975, degrees)) * math.sqrt(variance)
    return {**result, "p_value": p_value, "ci_low": difference - half, "ci_high": difference + half}


def compare(baseline: list[float], treated: list[float], minimal_effect: float, alpha: float = 0.05) -> dict:
    """Whether ``treated`` is higher than ``baseline``, decided from the spread over seeds (Welch's t-test).

    ``does not hold``: the upper end of the difference's 95% confidence interval lies below ``minimal_effect``
    (any rise is smaller than the least that would count, however significant), or the difference is significantly
    negative. ``holds``: otherwise, the difference of means is positive and significant (two-sided p < ``alpha``).
    Otherwise (too few seeds, too much spread): ``not resolved at this size``.
    """
    result = welch(baseline, treated)
    p_value, difference, high = result["p_value"], result["difference"], result["ci_high"]
    if p_value is None:
        verdict = NOT_RESOLVED
    elif high < minimal_effect or (p_value < alpha and difference < 0):
        verdict = DOES_NOT_HOLD
    elif p_value < alpha and difference > 0:
        verdict = HOLDS
    else:
        verdict = NOT_RESOLVED
    return {**result, "verdict": verdict}


def not_worse(baseline: list[float], treated: list[float], margin: float) -> dict:
    """Whether ``treated`` is at least as high as ``baseline`` up to ``margin`` (a non-inferiority claim, the
    testable form of "comparable": two equal models never give a significant difference, so the absence of one
    cannot be the evidence).

    ``holds``: the whole 95% confidence interval of the difference lies above ``-margin`` (any shortfall is
    smaller than the margin). ``does not hold``: the whole interval lies below ``-margin`` (worse by more than the
    margin). Otherwise, or with fewer than two seeds a side: ``not resolved at this size``.
    """
    result = welch(baseline, treated)
    if result["ci_low"] is not None and result["ci_low"] > -margin:
        verdict = HOLDS
    elif result["ci_high"] is not None and result["ci_high"] < -margin:
        verdict = DOES_NOT_HOLD
    else:
        verdict = NOT_RESOLVED
    return {**result, "verdict": verdict}


def all_of(verdicts: list[str]) -> str:
    """The verdict of a claim made of parts that must all hold: it holds when every part does, does not hold when
    any part does not, and is not resolved otherwise."""
    if verdicts and all(verdict == HOLDS for verdict in verdicts):
        return HOLDS
    if any(verdict == DOES_NOT_HOLD for verdict in verdicts):
        return DOES_NOT_HOLD
    return NOT_RESOLVED
