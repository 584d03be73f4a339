"""``hardbatch embed``, ``plan --data`` and ``export`` (the text-pair options of
``hardbatch.cli.data``): the two-command flow on the example pairs with a tiny
sentence-transformers model saved locally (no download), the error lines, progress bars, and
the README's recipe for a trainer without an adapter."""

from __future__ import annotations

import collections
import json
import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

import hardbatch
from hardbatch import cli
from hardbatch.batching import iter_rows
from hardbatch.io import read_pairs
from hardbatch.plans import BatchPlan

pytest.importorskip("sentence_transformers")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from sentence_transformers import SentenceTransformer  # noqa: E402
from tiny_bert import save_tiny_sentence_transformer  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "data" / "pairs.jsonl"
HIDDEN, BATCH = 16, 40  # 600 pairs: 15 full batches, so a fixed-size loader stays aligned


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A saved sentence-transformers model (1-layer BERT, hidden 16, mean pooling) whose
    vocabulary is the 300 most common words of the example pairs, so texts differ."""
    counts = collections.Counter()
    for line in EXAMPLE.read_text().splitlines():
        row = json.loads(line)
        counts.update(re.findall(r"[a-z]+", (row["query"] + " " + row["target"]).lower()))
    words = [w for w, _ in counts.most_common(300)]
    return save_tiny_sentence_transformer(
        tmp_path_factory.mktemp("bert"), tmp_path_factory.mktemp("st_model"), words
    )


@pytest.fixture(scope="module")
def planned(model_dir, tmp_path_factory):
    """``hardbatch plan --data pairs.jsonl --model DIR -o plan.npz`` (gcbs), run once."""
    folder = tmp_path_factory.mktemp("planned")
    out = folder / "plan.npz"
    args = ["plan", "--data", EXAMPLE, "--model", model_dir, "--batch-size", BATCH, "-o", out]
    assert run(*args, "--no-progress") == 0
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The first 120 example pairs (embedding all 600 again and again would be slow)."""
    path = tmp_path_factory.mktemp("small") / "small.jsonl"
    path.write_text("\n".join(EXAMPLE.read_text().splitlines()[:120]) + "\n")
    return path


def run(*args) -> int:
    return cli.main([str(a) for a in args])


def error_line(capsys) -> str:
    """The one stderr line of a failed command (no traceback)."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("hardbatch: error: "), err
    assert "\n" not in err and "Traceback" not in err
    return err


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def reference_rows(plan: BatchPlan, pairs, epochs: int) -> list[tuple[int, int, int]]:
    """(epoch, batch, row) of the export, the obvious way: for_epoch(e), batch by batch."""
    return [
        (e, b, int(i))
        for e in range(epochs)
        for b, ids in enumerate(iter_rows(plan.for_epoch(e)))
        for i in ids
    ]


# --------------------------------------------------------------------------- embed
def test_embed_writes_float16_and_reuses_its_cache(model_dir, small, tmp_path, capsys):
    out = tmp_path / "emb"
    args = ["embed", "--data", small, "--model", model_dir, "-o", out, "--batch-size", 32]
    assert run(*args, "--chunk-size", 50) == 0
    stdout = capsys.readouterr().out
    assert "120 pairs" in stdout and "dimension 16" in stdout
    q, t = np.load(out / "queries.npy"), np.load(out / "targets.npy")
    assert q.dtype == t.dtype == np.float16 and q.shape == t.shape == (120, HIDDEN)
    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    pairs = read_pairs(small)
    expected = model.encode(pairs.queries[:5], normalize_embeddings=True)
    np.testing.assert_allclose(q[:5].astype(np.float32), expected, atol=2e-3)
    assert len({row.tobytes() for row in q}) > 100  # the vocabulary tells the texts apart

    stamp = (out / "queries.npy").stat().st_mtime_ns
    assert run(*args, "--chunk-size", 50) == 0  # same key: the finished files are kept
    assert (out / "queries.npy").stat().st_mtime_ns == stamp
    assert run(*args, "--chunk-size", 50, "--no-normalize") == 0  # another key: re-encoded
    err = capsys.readouterr().err
    assert "hardbatch: warning: embedding cache" in err and "normalize" in err
    raw = np.load(out / "queries.npy").astype(np.float32)
    assert not np.allclose(np.linalg.norm(raw, axis=1), 1, atol=1e-2)


def test_embed_shows_progress_by_default(model_dir, tmp_path, capsys):
    tiny = tmp_path / "tiny.csv"
    tiny.write_text("q,t\nthe default value,def value\nparse the source,def parse\n")
    assert run("embed", "--data", tiny, "--model", model_dir, "-o", tmp_path / "a") == 0
    assert "embed" in capsys.readouterr().err  # the tqdm bar
    assert (
        run("embed", "--data", tiny, "--model", model_dir, "-o", tmp_path / "b", "--no-progress")
        == 0
    )
    assert "embed" not in capsys.readouterr().err  # (transformers' own loading bar may show)


# --------------------------------------------------------------------------- plan --data, export
def test_plan_from_text_pairs_is_the_library_plan_on_the_cached_embeddings(planned, capsys):
    cache = planned.with_suffix(".embeddings")
    q, t = np.load(cache / "queries.npy"), np.load(cache / "targets.npy")
    expected = hardbatch.plan("gcbs", q, t, batch_size=BATCH, seed=0)
    got = BatchPlan.load(planned, n_samples=600)
    np.testing.assert_array_equal(got.batches, expected.batches)


def test_plan_reuses_the_embedding_cache(planned, model_dir, tmp_path, monkeypatch, capsys):
    from hardbatch.io import embed as embed_mod

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded although the cache is complete")

    monkeypatch.setattr(embed_mod, "_load_model", no_model)
    out = tmp_path / "again.npz"
    cache = planned.with_suffix(".embeddings")
    args = ["plan", "--data", EXAMPLE, "--model", model_dir, "--batch-size", BATCH]
    assert run(*args, "--cache-dir", cache, "-o", out, "--no-progress") == 0
    assert f"embeddings {cache}" in capsys.readouterr().out
    np.testing.assert_array_equal(BatchPlan.load(out).batches, BatchPlan.load(planned).batches)


@pytest.mark.parametrize("fmt, suffix", [("jsonl", ".jsonl"), ("csv", ".csv")])
def test_export_writes_every_row_once_per_epoch_in_plan_order(planned, tmp_path, fmt, suffix):
    out = tmp_path / f"train{suffix}"
    args = ["export", planned, "--data", EXAMPLE, "--epochs", 3, "-o", out]
    assert run(*args, "--index-column", "row", "--no-progress") == 0
    if fmt == "jsonl":
        rows = read_jsonl(out)
    else:
        import csv

        with open(out, newline="") as fh:
            rows = [{k: v for k, v in r.items()} for r in csv.DictReader(fh)]
    plan = BatchPlan.load(planned)
    pairs = read_pairs(EXAMPLE)
    got = [(int(r["epoch"]), int(r["batch"]), int(r["row"])) for r in rows]
    assert got == reference_rows(plan, pairs, 3)
    for e in range(3):  # every row exactly once per epoch
        assert sorted(i for ep, _, i in got if ep == e) == list(range(600))
    for r in rows:  # the row's own texts travel with it
        i = int(r["row"])
        assert (r["query"], r["target"], r["module"]) == (
            pairs.queries[i],
            pairs.targets[i],
            pairs.extra["module"][i],
        )


def test_export_format_option_and_progress(planned, tmp_path, capsys):
    out = tmp_path / "train.out"
    assert (
        run("export", planned, "--data", EXAMPLE, "--epochs", 1, "-o", out, "--format", "csv") == 0
    )
    assert out.read_text().splitlines()[0] == "query,target,module,epoch,batch"
    assert "export" in capsys.readouterr().err  # the bar is on by default


def test_b3_groups_and_duplicate_ids_from_columns(planned, model_dir, tmp_path):
    # Two datasets of 300 rows each (a module has too few rows for B3's rank window).
    data = tmp_path / "two.jsonl"
    rows = read_jsonl(EXAMPLE)
    for i, row in enumerate(rows):
        row["dataset"] = "first" if i < 300 else "second"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    out = tmp_path / "b3.npz"
    cache = planned.with_suffix(".embeddings")  # same texts: the extra column changes nothing
    args = ["plan", "--method", "b3", "--data", data, "--model", model_dir, "--cache-dir", cache]
    options = ["--batch-size", BATCH, "--groups", "dataset", "--no-progress", "-o", out]
    assert run(*args, *options, "--p", 5, "--m", 20, "--cluster-size", 8) == 0
    q, t = np.load(cache / "queries.npy"), np.load(cache / "targets.npy")
    pairs = read_pairs(data)
    expected = hardbatch.plan(
        "b3",
        q,
        t,
        batch_size=BATCH,
        seed=0,
        p=5,
        m=20,
        cluster_size=8,
        groups=pairs.codes("dataset"),
    )
    np.testing.assert_array_equal(BatchPlan.load(out).batches, expected.batches)
    half = np.arange(600) >= 300
    for ids in BatchPlan.load(out).iter_batches():  # batches stay inside their dataset
        assert len(set(half[ids].tolist())) == 1

    guarded = tmp_path / "guarded.npz"
    args = ["plan", "--data", data, "--model", model_dir, "--cache-dir", cache, "--no-progress"]
    assert run(*args, "--batch-size", 8, "--duplicate-ids", "module", "-o", guarded) == 0
    codes = pairs.codes("module")
    for ids in BatchPlan.load(guarded).iter_batches():  # no two rows of a module share a batch
        assert len(set(codes[ids].tolist())) == len(ids)


def test_random_plan_from_text_pairs_needs_no_model(tmp_path):
    out = tmp_path / "random.npz"
    assert run("plan", "--method", "random", "--data", EXAMPLE, "-o", out, "--batch-size", 50) == 0
    assert BatchPlan.load(out).n_samples == 600
    assert not out.with_suffix(".embeddings").exists()


def test_duplicates_warn_in_one_line_and_dedupe_must_match(tmp_path, capsys):
    data = tmp_path / "dup.jsonl"
    lines = EXAMPLE.read_text().splitlines()[:50]
    data.write_text("\n".join(lines + lines[:3]) + "\n")
    plan = tmp_path / "p.npz"
    args = ["plan", "--method", "random", "--data", data, "--batch-size", 10, "-o", plan]
    assert run(*args) == 0
    err = capsys.readouterr().err
    assert re.search(r"^hardbatch: warning: 3 duplicate", err, re.M)
    assert run(*args, "--dedupe") == 0
    assert "3 duplicate pairs dropped" in capsys.readouterr().out
    assert BatchPlan.load(plan).n_samples == 50
    out = tmp_path / "train.jsonl"
    assert (
        run("export", plan, "--data", data, "--epochs", 1, "-o", out) == 2
    )  # read without --dedupe
    assert "dedupe" in error_line_after_warning(capsys)
    assert run("export", plan, "--data", data, "--dedupe", "--epochs", 1, "-o", out) == 0
    assert len(read_jsonl(out)) == 50


def error_line_after_warning(capsys) -> str:
    """The error line of a command that also warned (the warning line comes first)."""
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[-1].startswith("hardbatch: error: ") and "Traceback" not in lines[-1]
    assert all(line.startswith("hardbatch: ") for line in lines)
    return lines[-1]


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    "extra, words",
    [
        (["--columns", "query,nope"], ["'nope'", "columns"]),
        (["--queries", "X.npy"], ["mutually exclusive"]),
        (["--groups", "module"], ["--groups", "b3"]),
        (["--duplicate-ids", "nope"], ["'nope'", "module"]),
        (["--model", "no/such-model-here"], ["no/such-model-here", "cache"]),
    ],
)
def test_plan_data_errors(model_dir, tmp_path, capsys, extra, words):
    args = ["plan", "--data", EXAMPLE, "-o", tmp_path / "p.npz"]
    if "--model" not in extra:
        args += ["--model", model_dir]
    assert run(*args, *extra) == 2
    err = error_line(capsys)
    for word in words:
        assert word in err, err
    assert not (tmp_path / "p.embeddings").exists()  # every check comes before the encoding


def test_bad_files(model_dir, tmp_path, capsys):
    missing = tmp_path / "missing.jsonl"
    assert run("embed", "--data", missing, "--model", model_dir, "-o", tmp_path / "e") == 2
    assert "not found" in error_line(capsys)
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"query": "a", "target": "b"}\n{"query": \n')
    assert run("embed", "--data", broken, "--model", model_dir, "-o", tmp_path / "e") == 2
    assert "line 2" in error_line(capsys)
    odd = tmp_path / "pairs.txt"
    odd.write_text("a b\n")
    assert run("plan", "--method", "random", "--data", odd, "-o", tmp_path / "p.npz") == 2
    assert "suffix" in error_line(capsys)
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"query": "a", "target": ""}\n')
    assert run("plan", "--method", "random", "--data", empty, "-o", tmp_path / "p.npz") == 2
    assert "target" in error_line(capsys)


def test_other_errors(planned, model_dir, tmp_path, capsys):
    assert run("plan", "--data", EXAMPLE, "-o", tmp_path / "p.npz") == 2  # gcbs without --model
    assert "--model" in error_line(capsys)
    x = tmp_path / "X.npy"
    np.save(x, np.zeros((4, 2), np.float32))
    assert (
        run("plan", "--queries", x, "--targets", x, "--model", model_dir, "-o", tmp_path / "p.npz")
        == 2
    )
    assert "--model goes with --data" in error_line(capsys)
    assert run("export", planned, "--data", EXAMPLE, "--epochs", 0, "-o", tmp_path / "t.jsonl") == 2
    assert "--epochs" in error_line(capsys)
    short = tmp_path / "short.jsonl"
    short.write_text("\n".join(EXAMPLE.read_text().splitlines()[:10]) + "\n")
    assert run("export", planned, "--data", short, "--epochs", 1, "-o", tmp_path / "t.jsonl") == 2
    assert "600 samples" in error_line(capsys)
    assert (
        run(
            "export",
            tmp_path / "nope.npz",
            "--data",
            EXAMPLE,
            "--epochs",
            1,
            "-o",
            tmp_path / "t.jsonl",
        )
        == 2
    )
    assert "plan file not found" in error_line(capsys)
    assert not (tmp_path / "t.jsonl").exists()


def test_help_of_the_new_commands(capsys):
    for command in ("embed", "export"):
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args([command, "--help"])
        assert f"usage: hardbatch {command}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["plan", "--help"])
    text = capsys.readouterr().out
    assert "--data" in text and "--cache-dir" in text and "--embed-batch-size" in text


# --------------------------------------------------------------------------- the README recipe
def test_sentence_transformers_trainer_reads_the_export_in_plan_batches(model_dir, small, tmp_path):
    """The README's recipe: a sequential batch sampler for SentenceTransformerTrainer, the
    export's extra columns removed; the trainer's batches are the plan's, epoch after epoch
    (a random plan reshuffles every epoch, so the two epochs differ)."""
    datasets = pytest.importorskip("datasets")
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from torch.utils.data import SequentialSampler

    try:  # sentence-transformers >= 6 layout
        from sentence_transformers.base.sampler import DefaultBatchSampler
        from sentence_transformers.sentence_transformer.losses import (
            MultipleNegativesRankingLoss,
        )
    except ImportError:  # 3.x - 5.x
        from sentence_transformers.losses import MultipleNegativesRankingLoss
        from sentence_transformers.sampler import DefaultBatchSampler

    plan_file, out = tmp_path / "plan.npz", tmp_path / "train.jsonl"
    assert (
        run("plan", "--method", "random", "--data", small, "--batch-size", BATCH, "-o", plan_file)
        == 0
    )
    assert run("export", plan_file, "--data", small, "--epochs", 2, "-o", out, "--no-progress") == 0
    seen: list[list[int]] = []

    class Recording(DefaultBatchSampler):  # records the index lists the trainer is given
        def __iter__(self):
            for ids in super().__iter__():
                seen.append(list(ids))
                yield ids

    def sequential(dataset, batch_size, drop_last, **kwargs):  # as in the README
        return Recording(
            SequentialSampler(dataset), batch_size=batch_size, drop_last=drop_last, **kwargs
        )

    full = datasets.load_dataset("json", data_files=str(out), split="train")
    train = full.select_columns(["query", "target"])
    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    model.max_seq_length = 16  # keeps the test quick
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "st"),
        num_train_epochs=1,  # the file already holds the epochs
        per_device_train_batch_size=BATCH,
        batch_sampler=sequential,
        dataloader_drop_last=True,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        seed=0,
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=train, loss=MultipleNegativesRankingLoss(model)
    )
    trainer.train()
    plan = BatchPlan.load(plan_file)
    pairs = read_pairs(small)
    index = {pair: i for i, pair in enumerate(zip(pairs.queries, pairs.targets, strict=True))}
    rows = full.to_list()
    got = {e: [] for e in range(2)}
    for ids in seen:
        epochs = {rows[j]["epoch"] for j in ids}
        batches = {rows[j]["batch"] for j in ids}
        assert len(epochs) == len(batches) == 1  # one plan batch per step, never straddling
        got[epochs.pop()].append([index[(rows[j]["query"], rows[j]["target"])] for j in ids])
    for e in range(2):
        assert got[e] == [ids.tolist() for ids in iter_rows(plan.for_epoch(e))]
    assert got[0] != got[1]


def test_only_hardbatch_warnings_become_lines(tmp_path, capsys):
    import argparse

    from hardbatch.cli.data import read_data, warnings_as_lines

    data = tmp_path / "dup.csv"
    data.write_text("q,t\na,b\na,b\n")
    args = argparse.Namespace(data=data, columns=None, data_format=None, dedupe=False, split=None)
    # The other package's warning goes on to Python's warning machinery (here: pytest's).
    with pytest.warns(UserWarning, match="from another package") as passed_on:
        with warnings_as_lines():
            warnings.warn("from another package", UserWarning, stacklevel=1)
            read_data(args)  # hardbatch's duplicate warning
    assert len(passed_on) == 1
    err = capsys.readouterr().err
    assert "hardbatch: warning: 1 duplicate" in err
    assert "from another" not in err
