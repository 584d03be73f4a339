"""Input checks: bad input fails fast with a ValueError naming the problem."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hardbatch.validation import (
    check_batch_size,
    check_embeddings,
    check_fraction,
    check_pair,
    check_positive_int,
    check_seed,
)


def test_check_embeddings_returns_row_norms(make_pair):
    x, _ = make_pair(50, 8, dtype=np.float64)
    np.testing.assert_allclose(check_embeddings(x), np.linalg.norm(x, axis=1), rtol=1e-6)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_check_embeddings_accepts_float_dtypes_and_torch(make_pair, dtype):
    x, _ = make_pair(20, 4, dtype=dtype)
    expected = np.linalg.norm(x.astype(np.float64), axis=1)
    np.testing.assert_allclose(check_embeddings(x), expected, rtol=1e-5)
    np.testing.assert_allclose(check_embeddings(torch.from_numpy(x)), expected, rtol=1e-5)


def test_check_embeddings_reads_in_blocks(make_pair, monkeypatch):
    """Memmaps are validated block by block; a bad row in a later block is still found."""
    import hardbatch.validation as validation

    monkeypatch.setattr(validation, "_CHECK_ROWS", 7)
    x, _ = make_pair(30, 4)
    np.testing.assert_allclose(check_embeddings(x), np.linalg.norm(x, axis=1), rtol=1e-6)
    x[23, 1] = np.nan
    with pytest.raises(ValueError, match="row 23"):
        check_embeddings(x)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values(make_pair, bad):
    x, _ = make_pair(10, 4)
    x[6, 2] = bad
    with pytest.raises(ValueError, match=r"queries contains NaN or inf.*row 6"):
        check_embeddings(x, "queries")
    with pytest.raises(ValueError, match="NaN or inf"):
        check_embeddings(torch.from_numpy(x), "queries")


def test_values_beyond_float32_range(make_pair):
    x, _ = make_pair(10, 4, dtype=np.float64)
    x[3, 0] = 1e300  # finite in float64, inf once computed in float32
    with np.errstate(over="ignore"), pytest.raises(ValueError, match="float32 range"):
        check_embeddings(x)
    y, _ = make_pair(10, 4)
    y[4] = 3e38  # every value finite, the row norm overflows float32
    with pytest.raises(ValueError, match="row 4 has a norm beyond the float32 range"):
        check_embeddings(y)


def test_all_zero_row(make_pair):
    x, _ = make_pair(10, 4)
    x[2] = 0
    x[7] = 0
    with pytest.raises(ValueError, match=r"targets has 2 all-zero row\(s\) \(first: row 2\)"):
        check_embeddings(x, "targets")


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.ones(5, dtype=np.float32), r"must be 2-D.*\(5,\)"),
        (np.ones((2, 3, 4), dtype=np.float32), r"must be 2-D.*\(2, 3, 4\)"),
        (np.ones((0, 4), dtype=np.float32), "is empty"),
        (np.ones((4, 0), dtype=np.float32), "is empty"),
        (np.ones((4, 3), dtype=np.int64), "floating dtype"),
        (np.ones((4, 3), dtype=bool), "floating dtype"),
        (torch.ones((4, 3), dtype=torch.int32), "floating point tensor"),
        ("not an array", "must be a numpy array"),
    ],
)
def test_bad_shapes_and_types(array, message):
    with pytest.raises(ValueError, match=message):
        check_embeddings(array)


def test_check_pair_mismatches(make_pair):
    x, y = make_pair(10, 4)
    with pytest.raises(ValueError, match="same number of rows.*10 and 9"):
        check_pair(x, y[:9])
    with pytest.raises(ValueError, match="same dimension.*4 and 3"):
        check_pair(x, y[:, :3])
    with pytest.raises(ValueError, match="^targets contains NaN"):
        check_pair(x, np.full_like(y, np.nan))
    q_norms, t_norms = check_pair(x, y)
    assert q_norms.shape == t_norms.shape == (10,)


def test_check_batch_size():
    assert check_batch_size(np.int32(4), 10) == 4
    assert check_batch_size(10, 10) == 10
    for bad in (1, 0, -3):
        with pytest.raises(ValueError, match="at least 2"):
            check_batch_size(bad, 10)
    for bad in (4.0, "4", True, None):
        with pytest.raises(ValueError, match="must be an integer"):
            check_batch_size(bad, 10)
    with pytest.raises(ValueError, match=r"N=10 samples is smaller than batch_size=11"):
        check_batch_size(11, 10)


def test_check_seed():
    assert check_seed(None) is None
    assert check_seed(np.int64(3)) == 3
    for bad in (-1, 1.5, "0", True):
        with pytest.raises(ValueError, match="seed must be None or a non-negative integer"):
            check_seed(bad)


def test_check_fraction():
    assert check_fraction("0.25", "quantile") == 0.25
    for bad in (0, 1, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match=r"quantile must be in the open interval \(0"):
            check_fraction(bad, "quantile")
    with pytest.raises(ValueError, match="quantile must be a number"):
        check_fraction("high", "quantile")


def test_check_positive_int():
    assert check_positive_int(np.int16(5), "top_k") == 5
    for bad in (0, -2, 2.0, False):
        with pytest.raises(ValueError, match="top_k must be an integer >= 1"):
            check_positive_int(bad, "top_k")
    with pytest.raises(ValueError, match=">= 100"):
        check_positive_int(50, "n_pairs", minimum=100)
