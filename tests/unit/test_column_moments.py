"""The blocked column_stats kernel against NumPy's plain two-pass formulas."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from shardmill.ops.column_stats import moments


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(0, 90_000),
    cols=st.integers(1, 40),
    offset=st.sampled_from([0.0, -3.5, 1e6]),
    seed=st.integers(0, 2**16),
)
def test_moments_equal_numpy_across_block_boundaries(
    rows: int, cols: int, offset: float, seed: int
) -> None:
    # Given rows that span several cache blocks (and ragged tails), far from zero or not
    x = np.random.default_rng(seed).normal(offset, 2.0, size=(rows, cols))
    # When the blocked kernel runs
    total, mean, m2, low, high = moments(x)
    # Then it agrees with NumPy: exactly for min/max, to rounding for the sums
    if rows == 0:
        assert (total == 0).all() and (low == np.inf).all() and (high == -np.inf).all()
        return
    np.testing.assert_array_equal(low, x.min(axis=0))
    np.testing.assert_array_equal(high, x.max(axis=0))
    np.testing.assert_allclose(total, x.sum(axis=0), rtol=1e-12, atol=1e-9)
    np.testing.assert_allclose(mean, x.mean(axis=0), rtol=1e-12, atol=1e-12)
    want = ((x - x.mean(axis=0)) ** 2).sum(axis=0)
    np.testing.assert_allclose(m2, want, rtol=1e-9, atol=1e-9)


def test_nan_and_non_contiguous_input() -> None:
    x = np.arange(60_000, dtype=np.float64).reshape(-1, 6)[:, ::2]  # a strided view
    x[7, 1] = np.nan
    total, _, m2, low, high = moments(x)
    assert np.isnan(total[1]) and np.isnan(low[1]) and np.isnan(high[1])
    np.testing.assert_array_equal(low[[0, 2]], x[:, [0, 2]].min(axis=0))
    np.testing.assert_allclose(m2[0], ((x[:, 0] - x[:, 0].mean()) ** 2).sum())
