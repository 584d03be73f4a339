"""DDP: two processes on the gloo backend (CPU), started like torchrun (RANK, WORLD_SIZE,
MASTER_ADDR, MASTER_PORT). Every rank must serve the same plan, embed only its shard, get a
contiguous share of each global batch, and merge recorded embeddings."""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from hardbatch.distributed import torch_ddp as ddp
from hardbatch.synthetic import make_planted_pairs

N, D, B, WORLD = 150, 8, 32, 2

WORKER = textwrap.dedent(
    """
    import pickle, sys
    import numpy as np, torch, torch.distributed as dist
    from hardbatch import HardBatchSampler
    from hardbatch.distributed import torch_ddp as ddp
    from hardbatch.synthetic import make_planted_pairs

    N, D, B = {N}, {D}, {B}
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    pairs = make_planted_pairs(N, D, group_size=10, seed=0)
    embedded = []

    def embed(idx):
        embedded.append(np.array(idx))
        return pairs.queries[idx], pairs.targets[idx]

    out = {{"rank": rank}}
    # Paper policy: embedding pass split over the ranks, plan broadcast from rank 0.
    sampler = HardBatchSampler(n_samples=N, batch_size=B, embed_fn=embed, quantile=0.95,
                               embed_batch_size=16)
    out["epoch"] = {{}}
    for epoch in range(2):
        sampler.set_epoch(epoch)
        out["len"] = len(sampler)
        out["epoch"][epoch] = [list(b) for b in sampler]
    out["embedded"] = np.concatenate(embedded)
    out["plan"] = sampler.plan_.batches

    # Recorded policy: each rank records its own share; the next epoch merges them.
    rec = HardBatchSampler(n_samples=N, batch_size=B, refresh="recorded", quantile=0.95)
    for epoch in range(2):
        rec.set_epoch(epoch)
        for batch in rec:
            rec.record(torch.tensor(pairs.queries[batch]) * (epoch + 1),
                       torch.tensor(pairs.targets[batch]) * (epoch + 1))
    rec.recorder.synchronize()
    out["recorded"] = (rec.recorder.queries_, rec.recorder.stamps_, rec.plan_.batches)

    # Helpers: gather shards of unequal size, broadcast an array and an object.
    shard = np.array_split(np.arange(7), 2)[rank]
    out["gathered"] = ddp.all_gather_shards(np.repeat(shard[:, None], 3, 1).astype("f4"), 7)
    out["broadcast"] = ddp.broadcast_array(np.arange(6).reshape(2, 3) if rank == 0 else None)
    out["object"] = ddp.broadcast_object({{"seed": 5}} if rank == 0 else None)
    # An unseeded sampler agrees on one seed.
    out["seed"] = HardBatchSampler(n_samples=N, batch_size=B, method="random", seed=None).seed
    with open(sys.argv[1] + f"/rank{{rank}}.pkl", "wb") as fh:
        pickle.dump(out, fh)
    dist.destroy_process_group()
    """
).format(N=N, D=D, B=B)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    script = tmp / "worker.py"
    script.write_text(WORKER)
    port = free_port()
    procs = []
    for rank in range(WORLD):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": str(WORLD),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, str(script), str(tmp)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )
        )
    for proc in procs:
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output.decode(errors="replace")[-3000:]
    results = []
    for rank in range(WORLD):
        with open(tmp / f"rank{rank}.pkl", "rb") as fh:
            results.append(pickle.load(fh))
    return results


def test_every_rank_serves_the_same_plan(ranks):
    np.testing.assert_array_equal(ranks[0]["plan"], ranks[1]["plan"])
    assert ranks[0]["len"] == ranks[1]["len"] == 5  # ceil(150 / 32) global batches


def test_each_rank_gets_its_share_of_each_global_batch(ranks):
    for epoch in range(2):
        shares = [r["epoch"][epoch] for r in ranks]
        assert len(shares[0]) == len(shares[1]) == 5
        glued = [list(a) + list(b) for a, b in zip(*shares, strict=True)]
        assert all(len(g) == B for g in glued[:-1]) and len(glued[-1]) == N % B
        ids = np.concatenate(glued)
        assert sorted(ids) == list(range(N))  # each sample once per epoch, over all ranks
        assert [len(b) for b in shares[0][:-1]] == [B // WORLD] * 4


def test_the_embedding_pass_is_split_across_ranks(ranks):
    a, b = ranks[0]["embedded"], ranks[1]["embedded"]
    assert len(a) == len(b) == N  # two epochs, half of N each
    for epoch in range(2):
        half = slice(epoch * N // 2, (epoch + 1) * N // 2)
        assert not np.intersect1d(a[half], b[half]).size
        assert sorted(np.concatenate([a[half], b[half]])) == list(range(N))


def test_recorded_embeddings_are_merged_across_ranks(ranks):
    pairs = make_planted_pairs(N, D, group_size=10, seed=0)
    for r in ranks:
        queries, stamps, _ = r["recorded"]
        np.testing.assert_allclose(queries, 2 * pairs.queries, rtol=1e-6)  # epoch 1's records
        assert (stamps > 0).all()
    np.testing.assert_array_equal(ranks[0]["recorded"][1], ranks[1]["recorded"][1])
    np.testing.assert_array_equal(ranks[0]["recorded"][2], ranks[1]["recorded"][2])


def test_collective_helpers(ranks):
    expected = np.repeat(np.arange(7)[:, None], 3, 1)
    for r in ranks:
        np.testing.assert_array_equal(r["gathered"], expected)
        np.testing.assert_array_equal(r["broadcast"], np.arange(6).reshape(2, 3))
        assert r["object"] == {"seed": 5}
    assert ranks[0]["seed"] == ranks[1]["seed"]


def test_helpers_are_identity_without_distributed():
    assert ddp.world_size() == 1 and ddp.rank() == 0 and not ddp.is_distributed()
    a = np.arange(4)
    assert ddp.broadcast_array(a) is a
    np.testing.assert_array_equal(ddp.all_reduce_sum_array(a), a)
    assert ddp.all_reduce_max_int(3) == 3
    assert ddp.broadcast_object("x") == "x"


LOCAL_WORKER = textwrap.dedent(
    """
    import datetime, pickle, sys
    import numpy as np, torch.distributed as dist
    from hardbatch import HardBatchSampler
    from hardbatch.checkpoint import load_state, save_state
    from hardbatch.synthetic import make_planted_pairs

    N, B = 150, 16
    # A short timeout: a collective that only one rank enters fails fast instead of hanging.
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=30))
    rank = dist.get_rank()
    pairs = make_planted_pairs(N, 8, group_size=10, seed=0)
    shift = np.random.default_rng(9).standard_normal((N, 8)).astype("f4")
    step = [0]

    def embed(idx):  # moves with every training step
        return pairs.queries[idx] + 0.2 * step[0] * shift[idx], pairs.targets[idx]

    CASES = {{
        "random": dict(method="random"),
        "gcbs_epoch": dict(method="gcbs", quantile=0.95, embed_fn=embed),
        "gcbs_recorded": dict(method="gcbs", quantile=0.95, refresh="recorded", embed_fn=embed),
        "gcbs_steps": dict(method="gcbs", top_k=5, refresh="steps", refresh_every=2,
                           embed_fn=embed),
        "b3": dict(method="b3", cluster_size=8, p=2, m=10, embed_fn=embed),
        "b3_groups": dict(method="b3", cluster_size=8, p=2, m=10, embed_fn=embed,
                          groups=np.arange(N) % 2, drop_last=True),
        "b3_given": dict(method="b3", cluster_size=8, p=2, m=10,
                         embeddings=(pairs.queries, pairs.targets)),
    }}

    def make(name):
        return HardBatchSampler(n_samples=N, batch_size=B, seed=3, **CASES[name])

    out = {{"len": {{}}, "resume": {{}}}}
    for name in CASES:  # only rank 0 asks for len(): no collective may run in it
        sampler = make(name)
        counted = len(sampler) if rank == 0 else None
        out["len"][name] = (counted, len(list(sampler)))

    def train(sampler, epochs, served, stop=None):
        for epoch in epochs:
            sampler.set_epoch(epoch)
            for k, batch in enumerate(sampler, start=1):
                served.append(batch)
                if sampler.recorder is not None:
                    sampler.record(*embed(np.asarray(batch)), batch)
                step[0] += 1
                if stop == (epoch, k):
                    save_state(sys.argv[1] + f"/state{{rank}}.pt", sampler.state_dict())
                    return

    for name in ("gcbs_epoch", "b3", "gcbs_recorded"):
        step[0] = 0
        full = []
        train(make(name), range(2), full)
        step[0] = 0
        cut = []
        train(make(name), range(2), cut, stop=(1, 2))
        resumed = make(name)  # a new process would start here, the model at the checkpoint
        resumed.load_state_dict(load_state(sys.argv[1] + f"/state{{rank}}.pt"))
        rest = []
        train(resumed, range(1, 2), rest)
        out["resume"][name] = (full, cut, rest)
    with open(sys.argv[1] + f"/local{{rank}}.pkl", "wb") as fh:
        pickle.dump(out, fh)
    dist.destroy_process_group()
    """
).format()


@pytest.fixture(scope="module")
def local_ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp_local")
    script = tmp / "worker.py"
    script.write_text(LOCAL_WORKER)
    port = free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp)],
            env={
                **os.environ,
                "RANK": str(rank),
                "WORLD_SIZE": str(WORLD),
                "LOCAL_RANK": str(rank),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "OMP_NUM_THREADS": "1",
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for rank in range(WORLD)
    ]
    for proc in procs:
        output, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, output.decode(errors="replace")[-3000:]
    return [pickle.loads((tmp / f"local{rank}.pkl").read_bytes()) for rank in range(WORLD)]


def test_len_on_one_rank_only_needs_no_collective(local_ranks):
    for name, (counted, served) in local_ranks[0]["len"].items():
        assert counted == served, name
        assert local_ranks[1]["len"][name] == (None, served)


def test_resume_mid_epoch_under_ddp_serves_the_uninterrupted_batches(local_ranks):
    for r in local_ranks:
        for name, (full, cut, rest) in r["resume"].items():
            assert cut == full[: len(cut)], name
            assert rest == full[len(cut) :], name
    # both ranks resumed the same global batches (their shares differ)
    for name in local_ranks[0]["resume"]:
        a, b = (r["resume"][name][2] for r in local_ranks)
        assert len(a) == len(b) and all(set(x).isdisjoint(y) for x, y in zip(a, b, strict=True))
