"""Uncertainty and agreement for the tables: paired bootstrap and Wilson intervals, Spearman's ρ, Kendall's τ.

Methods are compared on the same samples, so their intervals come from one paired bootstrap:
each replicate resamples sample ids once and takes every method's mean over the same draw
(what ``scipy.stats.bootstrap(..., paired=True)`` does). Percentiles are read without
interpolation ("inverted_cdf") so an infinite PSNR (identical images) stays inf, never NaN.
"""

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
    return paired_bootstrap(x[None], resamples, seed)[0]


BOOTSTRAP_CHUNK_ELEMENTS = 1 << 22
"""Replicates are drawn in chunks of at most this many draws (replicates × samples, 32 MiB of int64), so the
bootstrap's memory stays O(methods × samples) however many samples there are."""


def paired_bootstrap(values: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> list[Estimate]:
    """Per row of ``values`` (methods × samples, the same samples in every row) its mean and 95% interval,
    from one bootstrap whose every replicate draws the sample ids once for all rows.

    A replicate's means are its count of each sample times the values (one product for all rows), not a
    gather of every drawn value of every row: the same numbers to rounding, several times faster."""
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"expected a methods × samples array with at least one sample, got shape {x.shape}")
    rng, samples = np.random.default_rng(seed), x.shape[1]
    chunk = max(1, min(resamples, BOOTSTRAP_CHUNK_ELEMENTS // samples))
    means, counts = np.empty((resamples, x.shape[0])), np.empty((chunk, samples))
    for start in range(0, resamples, chunk):  # the same draws, in order, as one (resamples × samples) array
        draws = rng.integers(0, samples, size=(min(chunk, resamples - start), samples))
        for row, drawn in zip(counts, draws):
            row[:] = np.bincount(drawn, minlength=samples)
        means[start : start + len(draws)] = _replicate_means(x, counts[: len(draws)])
    low, high = np.quantile(means, [0.025, 0.975], axis=0, method="inverted_cdf")
    with np.errstate(invalid="ignore"):
        mean = x.mean(axis=1)
    return [Estimate(float(m), float(lo), float(hi), x.shape[1]) for m, lo, hi in zip(mean, low, high)]


def _replicate_means(x: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Replicates × rows means from each replicate's ``counts`` of the samples. A replicate that drew an infinity
    (the PSNR of an exact copy) or a NaN gets the mean the drawn values have: ±inf, or NaN (NaN, or both infinities)."""
    with np.errstate(invalid="ignore"):
        means = counts @ np.where(np.isfinite(x), x, 0).T / x.shape[1]
        for drawn, value in ((x == np.inf, np.inf), (x == -np.inf, -np.inf), (np.isnan(x), np.nan)):
            if drawn.any():
                means = np.where(counts @ drawn.T > 0, means + value, means)
    return means


def paired_difference(a: Sequence[float], b: Sequence[float], resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> Estimate:
    """Mean of ``a − b`` over paired samples with its paired-bootstrap 95% interval.

    An interval that excludes 0 says the two differ on these samples (at about the 5% level).
    Pairs where both are infinite (two exact copies) differ by nothing and count as 0.
    """
    return paired_differences(a, np.asarray(b, dtype=np.float64)[None], resamples, seed)[0]


def paired_differences(
    a: Sequence[float], others: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0
) -> list[Estimate]:
    """`paired_difference` of ``a`` and each row of ``others`` (rows × samples), from one bootstrap: the same
    draws, hence the same intervals, as one call per row."""
    a, others = np.asarray(a, dtype=np.float64), np.asarray(others, dtype=np.float64)
    if others.ndim != 2 or others.shape[1:] != a.shape:
        raise ValueError(f"paired values must have one shape, got {a.shape} and rows of {others.shape[1:]}")
    with np.errstate(invalid="ignore"):
        difference = np.where(a == others, 0.0, a - others)
    return paired_bootstrap(difference, resamples, seed)


def spearman(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Spearman's rank correlation of two paired score lists (ties get average ranks); None if undefined."""
    from scipy.stats import spearmanr

    if len(a) < 3:
        return None
    rho = spearmanr(a, b).statistic
    return None if np.isnan(rho) else float(rho)


def kendall(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Kendall's τ-b of two paired score lists (ties handled, as judges' integer scores need); None if undefined."""
    from scipy.stats import kendalltau

    if len(a) < 3:
        return None
    tau = kendalltau(a, b).statistic
    return None if np.isnan(tau) else float(tau)


def wilson_interval(count: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of the proportion ``count / total``: defined at 0 of n and n of n too."""
    from scipy.stats import binomtest

    if total <= 0:
        raise ValueError(f"total must be positive, got {total}")
    interval = binomtest(count, total).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)
