"""hardbatch.io.export: rows in plan order for every output format, checked against a slow
reference, and a tiny model trained from the exported file with a sequential DataLoader."""

from __future__ import annotations

import csv
import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import hardbatch
from hardbatch.io import TextPairs, export_plan, iter_export_rows, read_pairs

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
datasets = pytest.importorskip("datasets")

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "data" / "pairs.jsonl"
SUFFIX = {"jsonl": ".jsonl", "csv": ".csv", "tsv": ".tsv", "parquet": ".parquet", "hf": ""}


def reference_rows(plan, epochs):
    """Slow reference: ``(sample, epoch, batch)`` of every exported row, from the plan's
    batch matrix of each epoch, padding skipped."""
    out = []
    for e in range(epochs):
        for b, row in enumerate(plan.for_epoch(e)):
            out += [(int(i), e, b) for i in row if i != hardbatch.PAD]
    return out


def make_pairs(n, with_extra=True):
    extra = {"gid": [i % 3 for i in range(n)], "neg": [[f"n{i}"] for i in range(n)]}
    return TextPairs.from_lists(
        [f"query {i}" for i in range(n)],
        [f"target {i}" for i in range(n)],
        extra if with_extra else None,
    )


def read_back(path, fmt):
    """Rows of an exported file as dicts (CSV cells are text)."""
    if fmt == "jsonl":
        return [json.loads(line) for line in open(path)]
    if fmt in ("csv", "tsv"):
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh, delimiter="," if fmt == "csv" else "\t"))
    if fmt == "parquet":
        return pq.read_table(path).to_pylist()
    return datasets.load_from_disk(str(path)).to_list()


# --------------------------------------------------------------------------- order
@pytest.mark.parametrize("method", ["random", "gcbs"])
@pytest.mark.parametrize("drop_last", [False, True])
def test_iter_export_rows_follow_the_reference(make_pair, method, drop_last):
    n, k, epochs = 53, 8, 3
    q, t = make_pair(n, 8, seed=2)
    plan = hardbatch.plan(method, q, t, batch_size=k, seed=1, drop_last=drop_last)
    pairs = make_pairs(n)
    rows = list(iter_export_rows(plan, pairs, epochs=epochs, index_column="row"))
    assert [(r["row"], r["epoch"], r["batch"]) for r in rows] == reference_rows(plan, epochs)
    assert list(rows[0]) == ["query", "target", "gid", "neg", "row", "epoch", "batch"]
    for r in rows:
        i = r["row"]
        assert r["query"] == f"query {i}" and r["target"] == f"target {i}" and r["gid"] == i % 3
    for e in range(epochs):
        ids = sorted(r["row"] for r in rows if r["epoch"] == e)
        if drop_last:  # the N % k leftovers of the epoch are missing, nothing else
            assert len(ids) == n - n % k and len(set(ids)) == len(ids)
        else:
            assert ids == list(range(n))  # every row exactly once per epoch
    if method == "random":  # reshuffled each epoch
        first = [r["row"] for r in rows if r["epoch"] == 0]
        second = [r["row"] for r in rows if r["epoch"] == 1]
        assert first != second
    elif not drop_last:  # GCBS from fixed embeddings: a static plan
        assert plan.for_epoch(1) is plan.batches
    else:  # the same order, but the left-out samples take turns
        assert not np.array_equal(plan.for_epoch(1), plan.batches)


def test_b3_regroups_clusters_each_epoch(make_pair):
    pytest.importorskip("pymetis")
    q, t = make_pair(96, 8, seed=3)
    plan = hardbatch.plan("b3", q, t, batch_size=8, seed=0, p=2, m=6, cluster_size=4)
    rows = list(iter_export_rows(plan, make_pairs(96), epochs=2, index_column="i"))
    assert [(r["i"], r["epoch"], r["batch"]) for r in rows] == reference_rows(plan, 2)
    assert not np.array_equal(plan.for_epoch(0), plan.for_epoch(1))


# --------------------------------------------------------------------------- formats
@pytest.mark.parametrize("fmt", list(SUFFIX))
def test_every_output_format_holds_the_reference_rows(tmp_path, make_pair, fmt):
    n = 30
    q, t = make_pair(n, 8)
    plan = hardbatch.plan("random", q, t, batch_size=6, seed=0)
    pairs = make_pairs(n)
    out = export_plan(plan, pairs, tmp_path / f"train{SUFFIX[fmt]}", epochs=2, format=fmt)
    rows = read_back(out, fmt)
    assert list(rows[0]) == ["query", "target", "gid", "neg", "epoch", "batch"]
    ids = [int(r["query"].split()[1]) for r in rows]
    got = [(i, int(r["epoch"]), int(r["batch"])) for i, r in zip(ids, rows, strict=True)]
    assert got == reference_rows(plan, 2)
    first = rows[0]
    i = ids[0]
    if fmt in ("csv", "tsv"):  # lists become JSON text
        assert first["neg"] == json.dumps([f"n{i}"]) and first["gid"] == str(i % 3)
    else:
        assert first["neg"] == [f"n{i}"] and first["gid"] == i % 3
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".hardbatch-export-*"))


@pytest.mark.parametrize("fmt", list(SUFFIX))
def test_default_output_format_is_the_inputs(tmp_path, make_pair, fmt):
    from test_io_pairs import ROWS, write

    src = write(tmp_path / f"in{SUFFIX[fmt]}", ROWS, fmt)
    plan = hardbatch.plan("random", n_samples=4, batch_size=2, seed=0)
    out = export_plan(plan, src, tmp_path / "out_without_suffix", columns=("question", "answer"))
    rows = read_back(out, fmt)
    assert [r["question"] for r in rows] == [ROWS[i]["question"] for i in plan.batches.ravel()]
    if fmt in ("parquet", "hf"):  # the input's column types are kept
        assert [r["id"] for r in rows] == [ROWS[i]["id"] for i in plan.batches.ravel()]
    # A known suffix of the output wins over the input's format; format= over both.
    out = export_plan(plan, src, tmp_path / "o.parquet", columns=("question", "answer"))
    assert pq.read_table(out).num_rows == 4
    out = export_plan(
        plan, src, tmp_path / "o2.parquet", columns=("question", "answer"), format="jsonl"
    )
    assert len(read_back(out, "jsonl")) == 4


def test_hf_input_keeps_its_features(tmp_path):
    ds = datasets.Dataset.from_dict(
        {"q": ["a b", "c d", "e f", "g h"], "t": ["1", "2", "3", "4"], "label": [0, 1, 1, 0]},
        features=datasets.Features(
            q=datasets.Value("string"),
            t=datasets.Value("string"),
            label=datasets.ClassLabel(names=["neg", "pos"]),
        ),
    )
    ds.save_to_disk(str(tmp_path / "in"))
    plan = hardbatch.plan("random", n_samples=4, batch_size=2, seed=3)
    export_plan(plan, tmp_path / "in", tmp_path / "out", epochs=2)
    out = datasets.load_from_disk(str(tmp_path / "out"))
    assert out.features["label"].names == ["neg", "pos"]
    assert out.features["epoch"] == datasets.Value("int64")
    assert out.num_rows == 8


def test_parquet_row_groups(tmp_path, make_pair):
    plan = hardbatch.plan("random", n_samples=50, batch_size=5, seed=0)
    out = export_plan(plan, make_pairs(50), tmp_path / "o.parquet", row_group_size=7, epochs=2)
    meta = pq.ParquetFile(out).metadata
    assert meta.num_rows == 100 and meta.num_row_groups == -(-100 // 7)


def test_plan_and_pairs_from_files(tmp_path):
    pairs = read_pairs(EXAMPLE)
    plan = hardbatch.plan("random", n_samples=len(pairs), batch_size=50, seed=0)
    plan.save(tmp_path / "plan.npz")
    out = export_plan(tmp_path / "plan.npz", EXAMPLE, tmp_path / "train.jsonl", index_column="i")
    rows = read_back(out, "jsonl")
    assert [r["i"] for r in rows] == plan.batches.ravel().tolist()
    assert rows[0]["query"] == pairs.queries[rows[0]["i"]]


# --------------------------------------------------------------------------- short batches
def test_warns_when_a_short_batch_is_followed_by_more_rows(tmp_path):
    plan = hardbatch.plan("random", n_samples=10, batch_size=4, seed=0)  # 4 + 4 + 2
    pairs = make_pairs(10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one epoch: the short batch is last
        export_plan(plan, pairs, tmp_path / "one.jsonl")
    with pytest.warns(UserWarning, match="batch 2 of epoch 0 has 2 rows"):
        export_plan(plan, pairs, tmp_path / "two.jsonl", epochs=2)
    dropped = hardbatch.plan("random", n_samples=10, batch_size=4, seed=0, drop_last=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        export_plan(dropped, pairs, tmp_path / "d.jsonl", epochs=3)


# --------------------------------------------------------------------------- errors
def test_errors(tmp_path):
    pairs = make_pairs(10)
    plan = hardbatch.plan("random", n_samples=10, batch_size=5, seed=0)
    with pytest.raises(ValueError, match="plan is for 10 samples but the pairs have 9 rows"):
        export_plan(plan, make_pairs(9), tmp_path / "o.jsonl")
    with pytest.raises(ValueError, match="epochs must be a positive integer"):
        export_plan(plan, pairs, tmp_path / "o.jsonl", epochs=0)
    with pytest.raises(ValueError, match="unknown format 'xlsx'"):
        export_plan(plan, pairs, tmp_path / "o.jsonl", format="xlsx")
    with pytest.raises(ValueError, match="row_group_size must be >= 1"):
        export_plan(plan, pairs, tmp_path / "o.parquet", row_group_size=0)
    with pytest.raises(ValueError, match=r"\['gid'\] already exist"):
        export_plan(plan, pairs, tmp_path / "o.jsonl", index_column="gid")
    clash = TextPairs.from_lists(pairs.queries, pairs.targets, {"epoch": [0] * 10})
    with pytest.raises(ValueError, match=r"\['epoch'\] already exist"):
        list(iter_export_rows(plan, clash))
    with pytest.raises(ValueError, match="already exist"):
        export_plan(plan, pairs, tmp_path / "o.jsonl", index_column="batch")
    with pytest.raises(ValueError, match="cannot tell the format"):
        export_plan(plan, pairs, tmp_path / "o.xlsx")
    assert not list(tmp_path.iterdir())  # nothing written by a failed call


def test_mismatch_hints_at_dedupe(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"q": f"q{i % 4}", "t": "t"}) + "\n" for i in range(6)))
    with pytest.warns(UserWarning, match="duplicate"):
        pairs = read_pairs(path)
    plan = hardbatch.plan("random", n_samples=4, batch_size=2, seed=0)
    with pytest.raises(ValueError, match="read them with dedupe=True"):
        export_plan(plan, pairs, tmp_path / "o.jsonl")
    out = export_plan(plan, path, tmp_path / "o.jsonl", dedupe=True)
    assert len(read_back(out, "jsonl")) == 4


# --------------------------------------------------------------------------- train from the file
def hashed_tokens(texts, buckets):
    """Token ids for an EmbeddingBag: each word hashed into ``buckets`` (stable across runs)."""
    ids, offsets = [], []
    for text in texts:
        offsets.append(len(ids))
        words = text.lower().split() or [""]
        ids += [int(hashlib.md5(w.encode()).hexdigest()[:8], 16) % buckets for w in words]
    return torch.tensor(ids), torch.tensor(offsets)


class ExportedRows(torch.utils.data.Dataset):
    """The exported JSON Lines file, row by row, as a trainer without an adapter reads it."""

    def __init__(self, path):
        self.rows = [json.loads(line) for line in open(path)]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        r = self.rows[i]
        return r["query"], r["target"], r["epoch"], r["batch"]


def test_a_tiny_model_trained_from_the_export_sees_the_plans_batches(tmp_path):
    pairs = read_pairs(EXAMPLE)
    n, k, epochs, buckets = len(pairs), 40, 2, 4096
    # Plan with a frozen "teacher": hashed bag-of-words features of the texts.
    teacher = torch.nn.EmbeddingBag(buckets, 32, mode="mean")
    torch.manual_seed(0)
    with torch.no_grad():
        q = teacher(*hashed_tokens(pairs.queries, buckets)).numpy()
        t = teacher(*hashed_tokens(pairs.targets, buckets)).numpy()
    plan = hardbatch.plan("b3", q, t, batch_size=k, seed=0, p=5, m=20, cluster_size=8)
    assert n % k == 0  # full batches only: a fixed-size sequential loader stays aligned
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = export_plan(plan, pairs, tmp_path / "train.jsonl", epochs=epochs)

    index = {(a, b): i for i, (a, b) in enumerate(zip(pairs.queries, pairs.targets, strict=True))}
    student = torch.nn.EmbeddingBag(buckets, 16, mode="mean")
    opt = torch.optim.SGD(student.parameters(), lr=0.5)
    loader = torch.utils.data.DataLoader(
        ExportedRows(out), batch_size=plan.batch_size, shuffle=False
    )
    seen, losses = {e: [] for e in range(epochs)}, []
    for queries, targets, epoch, batch in loader:
        assert len(set(epoch.tolist())) == 1 and len(set(batch.tolist())) == 1
        seen[int(epoch[0])].append([index[(a, b)] for a, b in zip(queries, targets, strict=True)])
        zq = torch.nn.functional.normalize(student(*hashed_tokens(queries, buckets)), dim=1)
        zt = torch.nn.functional.normalize(student(*hashed_tokens(targets, buckets)), dim=1)
        loss = torch.nn.functional.cross_entropy(zq @ zt.T / 0.05, torch.arange(len(queries)))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    for e in range(epochs):
        assert seen[e] == plan.for_epoch(e).tolist()  # exactly the plan's batches, in order
    assert seen[0] != seen[1]  # B3 regrouped its clusters for epoch 1
    assert np.mean(losses[-5:]) < np.mean(losses[:5])  # and the student learned from them
