"""Write text pairs in plan order: a training file for trainers hardbatch has no adapter for.

Epoch ``e`` of the file is ``plan.for_epoch(e)``: every batch's rows one after another, each
row carrying its ``epoch`` and its ``batch`` (the batch's index within the epoch). A trainer that
reads the file in order with the plan's batch size (``DataLoader(shuffle=False,
batch_size=plan.batch_size)``) then sees exactly the plan's batches, as long as no short batch
sits before the end of the file: a plan that keeps its leftovers (``drop_last=False`` with
``N % batch_size != 0``) ends every epoch with one, and a grouped plan may end every group with
one. :func:`export_plan` warns when the file has such a batch; read it per ``epoch`` then, or
group rows by ``(epoch, batch)``.

The rows are written batch by batch as they are produced (JSON Lines and CSV a line at a time,
Parquet a row group at a time through ``pyarrow.parquet.ParquetWriter``, a Hugging Face dataset
through ``Dataset.from_generator``): the input is read once and held once, the output is never
built in memory.
"""

from __future__ import annotations

import csv
import json
import os
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..batching import iter_rows
from ..plans import BatchPlan
from .pairs import FORMATS, TextPairs, detect_format, read_pairs, require_datasets, require_pyarrow

#: Columns every exported row gets.
EPOCH, BATCH = "epoch", "batch"
#: Rows per Parquet row group (the rows held in memory while writing Parquet).
ROW_GROUP_SIZE = 10_000


def iter_export_rows(
    plan: BatchPlan,
    pairs: TextPairs,
    *,
    epochs: int = 1,
    index_column: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield the rows of ``pairs`` in plan order, ``epochs`` epochs, as dicts.

    Every row holds the pairs' columns (file order), then ``index_column`` (the row's index in
    ``pairs``) if named, then ``epoch`` and ``batch``.
    """
    names = _output_columns(pairs, index_column)
    _check(plan, pairs, epochs)
    for values in _rows(pairs, index_column, _batches(plan, epochs)):
        yield dict(zip(names, values, strict=True))


def export_plan(
    plan: BatchPlan | str | os.PathLike,
    pairs_or_path: TextPairs | str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    epochs: int = 1,
    format: str | None = None,
    columns: tuple[str, str] | None = None,
    dedupe: bool = False,
    index_column: str | None = None,
    row_group_size: int = ROW_GROUP_SIZE,
    progress: bool = False,
) -> Path:
    """Write the training file: the rows of the pairs in plan order, ``epochs`` epochs.

    Parameters
    ----------
    plan : BatchPlan or path of a ``.npz`` plan file
        Planned for these pairs (``plan.n_samples == len(pairs)``).
    pairs_or_path : TextPairs or path
        The pairs, or their file (read with :func:`~hardbatch.io.read_pairs` with ``columns``
        and ``dedupe``, which must be what the plan was made from).
    out_path : str or PathLike
        The file to write (a folder for ``format="hf"``); written under a temporary name and
        renamed when complete.
    epochs : int
        Epochs to write; epoch ``e`` is ``plan.for_epoch(e)`` (a GCBS plan repeats its
        batches, B3 regroups its clusters, random reshuffles).
    format : str, optional
        One of :data:`~hardbatch.io.FORMATS`; default: from ``out_path``'s suffix when it has a
        known one, else the input's format.
    columns, dedupe
        Passed to :func:`~hardbatch.io.read_pairs` when ``pairs_or_path`` is a path.
    index_column : str, optional
        Also write each row's index in the pairs under this name.
    row_group_size : int
        Rows per Parquet row group.
    progress : bool
        A tqdm bar over the rows written.

    Returns
    -------
    Path
        ``out_path``.
    """
    pairs = (
        pairs_or_path
        if isinstance(pairs_or_path, TextPairs)
        else read_pairs(pairs_or_path, columns, dedupe=dedupe)
    )
    if not isinstance(plan, BatchPlan):
        plan = BatchPlan.load(plan)
    out = Path(out_path)
    fmt = _output_format(format, out, pairs)
    if row_group_size < 1:
        raise ValueError(f"row_group_size must be >= 1, got {row_group_size}")
    names = _output_columns(pairs, index_column)
    _check(plan, pairs, epochs)
    out.parent.mkdir(parents=True, exist_ok=True)

    layout = _Layout(plan.batch_size)
    bar = tqdm(total=epochs * len(pairs), desc="export", unit="row", disable=not progress)
    batches = layout.watch(_batches(plan, epochs), bar)
    with bar:
        if fmt == "hf":
            _write_hf(out, pairs, names, index_column, batches)
        else:
            tmp = out.with_name(out.name + ".tmp")
            try:
                if fmt == "jsonl":
                    _write_jsonl(tmp, pairs, names, index_column, batches)
                elif fmt in ("csv", "tsv"):
                    _write_csv(tmp, pairs, names, index_column, batches, fmt)
                else:
                    _write_parquet(tmp, pairs, names, index_column, batches, row_group_size)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            os.replace(tmp, out)
    if layout.short_inside is not None:
        e, b, size = layout.short_inside
        warnings.warn(
            f"{out}: batch {b} of epoch {e} has {size} rows (< batch_size {plan.batch_size}) "
            "and more rows follow it; a sequential loader with a fixed batch size will not "
            "see the plan's batches after it: load each epoch separately, or group rows by "
            f"({EPOCH}, {BATCH})",
            UserWarning,
            stacklevel=2,
        )
    return out


# --------------------------------------------------------------------------- checks and order
def _output_columns(pairs: TextPairs, index_column: str | None) -> list[str]:
    added = [*([index_column] if index_column is not None else []), EPOCH, BATCH]
    clash = [c for c in added if c in pairs.columns]
    if clash or len(set(added)) != len(added):
        raise ValueError(
            f"the export adds the column(s) {added}, but {clash or added} already exist(s) in "
            f"the pairs; rename the column in the input or pass another index_column"
        )
    return [*pairs.columns, *added]


def _check(plan: BatchPlan, pairs: TextPairs, epochs: int) -> None:
    if not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    if plan.n_samples != len(pairs):
        hint = (
            " (was the plan made from deduplicated pairs? read them with dedupe=True)"
            if pairs.n_duplicates and pairs.kept is None
            else ""
        )
        raise ValueError(
            f"the plan is for {plan.n_samples} samples but the pairs have {len(pairs)} rows{hint}"
        )


def _output_format(format: str | None, out: Path, pairs: TextPairs) -> str:
    if format is not None:
        fmt = format.lower()
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
        return fmt
    try:
        return detect_format(out) if out.suffix else pairs.format or "jsonl"
    except ValueError:
        if pairs.format is None:
            raise
        return pairs.format


def _batches(plan: BatchPlan, epochs: int) -> Iterator[tuple[int, int, np.ndarray]]:
    """``(epoch, batch index, sample ids)`` of every batch, epoch after epoch."""
    for epoch in range(epochs):
        for b, ids in enumerate(iter_rows(plan.for_epoch(epoch))):
            yield epoch, b, ids


class _Layout:
    """Remembers the first short batch followed by more rows (fixed-size loaders misalign)."""

    def __init__(self, batch_size: int) -> None:
        self.batch_size = batch_size
        self.short_inside: tuple[int, int, int] | None = None

    def watch(self, batches, bar):
        pending = None
        for epoch, b, ids in batches:
            if pending is not None and self.short_inside is None:
                self.short_inside = pending
            pending = (epoch, b, len(ids)) if len(ids) < self.batch_size else None
            yield epoch, b, ids
            bar.update(len(ids))


# --------------------------------------------------------------------------- writers
def _rows(pairs, index_column, batches) -> Iterator[list]:
    """Rows as value lists in output column order."""
    columns = [pairs.column(name) for name in pairs.columns]
    for epoch, b, ids in batches:
        for i in ids.tolist():
            values = [column[i] for column in columns]
            if index_column is not None:
                values.append(i)
            values += [epoch, b]
            yield values


def _json_default(value: Any) -> Any:
    """Values JSON cannot write as they are (Parquet dates, bytes, numpy scalars)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _write_jsonl(path: Path, pairs, names, index_column, batches) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for values in _rows(pairs, index_column, batches):
            record = dict(zip(names, values, strict=True))
            fh.write(json.dumps(record, ensure_ascii=False, default=_json_default))
            fh.write("\n")


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False, default=_json_default)
    return value


def _write_csv(path: Path, pairs, names, index_column, batches, fmt: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, delimiter="\t" if fmt == "tsv" else ",")
        writer.writerow(names)
        for values in _rows(pairs, index_column, batches):
            writer.writerow([_csv_cell(v) for v in values])


def _arrow_schema(pairs: TextPairs, names: list[str], index_column: str | None):
    """The input's schema (Parquet/HF input) or one inferred column by column, plus the added
    integer columns. Inference scans each column without building an Arrow copy of it."""
    pa = require_pyarrow()
    if pairs.arrow_schema is not None:
        # Drop the HF features metadata: it would not list the added columns.
        fields = list(pairs.arrow_schema.remove_metadata())
    else:
        fields = [pa.field(name, pa.infer_type(pairs.column(name))) for name in pairs.columns]
    fields += [pa.field(name, pa.int64()) for name in names[len(pairs.columns) :]]
    return pa.schema(fields)


def _write_parquet(path: Path, pairs, names, index_column, batches, row_group_size: int) -> None:
    pa = require_pyarrow()
    pq = pa.parquet
    schema = _arrow_schema(pairs, names, index_column)
    buffer: list[list] = [[] for _ in names]

    def flush(writer) -> None:
        if buffer[0]:
            table = pa.Table.from_arrays(
                [pa.array(col, type=f.type) for col, f in zip(buffer, schema, strict=True)],
                schema=schema,
            )
            writer.write_table(table, row_group_size=row_group_size)
            for col in buffer:
                col.clear()

    with pq.ParquetWriter(path, schema) as writer:
        for values in _rows(pairs, index_column, batches):
            for col, v in zip(buffer, values, strict=True):
                col.append(v)
            if len(buffer[0]) >= row_group_size:
                flush(writer)
        flush(writer)


def _write_hf(out: Path, pairs, names, index_column, batches) -> None:
    datasets = require_datasets()
    schema = _arrow_schema(pairs, names, index_column)
    if pairs.arrow_schema is not None and pairs.arrow_schema.metadata:
        # Keep the input's HF features (ClassLabel names, ...) and add the integer columns.
        features = datasets.Features.from_arrow_schema(pairs.arrow_schema)
        for name in names[len(pairs.columns) :]:
            features[name] = datasets.Value("int64")
    else:
        features = datasets.Features.from_arrow_schema(schema)

    def generate():
        for values in _rows(pairs, index_column, batches):
            yield dict(zip(names, values, strict=True))

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".hardbatch-export-") as tmp:
        # A fresh fingerprint: hashing the generator would pickle the pairs (slow, pointless
        # in a cache folder deleted right after).
        ds = datasets.Dataset.from_generator(
            generate, features=features, cache_dir=tmp, fingerprint=uuid.uuid4().hex
        )
        ds.save_to_disk(str(out))
        del ds
