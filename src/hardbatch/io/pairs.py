"""Read (query, target) text pairs from JSON Lines, CSV/TSV, Parquet or a saved HF dataset.

Every reader fills one Python list per column while it streams through the file (Parquet and
Hugging Face datasets record batch by record batch), so the text is held once, as the lists of
the returned :class:`TextPairs`.

Columns: ``columns=("query", "target")`` names the two text columns; by default they are the
first two *text* columns of the file (JSON Lines: the first row's string-valued keys; CSV/TSV:
the first two columns; Parquet/HF: the first two string columns of the schema). Every other
column is carried along in :attr:`TextPairs.extra` (a dataset id, hard negatives, a group).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Formats :func:`read_pairs` understands (``"hf"``: a dataset saved with ``save_to_disk``).
FORMATS = ("jsonl", "csv", "tsv", "parquet", "hf")

_SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
#: Files ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` write into their folder.
_HF_MARKERS = ("state.json", "dataset_dict.json", "dataset_info.json")
#: Rows per record batch when streaming Arrow data into lists.
_ARROW_BATCH = 65_536


def require_pyarrow():
    """Import ``pyarrow`` (with its ``parquet`` module, which ``import pyarrow`` does not load)
    or raise an ``ImportError`` naming the extra that installs it."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError as err:  # pragma: no cover - pyarrow is installed in the test env
        raise ImportError(
            "Parquet and Hugging Face datasets need pyarrow: pip install 'hardbatch[io]'"
        ) from err
    return pyarrow


def require_datasets():
    """Import ``datasets`` or raise an ``ImportError`` naming the extra that installs it."""
    try:
        import datasets
    except ImportError as err:  # pragma: no cover - datasets is installed in the test env
        raise ImportError(
            "Hugging Face datasets saved to disk need the datasets package: "
            "pip install 'hardbatch[io]'"
        ) from err
    return datasets


# --------------------------------------------------------------------------- the result
@dataclass(eq=False)
class TextPairs:
    """Paired texts read from a file: row ``i`` of :attr:`queries` goes with row ``i`` of
    :attr:`targets`.

    Attributes
    ----------
    queries, targets : list of str
        The two text columns, every cell a non-empty string.
    extra : dict of str to list
        Every other column of the file, in file order, one value per row (``None`` where a
        JSON Lines row lacks the key).
    query_column, target_column : str
        Names of the two text columns in the file.
    columns : tuple of str
        Every column in file order (the order :func:`~hardbatch.io.export_plan` writes).
    source : Path or None
        The file or folder read (``None`` for pairs built in memory).
    format : str or None
        One of :data:`FORMATS` (``None`` for pairs built in memory).
    fingerprint : str
        SHA-256 of the query and target texts (not of the extra columns: they do not change
        the embeddings); the embedding cache is keyed on it.
    n_duplicates : int
        Rows whose (query, target) pair repeats an earlier row, counted before any dedupe.
    kept : np.ndarray or None
        With ``dedupe=True``: the file row of every kept row (int64, increasing); else ``None``.
    arrow_schema : pyarrow.Schema or None
        Schema of a Parquet / HF input (the export writes the same column types).
    """

    queries: list[str]
    targets: list[str]
    extra: dict[str, list] = field(default_factory=dict)
    query_column: str = "query"
    target_column: str = "target"
    columns: tuple[str, ...] = ()
    source: Path | None = None
    format: str | None = None
    fingerprint: str = ""
    n_duplicates: int = 0
    kept: np.ndarray | None = None
    arrow_schema: Any = None

    def __post_init__(self) -> None:
        if len(self.queries) != len(self.targets):
            raise ValueError(
                f"queries and targets differ in length: {len(self.queries)} vs {len(self.targets)}"
            )
        for name, values in self.extra.items():
            if len(values) != len(self.queries):
                raise ValueError(
                    f"column {name!r} has {len(values)} values for {len(self.queries)} rows"
                )
        if not self.columns:
            self.columns = (self.query_column, self.target_column, *self.extra)
        if not self.fingerprint:
            self.fingerprint = text_fingerprint(self.queries, self.targets)

    @classmethod
    def from_lists(
        cls,
        queries: Sequence[str],
        targets: Sequence[str],
        extra: dict[str, Sequence] | None = None,
        *,
        query_column: str = "query",
        target_column: str = "target",
    ) -> TextPairs:
        """Pairs built in memory; the cells are checked like a file's."""
        data = {query_column: list(queries), target_column: list(targets)}
        for name, values in (extra or {}).items():
            if name in data:
                raise ValueError(f"extra column {name!r} repeats a text column")
            data[name] = list(values)
        n = len(data[query_column])
        for name, values in data.items():
            if len(values) != n:
                raise ValueError(f"column {name!r} has {len(values)} values for {n} rows")
        return _finish(data, (query_column, target_column), None, None, dedupe=False)

    def __len__(self) -> int:
        return len(self.queries)

    def column(self, name: str) -> list:
        """The values of one column (a text column or an extra one)."""
        if name == self.query_column:
            return self.queries
        if name == self.target_column:
            return self.targets
        if name not in self.extra:
            raise ValueError(
                f"no column {name!r} in {self.source or 'the pairs'}; columns: "
                f"{', '.join(self.columns)}"
            )
        return self.extra[name]

    def codes(self, name: str) -> np.ndarray:
        """Integer code of every row's value in column ``name`` (first appearance order).

        For per-sample arrays a planner takes from the file, e.g. B3's ``groups=`` or
        ``duplicate_ids=``. Values must be hashable (lists, as JSON Lines may hold, are not).
        """
        values = self.column(name)
        index: dict[Any, int] = {}
        out = np.empty(len(values), dtype=np.int64)
        for i, value in enumerate(values):
            try:
                out[i] = index.setdefault(value, len(index))
            except TypeError as err:
                raise ValueError(
                    f"row {i} of column {name!r} holds a {type(value).__name__}, which cannot "
                    "serve as a group or id"
                ) from err
        return out

    def row(self, i: int) -> dict[str, Any]:
        """Row ``i`` as a dict in :attr:`columns` order."""
        return {name: self.column(name)[i] for name in self.columns}

    def __repr__(self) -> str:
        where = f" from {self.source} ({self.format})" if self.source else ""
        return (
            f"TextPairs({len(self)} pairs{where}, columns={list(self.columns)}, "
            f"fingerprint={self.fingerprint[:12]})"
        )


def text_fingerprint(queries: Sequence[str], targets: Sequence[str]) -> str:
    """SHA-256 of the pairs' texts, length-prefixed so that no two lists collide."""
    h = hashlib.sha256()
    h.update(f"{len(queries)}\n".encode())
    for texts in (queries, targets):
        for text in texts:
            data = text.encode("utf-8", "surrogatepass")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    return h.hexdigest()


# --------------------------------------------------------------------------- entry point
def detect_format(path: str | os.PathLike) -> str:
    """The format of ``path`` from its suffix (a folder: a saved HF dataset)."""
    p = Path(path)
    if p.is_dir():
        if any((p / marker).exists() for marker in _HF_MARKERS):
            return "hf"
        raise ValueError(
            f"{p} is a folder but not a dataset saved with datasets' save_to_disk "
            f"(none of {', '.join(_HF_MARKERS)} in it)"
        )
    fmt = _SUFFIXES.get(p.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"cannot tell the format of {p} from its suffix {p.suffix!r}; known suffixes: "
            f"{', '.join(sorted(_SUFFIXES))}, or a saved HF dataset folder; pass format= one "
            f"of {', '.join(FORMATS)}"
        )
    return fmt


def read_pairs(
    path: str | os.PathLike,
    columns: Sequence[str] | None = None,
    *,
    format: str | None = None,
    dedupe: bool = False,
    split: str | None = None,
) -> TextPairs:
    """Read text pairs from a file.

    Parameters
    ----------
    path : str or PathLike
        A ``.jsonl``/``.ndjson``/``.json`` (JSON Lines), ``.csv``, ``.tsv``, ``.parquet`` file,
        or a folder written by ``Dataset.save_to_disk``.
    columns : (str, str), optional
        The query and target columns; default: the first two text columns.
    format : str, optional
        One of :data:`FORMATS`; default: from the suffix (:func:`detect_format`).
    dedupe : bool
        Keep only the first row of every repeated (query, target) pair
        (:attr:`TextPairs.kept` says which rows). Without it, repeats are kept and a warning
        counts them: a repeated pair is its own false negative in a batch.
    split : str, optional
        Split of a saved ``DatasetDict`` (needed when it has more than one).

    Returns
    -------
    TextPairs

    Raises
    ------
    ValueError
        A missing file, an unknown format, a missing column, fewer than two text columns, an
        empty or non-text cell in a text column (the message names the row and column), a
        malformed line.
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"data file not found: {p}")
    fmt = detect_format(p) if format is None else format.lower()
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if columns is not None:
        columns = tuple(columns)
        if len(columns) != 2 or columns[0] == columns[1]:
            raise ValueError(
                f"columns must name two different columns (query, target), got {columns}"
            )
    if fmt == "jsonl":
        data, text_columns, schema = _read_jsonl(p)
    elif fmt in ("csv", "tsv"):
        data, text_columns, schema = _read_csv(p, "\t" if fmt == "tsv" else ",")
    elif fmt == "parquet":
        data, text_columns, schema = _read_arrow(*_parquet_batches(p))
    else:
        data, text_columns, schema = _read_arrow(*_hf_batches(p, split))
    if not data or not next(iter(data.values())):
        raise ValueError(f"{p} holds no rows")
    if columns is None:
        if len(text_columns) < 2:
            raise ValueError(
                f"{p} has fewer than two text columns ({', '.join(text_columns) or 'none'} among "
                f"{', '.join(data)}); name them with columns=(query, target)"
            )
        columns = (text_columns[0], text_columns[1])
    return _finish(data, columns, p, fmt, dedupe=dedupe, schema=schema)


def _finish(
    data: dict[str, list],
    columns: tuple[str, str],
    source: Path | None,
    fmt: str | None,
    *,
    dedupe: bool,
    schema: Any = None,
) -> TextPairs:
    """Check the text columns, count (and maybe drop) duplicates, build :class:`TextPairs`."""
    where = source or "the pairs"
    missing = [c for c in columns if c not in data]
    if missing:
        raise ValueError(f"column {missing[0]!r} not found in {where}; columns: {', '.join(data)}")
    for name in columns:
        _check_text(data[name], name, where)
    queries, targets = data[columns[0]], data[columns[1]]
    first: dict[tuple[str, str], int] = {}
    keep = np.ones(len(queries), dtype=bool)
    example = None
    for i, pair in enumerate(zip(queries, targets, strict=True)):
        j = first.setdefault(pair, i)
        if j != i:
            keep[i] = False
            example = example or (i, j)
    del first
    n_dup = int((~keep).sum())
    kept = None
    if n_dup and dedupe:
        kept = np.flatnonzero(keep)
        for name in data:
            data[name] = [data[name][i] for i in kept]
        queries, targets = data[columns[0]], data[columns[1]]
    elif n_dup:
        warnings.warn(
            f"{n_dup} duplicate (query, target) pair(s) in {where} (e.g. row {example[0]} "
            f"repeats row {example[1]}); a repeated pair is a false negative when both copies "
            "share a batch: read with dedupe=True (CLI: --dedupe) to keep the first of each",
            UserWarning,
            stacklevel=3,
        )
    elif dedupe:
        kept = np.arange(len(queries), dtype=np.int64)
    return TextPairs(
        queries=queries,
        targets=targets,
        extra={k: v for k, v in data.items() if k not in columns},
        query_column=columns[0],
        target_column=columns[1],
        columns=tuple(data),
        source=source,
        format=fmt,
        n_duplicates=n_dup,
        kept=kept,
        arrow_schema=schema,
    )


def _check_text(values: list, name: str, where: Any) -> None:
    """Raise ``ValueError`` naming the first empty or non-text cell of a text column."""
    bad = [i for i, v in enumerate(values) if not isinstance(v, str) or not v.strip()]
    if not bad:
        return
    i, v = bad[0], values[bad[0]]
    what = "is empty" if isinstance(v, str) else f"is not text (got {type(v).__name__} {v!r})"
    more = f" (and {len(bad) - 1} more bad cell(s) in that column)" if len(bad) > 1 else ""
    raise ValueError(f"row {i} (0-based) of column {name!r} in {where} {what}{more}")


# --------------------------------------------------------------------------- readers
def _read_jsonl(path: Path) -> tuple[dict[str, list], list[str], None]:
    """Columns of a JSON Lines file; text columns: the first row's string-valued keys."""
    data: dict[str, list] = {}
    text_columns: list[str] = []
    n = 0
    with open(path, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                hint = " (a JSON array is not JSON Lines)" if n == 0 and line[:1] == "[" else ""
                raise ValueError(f"{path} line {line_no}: not valid JSON{hint}: {err}") from err
            if not isinstance(record, dict):
                raise ValueError(
                    f"{path} line {line_no}: expected a JSON object per line, got "
                    f"{type(record).__name__}"
                )
            if n == 0:
                text_columns = [k for k, v in record.items() if isinstance(v, str)]
            for key, value in record.items():
                column = data.get(key)
                if column is None:
                    column = data[key] = [None] * n  # a key first seen on a later row
                column.append(value)
            n += 1
            if len(record) != len(data):
                for column in data.values():
                    if len(column) < n:
                        column.append(None)
    return data, text_columns, None


def _read_csv(path: Path, delimiter: str) -> tuple[dict[str, list], list[str], None]:
    """Columns of a CSV/TSV file with a header row; every column is text."""
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            raise ValueError(f"{path} is empty (no header row)") from None
        if len(set(header)) != len(header):
            dup = sorted({h for h in header if header.count(h) > 1})
            raise ValueError(f"{path}: header repeats column name(s) {dup}")
        columns: list[list[str]] = [[] for _ in header]
        for row in reader:
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(
                    f"{path} line {reader.line_num}: {len(row)} fields, the header has "
                    f"{len(header)}"
                )
            for column, value in zip(columns, row, strict=True):
                column.append(value)
    return dict(zip(header, columns, strict=True)), list(header), None


def _parquet_batches(path: Path) -> tuple[Any, Iterator[Any]]:
    pq = require_pyarrow().parquet
    pf = pq.ParquetFile(path)
    return pf.schema_arrow, pf.iter_batches(batch_size=_ARROW_BATCH)


def _hf_batches(path: Path, split: str | None) -> tuple[Any, Iterator[Any]]:
    datasets = require_datasets()
    ds = datasets.load_from_disk(str(path))
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        if split is None and len(names) == 1:
            split = names[0]
        if split not in ds:
            raise ValueError(f"{path} is a DatasetDict with splits {names}; choose one with split=")
        ds = ds[split]
    elif split is not None:
        raise ValueError(f"{path} is a single Dataset; it has no split {split!r}")
    # The arrow format honours any indices mapping (a saved select/shuffle) batch by batch.
    batches = ds.with_format("arrow").iter(batch_size=_ARROW_BATCH)
    return ds.features.arrow_schema, batches


def _read_arrow(schema: Any, batches: Iterator[Any]) -> tuple[dict[str, list], list[str], Any]:
    """Columns of Arrow record batches; text columns: the string columns of the schema."""
    pa = require_pyarrow()
    data: dict[str, list] = {name: [] for name in schema.names}
    for batch in batches:
        for name in schema.names:
            data[name].extend(batch.column(name).to_pylist())
    # Arrow's allocator keeps the decoded batches' pages for reuse; hand them back to the OS,
    # the lists now hold the data (at 20k rows this halves the RSS left after reading).
    pa.default_memory_pool().release_unused()
    text = [
        f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
    ]
    return data, text, schema
