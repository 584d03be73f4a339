"""hardbatch.io.pairs: every input format, column choice, duplicates and every error case."""

from __future__ import annotations

import csv
import json
import os
import warnings

import numpy as np
import pytest

from hardbatch.io import TextPairs, detect_format, read_pairs
from hardbatch.io.pairs import text_fingerprint

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
datasets = pytest.importorskip("datasets")

ROWS = [
    {"id": 7, "question": "how do cats sleep", "answer": "curled up in the sun", "source": "a"},
    {"id": 8, "question": "why is the sea salty", "answer": "rivers carry minerals", "source": "b"},
    {"id": 9, "question": "what do bees eat", "answer": "nectar and pollen", "source": "a"},
    {"id": 10, "question": "how far is the moon", "answer": "about 384 000 km", "source": "c"},
]


def write(path, rows, fmt):
    """Write ``rows`` (list of dicts) in ``fmt`` at ``path``; return the path."""
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt in ("csv", "tsv"):
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(
                fh, fieldnames=list(rows[0]), delimiter="," if fmt == "csv" else "\t"
            )
            w.writeheader()
            w.writerows(rows)
    elif fmt == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif fmt == "hf":
        datasets.Dataset.from_list(rows).save_to_disk(str(path))
    return path


SUFFIX = {"jsonl": ".jsonl", "csv": ".csv", "tsv": ".tsv", "parquet": ".parquet", "hf": ""}


@pytest.fixture(params=list(SUFFIX))
def fmt(request):
    return request.param


def test_every_format_reads_the_same_pairs(tmp_path, fmt):
    path = write(tmp_path / f"data{SUFFIX[fmt]}", ROWS, fmt)
    pairs = read_pairs(path, columns=("question", "answer"))
    assert pairs.format == fmt == detect_format(path)
    assert pairs.queries == [r["question"] for r in ROWS]
    assert pairs.targets == [r["answer"] for r in ROWS]
    assert pairs.columns == ("id", "question", "answer", "source")
    assert pairs.extra["source"] == ["a", "b", "a", "c"]
    # CSV holds text only; the typed formats keep the integers.
    ids = [str(r["id"]) for r in ROWS] if fmt in ("csv", "tsv") else [r["id"] for r in ROWS]
    assert pairs.extra["id"] == ids
    assert pairs.fingerprint == text_fingerprint(pairs.queries, pairs.targets)
    assert (pairs.arrow_schema is not None) == (fmt in ("parquet", "hf"))
    assert len(pairs) == 4 and pairs.n_duplicates == 0 and pairs.kept is None


def test_default_columns_are_the_first_two_text_columns(tmp_path, fmt):
    path = write(tmp_path / f"data{SUFFIX[fmt]}", ROWS, fmt)
    pairs = read_pairs(path)
    if fmt in ("csv", "tsv"):  # every CSV column is text: the first two
        assert (pairs.query_column, pairs.target_column) == ("id", "question")
    else:  # the integer id is skipped
        assert (pairs.query_column, pairs.target_column) == ("question", "answer")


def test_columns_in_any_order_and_the_fingerprint_follows_the_texts(tmp_path):
    path = write(tmp_path / "d.jsonl", ROWS, "jsonl")
    a = read_pairs(path, ("question", "answer"))
    b = read_pairs(path, ("answer", "question"))
    assert b.queries == a.targets and b.targets == a.queries
    assert a.fingerprint != b.fingerprint
    # Extra columns do not change the fingerprint (they do not change the embeddings).
    other = [{**r, "source": "z"} for r in ROWS]
    c = read_pairs(write(tmp_path / "e.jsonl", other, "jsonl"), ("question", "answer"))
    assert c.fingerprint == a.fingerprint
    changed = [{**r, "answer": r["answer"] + "!"} for r in ROWS]
    d = read_pairs(write(tmp_path / "f.jsonl", changed, "jsonl"), ("question", "answer"))
    assert d.fingerprint != a.fingerprint


def test_fingerprint_is_length_prefixed():
    assert text_fingerprint(["ab", "c"], ["x", "y"]) != text_fingerprint(["a", "bc"], ["x", "y"])
    assert text_fingerprint(["a"], ["b"]) != text_fingerprint(["b"], ["a"])


def test_format_override_and_json_suffix(tmp_path):
    path = write(tmp_path / "data.txt", ROWS, "jsonl")
    with pytest.raises(ValueError, match="cannot tell the format"):
        read_pairs(path)
    assert len(read_pairs(path, format="jsonl")) == 4
    assert len(read_pairs(write(tmp_path / "d.json", ROWS, "jsonl"))) == 4
    tsv = write(tmp_path / "t.txt", ROWS, "tsv")
    assert read_pairs(tsv, ("question", "answer"), format="TSV").targets[1] == ROWS[1]["answer"]
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        read_pairs(tsv, format="xml")


def test_jsonl_keys_missing_or_added_later_are_none(tmp_path):
    rows = [
        {"q": "one two", "t": "three four"},
        {"q": "five six", "t": "seven", "neg": ["x", "y"]},
        {"t": "nine ten", "q": "eleven", "w": 1.5},
    ]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")  # blank lines skipped
    pairs = read_pairs(path)
    assert pairs.columns == ("q", "t", "neg", "w")
    assert pairs.targets == ["three four", "seven", "nine ten"]
    assert pairs.extra == {"neg": [None, ["x", "y"], None], "w": [None, None, 1.5]}
    assert pairs.row(1) == {"q": "five six", "t": "seven", "neg": ["x", "y"], "w": None}


def test_hf_dataset_dict_needs_a_split_when_it_has_several(tmp_path):
    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_list(ROWS[:3]), test=datasets.Dataset.from_list(ROWS[3:])
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(ValueError, match=r"splits \['train', 'test'\]; choose one with split="):
        read_pairs(tmp_path / "dd")
    assert len(read_pairs(tmp_path / "dd", split="train")) == 3
    assert read_pairs(tmp_path / "dd", split="test").queries == [ROWS[3]["question"]]
    single = datasets.DatasetDict(only=datasets.Dataset.from_list(ROWS))
    single.save_to_disk(str(tmp_path / "one"))
    assert len(read_pairs(tmp_path / "one")) == 4
    write(tmp_path / "ds", ROWS, "hf")
    with pytest.raises(ValueError, match="single Dataset; it has no split 'train'"):
        read_pairs(tmp_path / "ds", split="train")


def test_hf_dataset_after_select_keeps_the_selected_rows(tmp_path):
    ds = datasets.Dataset.from_list(ROWS).select([3, 1])
    ds.save_to_disk(str(tmp_path / "sel"))
    assert read_pairs(tmp_path / "sel").queries == [ROWS[3]["question"], ROWS[1]["question"]]


def test_parquet_large_strings_count_as_text(tmp_path):
    table = pa.table(
        {
            "n": pa.array([1, 2]),
            "a": pa.array(["x y", "z w"], type=pa.large_string()),
            "b": pa.array(["p", "q"]),
        }
    )
    pq.write_table(table, tmp_path / "d.parquet")
    pairs = read_pairs(tmp_path / "d.parquet")
    assert (pairs.query_column, pairs.target_column) == ("a", "b")


# --------------------------------------------------------------------------- duplicates
def brute_force_duplicates(queries, targets):
    """Slow reference: row i is a duplicate if an earlier row has the same pair."""
    return [
        i
        for i in range(len(queries))
        if any(queries[j] == queries[i] and targets[j] == targets[i] for j in range(i))
    ]


def test_duplicates_warned_or_dropped_like_the_reference(tmp_path):
    rng = np.random.default_rng(0)
    rows = [
        {"q": f"query {rng.integers(6)}", "t": f"target {rng.integers(4)}", "i": i}
        for i in range(60)
    ]
    path = write(tmp_path / "d.jsonl", rows, "jsonl")
    qs, ts = [r["q"] for r in rows], [r["t"] for r in rows]
    dups = brute_force_duplicates(qs, ts)
    assert dups  # the draw has repeats
    with pytest.warns(UserWarning, match=rf"{len(dups)} duplicate \(query, target\) pair"):
        kept_all = read_pairs(path)
    assert len(kept_all) == 60 and kept_all.n_duplicates == len(dups) and kept_all.kept is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # dedupe reports through n_duplicates, no warning
        unique = read_pairs(path, dedupe=True)
    expect = [i for i in range(60) if i not in dups]
    assert unique.kept.tolist() == expect
    assert unique.extra["i"] == expect  # extra columns follow the kept rows
    assert unique.queries == [qs[i] for i in expect]
    assert unique.n_duplicates == len(dups)
    assert unique.fingerprint == text_fingerprint(unique.queries, unique.targets)


def test_dedupe_without_duplicates_keeps_every_row(tmp_path):
    pairs = read_pairs(write(tmp_path / "d.jsonl", ROWS, "jsonl"), dedupe=True)
    assert pairs.kept.tolist() == [0, 1, 2, 3] and pairs.n_duplicates == 0


def test_same_query_with_another_target_is_not_a_duplicate(tmp_path):
    rows = [{"q": "a b", "t": "c"}, {"q": "a b", "t": "d"}]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_pairs(write(tmp_path / "d.jsonl", rows, "jsonl")).n_duplicates == 0


# --------------------------------------------------------------------------- errors
def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="data file not found"):
        read_pairs(tmp_path / "nope.jsonl")


def test_missing_column(tmp_path, fmt):
    path = write(tmp_path / f"data{SUFFIX[fmt]}", ROWS, fmt)
    with pytest.raises(ValueError, match=r"column 'query' not found in .*columns: id, question"):
        read_pairs(path, ("query", "answer"))


@pytest.mark.parametrize("columns", [("a",), ("a", "a"), ("a", "b", "c")])
def test_columns_must_be_two_different_names(tmp_path, columns):
    with pytest.raises(ValueError, match="two different columns"):
        read_pairs(write(tmp_path / "d.jsonl", ROWS, "jsonl"), columns)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "hf"])
@pytest.mark.parametrize("bad", ["", "   "])
def test_empty_cell_names_row_and_column(tmp_path, fmt, bad):
    rows = [dict(r) for r in ROWS]
    rows[2]["answer"] = bad
    rows[3]["answer"] = ""
    path = write(tmp_path / f"data{SUFFIX[fmt]}", rows, fmt)
    with pytest.raises(
        ValueError, match=r"row 2 \(0-based\) of column 'answer' .* is empty \(and 1 more"
    ):
        read_pairs(path, ("question", "answer"))


@pytest.mark.parametrize(
    ("fmt", "value", "what"),
    [("jsonl", 5, "int 5"), ("jsonl", None, "NoneType None"), ("jsonl", ["a"], "list"),
     ("parquet", None, "NoneType None"), ("hf", None, "NoneType None")],
)  # fmt: skip
def test_non_text_cell_names_row_and_column(tmp_path, fmt, value, what):
    rows = [dict(r) for r in ROWS]
    rows[1]["question"] = value
    path = write(tmp_path / f"data{SUFFIX[fmt]}", rows, fmt)
    with pytest.raises(ValueError, match=r"row 1 \(0-based\) of column 'question' .*not text"):
        read_pairs(path, ("question", "answer"))
    with pytest.raises(ValueError, match=what.split()[0]):
        read_pairs(path, ("question", "answer"))


def test_fewer_than_two_text_columns(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": "x", "b": 1}\n')
    with pytest.raises(ValueError, match="fewer than two text columns"):
        read_pairs(path)


def test_no_rows(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(ValueError, match="holds no rows"):
        read_pairs(tmp_path / "e.jsonl")
    (tmp_path / "h.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="holds no rows"):
        read_pairs(tmp_path / "h.csv")
    (tmp_path / "z.csv").write_text("")
    with pytest.raises(ValueError, match="no header row"):
        read_pairs(tmp_path / "z.csv")


def test_malformed_jsonl(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": "x", "b": "y"}\n{"a": "x",\n')
    with pytest.raises(ValueError, match="line 2: not valid JSON"):
        read_pairs(path)
    path.write_text('[{"a": "x", "b": "y"},\n{"a": "z", "b": "w"}]\n')
    with pytest.raises(ValueError, match="a JSON array is not JSON Lines"):
        read_pairs(path)
    path.write_text('{"a": "x", "b": "y"}\n["a", "b"]\n')
    with pytest.raises(ValueError, match="line 2: expected a JSON object per line, got list"):
        read_pairs(path)


def test_malformed_csv(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("a,b\nx,y\nz\n")
    with pytest.raises(ValueError, match="line 3: 1 fields, the header has 2"):
        read_pairs(path)
    path.write_text("a,b,a\nx,y,z\n")
    with pytest.raises(ValueError, match=r"header repeats column name\(s\) \['a'\]"):
        read_pairs(path)


def test_folder_that_is_not_a_saved_dataset(tmp_path):
    with pytest.raises(ValueError, match="not a dataset saved with datasets' save_to_disk"):
        read_pairs(tmp_path)


# --------------------------------------------------------------------------- TextPairs
def test_from_lists_codes_and_column():
    pairs = TextPairs.from_lists(["a", "b", "c"], ["x", "y", "z"], {"g": ["u", "v", "u"]})
    assert pairs.format is None and pairs.source is None
    assert pairs.columns == ("query", "target", "g")
    assert pairs.codes("g").tolist() == [0, 1, 0]
    assert pairs.codes("query").tolist() == [0, 1, 2]
    with pytest.raises(ValueError, match="no column 'h'"):
        pairs.column("h")
    lists = TextPairs.from_lists(["a", "b"], ["x", "y"], {"neg": [["p"], ["q"]]})
    with pytest.raises(ValueError, match="row 0 of column 'neg' holds a list"):
        lists.codes("neg")
    with pytest.raises(ValueError, match="is empty"):
        TextPairs.from_lists(["a", ""], ["x", "y"])
    with pytest.raises(ValueError, match="column 'target' has 1 values for 2 rows"):
        TextPairs.from_lists(["a", "b"], ["x"])
    with pytest.raises(ValueError, match="repeats a text column"):
        TextPairs.from_lists(["a"], ["x"], {"query": ["q"]})
    with pytest.raises(ValueError, match="differ in length"):
        TextPairs(queries=["a"], targets=[])
    assert "3 pairs" in repr(pairs)


def test_parquet_round_trip_in_a_fresh_interpreter(tmp_path):
    """``import pyarrow`` alone does not load ``pyarrow.parquet``: read and export Parquet in a
    process where nothing else imported it (the tests' own import would hide the bug)."""
    import subprocess
    import sys
    from pathlib import Path

    path = write(tmp_path / "d.parquet", ROWS, "parquet")
    code = (
        "import sys, hardbatch; from hardbatch.io import read_pairs, export_plan\n"
        f"pairs = read_pairs({str(path)!r}, ('question', 'answer'))\n"
        "plan = hardbatch.plan('random', n_samples=4, batch_size=2, seed=0)\n"
        f"export_plan(plan, pairs, {str(tmp_path / 'o.parquet')!r})\n"
        "print(len(pairs))\n"
    )
    src = str(Path(__file__).resolve().parents[1] / "src")
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": src},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "4"
    assert pq.read_table(tmp_path / "o.parquet").num_rows == 4
