"""Pinned plan hashes: refactors must keep every plan bit-identical.

The hashes were recorded from the code before the Planner/refresh redesign (issue 10). A change
that moves one of them changes what users get for the same inputs, seeds and parameters; such a
change must be deliberate and re-record the hash in the same commit, saying why.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

import hardbatch
from hardbatch.synthetic import make_planted_pairs


def digest(*arrays: np.ndarray | None) -> str:
    h = hashlib.sha256()
    for a in arrays:
        if a is None:
            h.update(b"none")
            continue
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


@pytest.fixture(scope="module")
def planted():
    return make_planted_pairs(1000, 32, group_size=16, seed=7)


def sampler_epochs(sampler, epochs: int = 2) -> str:
    rows = []
    for e in range(epochs):
        sampler.set_epoch(e)
        rows.extend(np.asarray(b, dtype=np.int64) for b in sampler)
    return digest(np.concatenate(rows))


def recorded_epochs(X, Y, epochs: int = 3) -> str:
    sampler = hardbatch.HardBatchSampler(
        n_samples=len(X), batch_size=50, method="gcbs", seed=8, quantile=0.99, refresh="recorded"
    )
    rows = []
    for e in range(epochs):
        sampler.set_epoch(e)
        for b in sampler:
            ids = np.asarray(b, dtype=np.int64)
            rows.append(ids)
            sampler.record(X[ids] * (1 + e), Y[ids], ids)
    return digest(np.concatenate(rows))


def _cases(planted):
    X, Y, groups = planted.queries, planted.targets, planted.groups
    dup = np.arange(len(X)) % 97
    return {
        "random": lambda: (
            (p := hardbatch.plan("random", n_samples=1000, batch_size=64, seed=3))
            and digest(p.batches, p.for_epoch(1), p.for_epoch(2))
        ),
        "random_drop_last": lambda: (
            (p := hardbatch.plan("random", n_samples=1000, batch_size=64, seed=3, drop_last=True))
            and digest(p.batches, p.for_epoch(1))
        ),
        "gcbs_quantile": lambda: (
            (p := hardbatch.plan("gcbs", X, Y, batch_size=64, seed=0, quantile=0.99))
            and digest(p.batches, p.order, p.for_epoch(1))
        ),
        "gcbs_quantile_0999": lambda: (
            (p := hardbatch.plan("gcbs", X, Y, batch_size=64, seed=0, quantile=0.999))
            and digest(p.batches, p.order)
        ),
        "gcbs_top_k": lambda: (
            (p := hardbatch.plan("gcbs", X, Y, batch_size=32, seed=1, top_k=8, drop_last=True))
            and digest(p.batches, p.order)
        ),
        "gcbs_faiss": lambda: (
            (p := hardbatch.plan("gcbs", X, Y, batch_size=64, seed=0, top_k=8, backend="faiss"))
            and digest(p.batches, p.order)
        ),
        "gcbs_guard": lambda: (
            (
                p := hardbatch.plan(
                    "gcbs", X, Y, batch_size=64, seed=0, quantile=0.99, duplicate_ids=dup
                )
            )
            and digest(p.batches, p.order)
        ),
        "b3": lambda: (
            (
                p := hardbatch.plan(
                    "b3", X, Y, batch_size=64, cluster_size=16, p=3, m=20, seed=0, hard_negatives=3
                )
            )
            and digest(p.clusters, p.batches, p.for_epoch(1), p.for_epoch(2), p.hard_negatives)
        ),
        "b3_leiden_groups": lambda: (
            (
                p := hardbatch.plan(
                    "b3",
                    X,
                    Y,
                    batch_size=32,
                    cluster_size=16,
                    p=2,
                    m=20,
                    seed=0,
                    partitioner="leiden",
                    groups=groups % 2,
                )
            )
            and digest(p.clusters, p.cluster_groups, p.batches, p.for_epoch(1))
        ),
        "b3_faiss_labels": lambda: (
            (
                p := hardbatch.plan(
                    "b3",
                    X,
                    Y,
                    batch_size=64,
                    cluster_size=32,
                    p=2,
                    m=30,
                    seed=1,
                    backend="faiss",
                    hard_negatives=2,
                    labels=groups,
                )
            )
            and digest(p.clusters, p.batches, p.hard_negatives)
        ),
        "b3_guard": lambda: (
            (
                p := hardbatch.plan(
                    "b3", X, Y, batch_size=64, cluster_size=16, p=3, m=20, seed=0, duplicate_ids=dup
                )
            )
            and digest(p.clusters, p.batches, p.for_epoch(1))
        ),
        "sampler_gcbs_epoch": lambda: sampler_epochs(
            hardbatch.HardBatchSampler(
                batch_size=50,
                method="gcbs",
                seed=4,
                quantile=0.99,
                embed_fn=lambda ids: (X[ids], Y[ids]),
                n_samples=1000,
            )
        ),
        "sampler_gcbs_steps": lambda: sampler_epochs(
            hardbatch.HardBatchSampler(
                batch_size=50,
                method="gcbs",
                seed=4,
                top_k=8,
                refresh="steps",
                refresh_every=5,
                embed_fn=lambda ids: (X[ids], Y[ids]),
                n_samples=1000,
            )
        ),
        "sampler_b3_shuffle": lambda: sampler_epochs(
            hardbatch.HardBatchSampler(
                batch_size=64,
                method="b3",
                seed=5,
                cluster_size=16,
                p=3,
                m=20,
                embeddings=(X, Y),
                shuffle_batches=True,
            ),
            epochs=3,
        ),
        "sampler_gcbs_recorded": lambda: recorded_epochs(X, Y),
        "sampler_random_sharded": lambda: sampler_epochs(
            hardbatch.HardBatchSampler(
                n_samples=1000, batch_size=64, method="random", seed=6, num_replicas=2, rank=1
            )
        ),
    }


PINNED = {
    "b3": "3bb041f8c78e5219",
    "b3_faiss_labels": "6589240a3374dc18",
    "b3_guard": "09b8d1c4cd97685c",
    "b3_leiden_groups": "d5978e9aa74a6439",
    "gcbs_faiss": "b1c439713c7f2325",
    "gcbs_guard": "caa808ef2f20871a",
    "gcbs_quantile": "3374a9ed21c7e714",
    "gcbs_quantile_0999": "1114bce91ef6570a",
    "gcbs_top_k": "1dde31a96904836a",
    "random": "2b59b03efe40ff11",
    "random_drop_last": "5a3bdd0a28110c4c",
    "sampler_b3_shuffle": "de3c2308ede7d495",
    "sampler_gcbs_epoch": "6c6fc1c96a1a3e2b",
    "sampler_gcbs_recorded": "9d13fc06b1c56770",
    "sampler_gcbs_steps": "319294d83bb2dae6",
    "sampler_random_sharded": "34c4790bba854391",
}


@pytest.mark.parametrize("case", sorted(PINNED))
def test_plan_hash_is_pinned(planted, case):
    assert _cases(planted)[case]() == PINNED[case]


if __name__ == "__main__":  # re-record: python tests/test_plan_hashes.py
    planted = make_planted_pairs(1000, 32, group_size=16, seed=7)
    for name, fn in sorted(_cases(planted).items()):
        print(f"    {name!r}: {fn()!r},")
