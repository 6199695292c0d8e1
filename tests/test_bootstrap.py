"""Bootstrap intervals: against a loop written independently, and the properties an interval must have."""

from __future__ import annotations

import numpy as np
import pytest

from mmc.evaluation import bootstrap
from mmc.evaluation.bootstrap import Interval, mean_interval, paired_difference_interval


def loop_interval(values, resamples, seed, confidence):
    """The textbook percentile bootstrap, one draw at a time, sorted statistics, interpolated."""
    rng = np.random.default_rng(seed)
    n = len(values)
    means = []
    for _ in range(resamples):
        picked = [values[int(i)] for i in rng.integers(0, n, size=n)]
        means.append(sum(picked) / n)
    means.sort()
    tail = (1 - confidence) / 2

    def quantile(q):  # linear interpolation between order statistics (numpy's default)
        position = q * (len(means) - 1)
        low = int(np.floor(position))
        high = min(low + 1, len(means) - 1)
        return means[low] + (means[high] - means[low]) * (position - low)

    return quantile(tail), quantile(1 - tail)


def test_matches_an_independent_loop():
    values = np.random.default_rng(5).beta(2, 3, size=57)
    got = mean_interval(values, resamples=1000, seed=11, confidence=0.95)
    lo, hi = loop_interval(list(values), 1000, 11, 0.95)
    assert got.point == pytest.approx(values.mean(), abs=1e-15)
    assert (got.lo, got.hi) == pytest.approx((lo, hi), abs=1e-12)


def test_chunking_does_not_change_the_draws(monkeypatch):
    values = np.random.default_rng(1).uniform(size=40)
    whole = bootstrap.bootstrap_means(values, 1000, seed=3)
    monkeypatch.setattr(bootstrap, "CHUNK_ELEMENTS", 40 * 7)  # 7 draws per chunk: 143 chunks
    assert np.array_equal(bootstrap.bootstrap_means(values, 1000, seed=3), whole)


def test_paired_difference_resamples_objects_together():
    rng = np.random.default_rng(2)
    a = rng.uniform(0.2, 0.9, size=80)
    b = a - 0.02 + rng.normal(0, 0.01, size=80)  # b tracks a object by object
    paired = paired_difference_interval(a, b, resamples=2000, seed=0, confidence=0.95)
    assert paired.point == pytest.approx(a.mean() - b.mean(), abs=1e-12)
    lo, hi = loop_interval(list(a - b), 2000, 0, 0.95)
    assert (paired.lo, paired.hi) == pytest.approx((lo, hi), abs=1e-12)
    # pairing removes the between-object spread: the interval of the difference is far narrower than
    # what two independent intervals would suggest, and excludes zero
    alone = mean_interval(a, resamples=2000, seed=0, confidence=0.95)
    assert paired.hi - paired.lo < 0.2 * (alone.hi - alone.lo)
    assert paired.lo > 0


def test_properties():
    rng = np.random.default_rng(9)
    for n in (1, 2, 5, 30, 400):
        values = rng.uniform(size=n)
        got = mean_interval(values, resamples=1000, seed=4, confidence=0.95)
        assert got.lo <= got.point <= got.hi  # contains the point estimate
        assert got.lo >= 0.0 and got.hi <= 1.0  # within the range of the values
    same = rng.uniform(size=50)
    zero = paired_difference_interval(same, same.copy(), resamples=1000, seed=4, confidence=0.95)
    assert zero == Interval(0.0, 0.0, 0.0)  # identical inputs: no difference, no uncertainty
    constant = mean_interval(np.full(20, 0.3), resamples=1000, seed=4, confidence=0.95)
    assert constant.lo == constant.hi == pytest.approx(0.3)
    wide = mean_interval(same, resamples=1000, seed=4, confidence=0.99)
    narrow = mean_interval(same, resamples=1000, seed=4, confidence=0.80)
    assert wide.lo < narrow.lo < narrow.hi < wide.hi
    assert mean_interval(same, resamples=1000, seed=4, confidence=0.95) == mean_interval(
        same, resamples=1000, seed=4, confidence=0.95
    )  # a fixed seed: the same interval every time


def test_coverage_is_about_the_nominal_level():
    """Over 300 samples of 60 objects from a known distribution, the 95 % interval holds the true
    mean about 95 % of the time (the percentile bootstrap is a little liberal at small n)."""
    rng = np.random.default_rng(2024)
    true_mean = 2 / (2 + 5)  # Beta(2, 5), skewed like per-object IoUs of a weak model
    hits = 0
    for trial in range(300):
        sample = rng.beta(2, 5, size=60)
        got = mean_interval(sample, resamples=1000, seed=trial, confidence=0.95)
        hits += got.lo <= true_mean <= got.hi
    assert 0.90 <= hits / 300 <= 0.99


def test_bad_inputs():
    with pytest.raises(ValueError, match="non-empty 1-d"):
        mean_interval(np.array([]), resamples=1000, seed=0, confidence=0.95)
    with pytest.raises(ValueError, match="same objects"):
        paired_difference_interval(np.ones(3), np.ones(4), resamples=1000, seed=0, confidence=0.95)
    with pytest.raises(ValueError, match="confidence"):
        mean_interval(np.ones(3), resamples=1000, seed=0, confidence=1.0)
