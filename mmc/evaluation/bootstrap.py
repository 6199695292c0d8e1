"""Bootstrap confidence intervals of per-object means (docs/evaluation.md#intervals). Pure numpy.

An mIoU is a mean over objects, so its uncertainty from the choice of objects is estimated by
resampling the objects with replacement: ``resamples`` draws of ``n`` indices from a generator
seeded with ``seed``, the mean of each draw, and the percentile interval of those means (Efron and
Tibshirani, "An Introduction to the Bootstrap", 1993, ch. 13). A difference between two models is
**paired**: both are evaluated on the same objects, so each draw takes the same objects for both and
the interval is that of the mean per-object difference (equivalently, of the difference of the two
resampled means). The draws depend only on (``seed``, ``n``, ``resamples``): every interval of a
table over the same objects uses the same draws.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

CHUNK_ELEMENTS = 1 << 22  # indices drawn at once (32 MiB of int64): memory stays bounded for any n


@dataclass(frozen=True)
class Interval:
    """A point estimate (the mean over all objects) and its percentile bootstrap interval."""

    point: float
    lo: float
    hi: float

    def overlaps(self, other: Interval) -> bool:
        return self.lo <= other.hi and other.lo <= self.hi


def resample_indices(n: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """The bootstrap draws, in chunks of rows: row ``r`` holds the ``n`` indices of draw ``r``.

    Rows are drawn one after the other from ``numpy.random.default_rng(seed)``: the same as drawing
    ``rng.integers(0, n, size=n)`` once per resample (a test checks it), whatever the chunking.
    """
    rng = np.random.default_rng(seed)
    rows = max(1, CHUNK_ELEMENTS // max(n, 1))
    done = 0
    while done < resamples:
        count = min(rows, resamples - done)
        yield rng.integers(0, n, size=(count, n))
        done += count


def bootstrap_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """The mean of ``values`` (shape ``(n,)``) over each bootstrap draw: shape ``(resamples,)``."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"expected a non-empty 1-d array of per-object values, got shape {values.shape}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    means = [values[rows].mean(axis=1) for rows in resample_indices(values.size, resamples, seed)]
    return np.concatenate(means)


def percentile_interval(statistics: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` interval of the bootstrap distribution (linear interpolation)."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(statistics, [tail, 1.0 - tail])
    return float(lo), float(hi)


def mean_interval(values: np.ndarray, *, resamples: int, seed: int, confidence: float) -> Interval:
    """The mean of ``values`` and its percentile bootstrap interval."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi = percentile_interval(bootstrap_means(values, resamples, seed), confidence)
    return Interval(float(values.mean()), lo, hi)


def paired_difference_interval(
    a: np.ndarray, b: np.ndarray, *, resamples: int, seed: int, confidence: float
) -> Interval:
    """mean(a) - mean(b) for two measurements of the same objects (``a[i]`` and ``b[i]`` are object
    ``i``), with the interval of the paired bootstrap: each draw resamples objects, not values."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired values need the same objects: shapes {a.shape} and {b.shape}")
    return mean_interval(a - b, resamples=resamples, seed=seed, confidence=confidence)
