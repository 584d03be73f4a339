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


# --------------------------------------------------------------------------- every entry point
# The same bad parameters go through every entry point; each must answer with a ValueError
# (the CLI: exit status 2 and one line) naming the parameter, before any planning work.
N_ENTRY = 120
CUDA = torch.cuda.is_available()

BAD_PARAMS = [
    ("gcbs", {"quantile": 1.0}, "quantile"),
    ("gcbs", {"quantile": 1.5}, "quantile"),
    ("gcbs", {"quantile": 0.0}, "quantile"),
    ("gcbs", {"quantile": -1.0}, "quantile"),
    ("gcbs", {"quantile": float("nan")}, "quantile"),
    ("gcbs", {"top_k": 0}, "top_k"),
    ("gcbs", {"top_k": -3}, "top_k"),
    ("gcbs", {"top_k": N_ENTRY}, "top_k"),
    ("gcbs", {"top_k": 5, "quantile": 0.9}, "top_k"),
    ("gcbs", {"metric": "l2"}, "metric"),
    ("gcbs", {"backend": "annoy"}, "backend"),
    ("gcbs", {"device": "bogus"}, "device"),
    ("gcbs", {"device": "cuda:7" if CUDA else "cuda"}, "device"),
    ("gcbs", {"n_threshold_pairs": 0}, "n_threshold_pairs"),
    ("gcbs", {"max_edges": 0}, "max_edges"),
    ("gcbs", {"block_rows": 0}, "block_rows"),
    ("gcbs", {"recall_rows": -1}, "recall_rows"),
    ("b3", {"cluster_size": 1}, "cluster_size"),
    ("b3", {"cluster_size": 3}, "cluster_size"),  # batch_size 8 is not a multiple
    ("b3", {"cluster_size": 4, "p": -1}, "p must"),
    ("b3", {"cluster_size": 4, "m": 0}, "m must"),
    ("b3", {"cluster_size": 4, "p": 100, "m": 50}, "rank window"),
    ("b3", {"cluster_size": 4, "partitioner": "kmeans"}, "partitioner"),
    ("b3", {"cluster_size": 4, "hard_negatives": -1}, "hard_negatives"),
    ("b3", {"cluster_size": 4, "label_fraction": 0.0}, "label_fraction"),
    ("b3", {"cluster_size": 4, "label_fraction": 1.5}, "label_fraction"),
    ("b3", {"cluster_size": 4, "device": "bogus"}, "device"),
    ("random", {"batch_size": 1}, "batch_size"),
    ("random", {"batch_size": N_ENTRY + 1}, "batch_size"),
    ("random", {"seed": -1}, "seed"),
]
#: Python-only values (a CLI option parses its type, so these cannot be typed there).
BAD_PYTHON_PARAMS = [
    ("gcbs", {"quantile": "high"}, "quantile"),
    ("gcbs", {"top_k": 2.5}, "top_k"),
    ("gcbs", {"progress": "yes"}, "progress"),
    ("b3", {"cluster_size": 4, "mutual": "yes"}, "mutual"),
    ("random", {"batch_size": 2.5}, "batch_size"),
    ("random", {"batch_size": True}, "batch_size"),
    ("random", {"seed": "0"}, "seed"),
    ("random", {"drop_last": "no"}, "drop_last"),
]


def _entry_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N_ENTRY, 8)).astype(np.float32)
    return x, x + 0.1 * rng.normal(size=x.shape).astype(np.float32)


def _split(params):
    params = dict(params)
    return (
        params.pop("batch_size", 8),
        params.pop("seed", 0),
        params.pop("drop_last", False),
        params,
    )


@pytest.mark.parametrize(("method", "params", "match"), BAD_PARAMS + BAD_PYTHON_PARAMS)
def test_plan_refuses_bad_parameters(method, params, match):
    import hardbatch

    x, y = _entry_data()
    batch_size, seed, drop_last, rest = _split(params)
    data = {"n_samples": N_ENTRY} if method == "random" else {"queries": x, "targets": y}
    with pytest.raises(ValueError, match=match):
        hardbatch.plan(
            method, batch_size=batch_size, seed=seed, drop_last=drop_last, **data, **rest
        )


@pytest.mark.parametrize(("method", "params", "match"), BAD_PARAMS + BAD_PYTHON_PARAMS)
def test_sampler_refuses_bad_parameters_when_made(method, params, match):
    from hardbatch import HardBatchSampler

    x, y = _entry_data()
    batch_size, seed, drop_last, rest = _split(params)
    data = {} if method == "random" else {"embeddings": (x, y)}
    with pytest.raises(ValueError, match=match):
        HardBatchSampler(
            n_samples=N_ENTRY, batch_size=batch_size, method=method, seed=seed,
            drop_last=drop_last, **data, **rest,
        )  # fmt: skip


@pytest.mark.parametrize(("method", "params", "match"), BAD_PARAMS)
def test_cli_refuses_bad_parameters_in_one_line(method, params, match, tmp_path, capsys):
    from hardbatch.cli import main

    x, y = _entry_data()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    batch_size, seed, _, rest = _split(params)
    argv = ["plan", "--method", method, "--batch-size", str(batch_size), "--seed", str(seed)]
    argv += ["-o", str(tmp_path / "plan.npz")]
    if method == "random":
        argv += ["--n-samples", str(N_ENTRY)]
    else:
        argv += ["--queries", str(tmp_path / "x.npy"), "--targets", str(tmp_path / "y.npy")]
    for name, value in rest.items():
        argv += ["--" + name.replace("_", "-"), str(value)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("hardbatch: error: ") and "\n" not in err, err
    assert match.split()[0] in err or match.split()[0].replace("_", "-") in err, err
    assert not (tmp_path / "plan.npz").exists()


@pytest.mark.parametrize(
    ("method", "params", "match"),
    # The trainer gives the batch size and drop_last, not configure().
    [c for c in BAD_PARAMS + BAD_PYTHON_PARAMS if not {"batch_size", "drop_last"} & set(c[1])],
)
def test_sentence_transformers_configure_refuses_bad_parameters(method, params, match):
    pytest.importorskip("sentence_transformers")
    from hardbatch.integrations.sentence_transformers import SentenceTransformersHardBatchSampler

    _, seed, _, rest = _split(params)
    if (
        "rank window" in match
        or "multiple" in match
        or match == "cluster_size"
        and (rest.get("cluster_size") == 3)
        or "top_k" in rest
        and rest["top_k"] == N_ENTRY
    ):
        pytest.skip("needs the dataset's N or the trainer's batch size (checked per sampler)")
    with pytest.raises(ValueError, match=match):
        SentenceTransformersHardBatchSampler.configure(method, seed=seed, **rest)


BAD_DATA = {
    "NaN embeddings": (
        lambda x: np.where(np.arange(x.size).reshape(x.shape) == 9, np.nan, x),
        "NaN",
    ),
    "inf embeddings": (
        lambda x: np.where(np.arange(x.size).reshape(x.shape) == 9, np.inf, x),
        "inf",
    ),
    "1-D embeddings": (lambda x: x[:, 0], "2-D"),
    "object embeddings": (lambda x: x.astype(object), "floating dtype"),
    "integer embeddings": (lambda x: x.astype(np.int64), "floating dtype"),
    "a list": (lambda x: x.tolist(), "numpy array"),
    "an all-zero row": (lambda x: np.where(np.arange(len(x))[:, None] == 3, 0, x), "all-zero"),
    "a near-zero row": (
        lambda x: np.where(np.arange(len(x))[:, None] == 3, np.float32(1e-30), x),
        "near-zero norm",
    ),
    "empty": (lambda x: x[:0], "empty"),
}


@pytest.mark.parametrize("method", ["random", "gcbs", "b3"])
@pytest.mark.parametrize("case", list(BAD_DATA))
def test_every_method_refuses_bad_embeddings(method, case):
    import hardbatch

    x, y = _entry_data()
    bad, match = BAD_DATA[case]
    params = {"b3": {"cluster_size": 4, "p": 0, "m": 5}, "gcbs": {"top_k": 3}, "random": {}}
    with pytest.raises(ValueError, match=match):
        hardbatch.plan(method, bad(x), y, batch_size=8, **params[method])


@pytest.mark.parametrize("method", ["random", "gcbs", "b3"])
@pytest.mark.parametrize(
    ("ids", "match"),
    [
        (np.where(np.arange(N_ENTRY) == 5, np.nan, np.arange(N_ENTRY, dtype=float)), "NaN"),
        ([float("nan")] + list(range(N_ENTRY - 1)), "NaN"),
        (np.zeros(N_ENTRY), "occurs 120 times"),
        (np.arange(N_ENTRY - 1), "entries"),
    ],
)
def test_every_method_refuses_bad_duplicate_ids(method, ids, match):
    import hardbatch

    x, y = _entry_data()
    params = {"b3": {"cluster_size": 4, "p": 0, "m": 5}, "gcbs": {"top_k": 3}, "random": {}}
    data = {"queries": x, "targets": y} if method != "random" else {"n_samples": N_ENTRY}
    with pytest.raises(ValueError, match=match):
        hardbatch.plan(method, **data, batch_size=8, duplicate_ids=ids, **params[method])


def test_nan_labels_are_refused():
    import hardbatch

    x, y = _entry_data()
    labels = np.where(np.arange(N_ENTRY) == 7, np.nan, np.arange(N_ENTRY) % 6)
    with pytest.raises(ValueError, match="labels holds NaN"):
        hardbatch.plan("b3", x, y, batch_size=8, cluster_size=4, m=5, labels=labels)


def test_sentence_transformers_b3_batch_size_is_checked_before_the_teacher_pass():
    pytest.importorskip("sentence_transformers")
    datasets = pytest.importorskip("datasets")
    from hardbatch.integrations.sentence_transformers import SentenceTransformersHardBatchSampler

    class Teacher:
        def encode(self, texts, **kwargs):
            raise AssertionError("the teacher pass ran before the parameters were checked")

    dataset = datasets.Dataset.from_dict(
        {"q": [f"q{i}" for i in range(40)], "t": [f"t{i}" for i in range(40)]}
    )
    config = SentenceTransformersHardBatchSampler.configure(
        "b3", teacher=Teacher(), cluster_size=5, p=0, m=5
    )
    with pytest.raises(ValueError, match="batch_size=8 must be a multiple of cluster_size=5"):
        config(dataset, batch_size=8, drop_last=False)
