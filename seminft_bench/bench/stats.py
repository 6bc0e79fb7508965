"""Uncertainty and agreement for the tables: bootstrap and Wilson intervals, Spearman's ρ."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class Estimate:
    """A mean with its 95% interval; ``n`` values went in."""

    mean: float
    low: float
    high: float
    n: int


def bootstrap_mean(values: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Estimate | None:
    """Mean and percentile-bootstrap 95% interval over samples (resampling samples with replacement).

    None for no values. One value gives a zero-width interval: there is nothing to resample.
    """
    x = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if x.size == 0:
        return None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)
    # No interpolation between resampled means: an infinite PSNR (identical images) stays inf, not NaN.
    low, high = np.quantile(means, [0.025, 0.975], method="inverted_cdf")
    return Estimate(float(x.mean()), float(low), float(high), int(x.size))


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation of two paired score lists (ties get average ranks); None if undefined."""
    from scipy.stats import spearmanr

    if len(a) < 3:
        return None
    rho = spearmanr(a, b).statistic
    return None if np.isnan(rho) else float(rho)


def wilson_interval(count: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion ``count / total``: defined at 0 of n and n of n too."""
    from scipy.stats import binomtest

    if total <= 0:
        raise ValueError(f"total must be positive, got {total}")
    interval = binomtest(count, total).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)
