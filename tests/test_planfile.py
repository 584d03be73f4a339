"""Plan files are verified before they are trusted: tampered, crafted and corrupted files are
refused with a ValueError naming the file, before any large allocation."""

from __future__ import annotations

import io
import json
import tracemalloc
import zipfile

import numpy as np
import pytest

import hardbatch
from hardbatch import BatchPlan
from hardbatch.planfile import MAX_INFLATION

N = 203


@pytest.fixture(scope="module")
def b3_plan(tmp_path_factory):
    x = np.random.default_rng(0).normal(size=(N, 8)).astype(np.float32)
    plan = hardbatch.plan(
        "b3", x, x + 0.1, batch_size=20, cluster_size=5, p=0, m=10, seed=0, hard_negatives=2,
        duplicate_ids=np.arange(N) % 50,
    )  # fmt: skip
    return plan


def members(path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def npy(array) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def write(path, files: dict[str, bytes], compress: bool = False):
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", method) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return path


def meta_of(files) -> dict:
    return json.loads(str(np.load(io.BytesIO(files["meta.npy"]))))


def tampered(tmp_path, plan, *, meta=None, raw_meta=None, **arrays):
    """The plan's file with some arrays replaced (None: removed) or meta fields changed."""
    files = members(plan.save(tmp_path / "plan.npz"))
    for name, value in arrays.items():
        if value is None:
            files.pop(f"{name}.npy")
        else:
            files[f"{name}.npy"] = npy(value)
    if meta is not None or raw_meta is not None:
        content = meta_of(files)
        content.update(meta or {})
        text = raw_meta if raw_meta is not None else json.dumps(content)
        files["meta.npy"] = npy(np.array(text))
    return write(tmp_path / "tampered.npz", files)


def test_the_real_plan_loads(tmp_path, b3_plan):
    loaded = BatchPlan.load(b3_plan.save(tmp_path / "plan.npz"), n_samples=N)
    for epoch in range(3):
        np.testing.assert_array_equal(loaded.for_epoch(epoch), b3_plan.for_epoch(epoch))


def _repeat_cluster_id(plan):
    c = plan.clusters.copy()
    c[0, 0] = c[1, 0]
    return c


ARRAY_CASES = {
    "clusters repeat an id": (lambda p: {"clusters": _repeat_cluster_id(p)}, "exactly once"),
    "clusters out of range": (
        lambda p: {"clusters": np.where(p.clusters == 5, N + 7, p.clusters)},
        "exactly once",
    ),
    "clusters padded in the middle": (
        lambda p: {"clusters": np.where(p.clusters == p.clusters[0, 1], -1, p.clusters)},
        "padding",
    ),
    "hard negatives out of range": (
        lambda p: {"hard_negatives": p.hard_negatives + N},
        r"hard_negatives must be sample ids in \[0, 203\)",
    ),
    "a sample is its own hard negative": (
        lambda p: {"hard_negatives": np.repeat(np.arange(N)[:, None], 2, axis=1)},
        "its own hard negative",
    ),
    "hard negatives of the wrong shape": (
        lambda p: {"hard_negatives": p.hard_negatives[:-1]},
        "hard_negatives must have shape",
    ),
    "order of the wrong length": (lambda p: {"order": np.arange(N - 1)}, r"order must have"),
    "order not a permutation": (lambda p: {"order": np.zeros(N, dtype=np.int64)}, "order must"),
    "duplicate ids collide": (
        lambda p: {"duplicate_ids": np.zeros(N, dtype=np.int64)},
        "same duplicate id",
    ),
    "negative duplicate codes": (
        lambda p: {"duplicate_ids": -np.ones(N, dtype=np.int64)},
        "non-negative",
    ),
    "float batches": (lambda p: {"batches": p.batches.astype(np.float64)}, "integers"),
    "batches repeat a sample": (
        lambda p: {"batches": np.where(p.batches == p.batches[0, 0], p.batches[0, 1], p.batches)},
        "more than one batch",
    ),
    "batches out of range": (lambda p: {"batches": p.batches + 1000}, r"in \[0, 203\)"),
    "clusters removed": (lambda p: {"clusters": None}, "needs clusters"),
}


@pytest.mark.parametrize("case", list(ARRAY_CASES))
def test_tampered_arrays_are_refused(tmp_path, b3_plan, case):
    change, match = ARRAY_CASES[case]
    path = tampered(tmp_path, b3_plan, **change(b3_plan))
    with pytest.raises(ValueError, match=match):
        BatchPlan.load(path)


META_CASES = {
    "missing n_samples": ({"n_samples": None}, "n_samples"),
    "missing method": ({"method": None}, "method"),
    "missing batch_size": ({"batch_size": None}, "batch_size"),
    "string seed": ({"seed": "zero"}, "seed must be"),
    "negative seed": ({"seed": -3}, "seed must be"),
    "boolean n_samples": ({"n_samples": True}, "n_samples must be"),
    "unknown epoch rule": ({"epoch_rule": "backwards"}, "unknown epoch rule"),
    "epoch rule of the wrong type": ({"epoch_rule": 3}, "epoch_rule has the wrong type"),
    "params not an object": ({"params": [1, 2]}, "params has the wrong type"),
    "info not an object": ({"info": "x"}, "info has the wrong type"),
    "drop_last not a bool": ({"drop_last": "yes"}, "drop_last has the wrong type"),
    "batch_size disagrees with the batches": ({"batch_size": 21}, "columns but batch_size"),
    "n_samples disagrees with the batches": ({"n_samples": 400}, "n_samples=400"),
}


@pytest.mark.parametrize("case", list(META_CASES))
def test_tampered_metadata_is_refused(tmp_path, b3_plan, case):
    changes, match = META_CASES[case]
    path = tampered(tmp_path, b3_plan, meta=changes)
    if any(v is None for v in changes.values()):
        files = members(path)
        content = {k: v for k, v in meta_of(files).items() if v is not None}
        files["meta.npy"] = npy(np.array(json.dumps(content)))
        path = write(tmp_path / "missing.npz", files)
    with pytest.raises(ValueError, match=match):
        BatchPlan.load(path)


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ("[1, 2]", "JSON object"),
        ('"text"', "JSON object"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("{not json", "not valid JSON"),
    ],
)
def test_metadata_of_the_wrong_shape_is_refused(tmp_path, b3_plan, raw, match):
    path = tampered(tmp_path, b3_plan, raw_meta=raw)
    with pytest.raises(ValueError, match=match):
        BatchPlan.load(path)


def test_a_huge_n_samples_is_refused_before_allocating(tmp_path):
    plan = hardbatch.plan("random", n_samples=100, batch_size=10, seed=0)
    path = tampered(tmp_path, plan, meta={"n_samples": 10**12})
    tracemalloc.start()
    with pytest.raises(ValueError, match="n_samples=1000000000000"):
        BatchPlan.load(path)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 50 * 2**20


def test_inflating_members_are_refused(tmp_path):
    plan = hardbatch.plan("random", n_samples=100, batch_size=10, seed=0)
    files = members(plan.save(tmp_path / "plan.npz"))
    bomb = npy(np.zeros(2**23, dtype=np.int64))  # 64 MiB of zeros: deflates ~1000x
    extra = write(tmp_path / "extra.npz", {**files, "payload.npy": bomb}, compress=True)
    with pytest.raises(ValueError, match="unexpected member 'payload.npy'"):
        BatchPlan.load(extra)
    known = write(tmp_path / "known.npz", {**files, "order.npy": bomb}, compress=True)
    with pytest.raises(ValueError, match=f"more than {MAX_INFLATION}x"):
        BatchPlan.load(known)
    # A savez_compressed plan of the normal size still loads.
    small = write(tmp_path / "small.npz", files, compress=True)
    np.testing.assert_array_equal(BatchPlan.load(small).batches, plan.batches)


def test_a_header_that_lies_about_its_size_is_refused(tmp_path):
    plan = hardbatch.plan("random", n_samples=100, batch_size=10, seed=0)
    files = members(plan.save(tmp_path / "plan.npz"))
    files["batches.npy"] = files["batches.npy"][:-80]  # the header still says (10, 10)
    path = write(tmp_path / "short.npz", files)
    with pytest.raises(ValueError, match="header declares shape"):
        BatchPlan.load(path)


def test_pickled_members_are_refused(tmp_path):
    plan = hardbatch.plan("random", n_samples=100, batch_size=10, seed=0)
    files = members(plan.save(tmp_path / "plan.npz"))
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.array([{"x": 1}] * 100, dtype=object), allow_pickle=True)
    files["order.npy"] = buf.getvalue()
    path = write(tmp_path / "pickle.npz", files)
    with pytest.raises(ValueError, match="Python objects"):
        BatchPlan.load(path)


def test_random_bit_flips_never_load_a_different_plan(tmp_path, b3_plan):
    data = bytearray(b3_plan.save(tmp_path / "plan.npz").read_bytes())
    rng = np.random.default_rng(0)
    refused = 0
    for i in range(200):
        flipped = bytearray(data)
        pos = int(rng.integers(len(data)))
        flipped[pos] ^= 1 << int(rng.integers(8))
        path = tmp_path / f"flip{i}.npz"
        path.write_bytes(bytes(flipped))
        try:
            loaded = BatchPlan.load(path)
        except ValueError:
            refused += 1
            continue
        # Loaded anyway (a flip in an unused zip field): then it is the same plan.
        np.testing.assert_array_equal(loaded.batches, b3_plan.batches)
        np.testing.assert_array_equal(loaded.clusters, b3_plan.clusters)
        np.testing.assert_array_equal(loaded.hard_negatives, b3_plan.hard_negatives)
        assert (loaded.seed, loaded.n_samples) == (b3_plan.seed, b3_plan.n_samples)
    assert refused > 150
