"""Reading a plan file (``.npz``) without trusting it.

A plan file is a zip archive of ``.npy`` members: ``meta`` (JSON) and ``batches``, plus the
optional arrays of :class:`hardbatch.BatchPlan`. :func:`read_plan_file` checks it in an order
that bounds the memory a crafted file can claim, before anything large is read:

1. the zip directory: only the known member names, each at most once, and no member whose
   declared size is more than :data:`MAX_INFLATION` times its compressed size (a small file
   cannot inflate into a large allocation; :meth:`BatchPlan.save` stores members uncompressed);
2. ``meta``: at most :data:`MAX_META_BYTES`, a JSON object whose fields have the right types
   (nesting deeper than Python's recursion limit is refused, not a ``RecursionError``);
3. every array's ``.npy`` header (a few bytes): an integer dtype, the dimensions its field
   has, a data size equal to what the shape declares, and a shape that agrees with
   ``n_samples`` and ``batch_size`` — so an ``n_samples`` that disagrees with the arrays is
   refused before any ``N``-sized buffer exists;
4. only then the arrays themselves, with ``allow_pickle=False``.

What the values promise (ids in range, each sample once, ...) is then checked by
:meth:`hardbatch.BatchPlan.validate`.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

#: Version of the ``.npz`` plan format written by :meth:`hardbatch.BatchPlan.save`.
FORMAT_VERSION = 1

#: Optional per-plan arrays that travel with the plan file, with their number of dimensions.
ARRAY_FIELDS = {
    "order": 1,
    "clusters": 2,
    "hard_negatives": 2,
    "cluster_groups": 1,
    "duplicate_ids": 1,
}

#: Largest ``meta`` member accepted (the plan's parameters and ``info``; a few kB in practice).
MAX_META_BYTES = 16 * 2**20

#: Largest ratio of a member's size to its compressed size (int64 ids compress a few times).
MAX_INFLATION = 32

#: Members up to this size are accepted whatever their compression ratio.
_SMALL_MEMBER = 2**20


def _refuse(path: Path, reason: str) -> ValueError:
    return ValueError(f"{path} is not a hardbatch plan file: {reason}")


def read_plan_file(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The checked metadata and arrays of a plan file (see the module docstring).

    Returns
    -------
    meta : dict
        ``format_version``, ``method``, ``n_samples``, ``batch_size``, ``seed``,
        ``drop_last``, ``epoch_rule``, ``params``, ``info`` (types checked).
    arrays : dict of str to np.ndarray
        ``batches`` and the optional arrays present.

    Raises
    ------
    FileNotFoundError
        No file at ``path``.
    ValueError
        Anything else: not a zip of ``.npy`` members, an unknown member, a member larger than
        its header or its compressed size allow, bad metadata, arrays that disagree with it.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no plan file at {path}")
    with open(path, "rb") as fh:
        if fh.read(6) == b"\x93NUMPY":
            raise ValueError(
                f"{path} is a single .npy array, not a hardbatch plan file (.npz archive "
                "written by BatchPlan.save)"
            )
    try:
        with zipfile.ZipFile(path) as archive:
            return _read(path, archive)
    except ValueError:
        raise
    except Exception as exc:  # zip structure errors of any kind (bad compression, CRC, ...)
        raise ValueError(f"{path} is not a hardbatch plan file (.npz): {exc}") from None


def _read(path: Path, archive: zipfile.ZipFile) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The steps of :func:`read_plan_file` on an open archive."""
    infos = _members(path, archive)
    meta = _read_meta(path, archive, infos["meta"])
    headers = {name: _header(path, archive, info) for name, info in infos.items() if name != "meta"}
    _check_shapes(path, meta, {name: shape for name, (shape, _) in headers.items()})
    arrays = {}
    for name in headers:
        try:
            with archive.open(infos[name]) as fh:
                arrays[name] = np.lib.format.read_array(fh, allow_pickle=False)
        except Exception as exc:  # corrupt data (CRC, truncation) means "not a plan"
            raise _refuse(path, f"member {name!r} cannot be read ({exc})") from None
    return meta, arrays


def _members(path: Path, archive: zipfile.ZipFile) -> dict[str, zipfile.ZipInfo]:
    """The members by field name, after the directory checks (names, sizes)."""
    known = {"batches", "meta", *ARRAY_FIELDS}
    entries = archive.infolist()
    names = [e.filename[:-4] if e.filename.endswith(".npy") else e.filename for e in entries]
    if "batches" not in names or "meta" not in names:
        raise ValueError(
            f"{path} is not a hardbatch plan file: it lacks 'batches' or 'meta' "
            f"(holds {sorted(names)})"
        )
    infos: dict[str, zipfile.ZipInfo] = {}
    for name, info in zip(names, entries, strict=True):
        if name not in known:
            raise _refuse(path, f"unexpected member {info.filename!r}")
        if name in infos:
            raise _refuse(path, f"member {info.filename!r} appears twice")
        if info.file_size > max(MAX_INFLATION * info.compress_size, _SMALL_MEMBER):
            raise _refuse(
                path,
                f"member {info.filename!r} inflates from {info.compress_size} to "
                f"{info.file_size} bytes (more than {MAX_INFLATION}x)",
            )
        infos[name] = info
    return infos


def _header(
    path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo
) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype from a member's ``.npy`` header; its size must match them."""
    name = info.filename
    try:
        with archive.open(info) as fh:
            version = np.lib.format.read_magic(fh)
            reader = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }.get(version)
            if reader is None:
                raise ValueError(f"unsupported .npy version {version}")
            shape, _, dtype = reader(fh)
            offset = fh.tell()
    except Exception as exc:  # a bad header of any kind
        raise _refuse(path, f"member {name!r} is not a .npy array ({exc})") from None
    if dtype.hasobject:
        raise _refuse(path, f"member {name!r} holds Python objects (pickles are not loaded)")
    if name != "meta.npy" and dtype.kind not in "iu":
        raise _refuse(path, f"member {name!r} must hold integers, got {dtype}")
    expected = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if info.file_size != expected:
        raise _refuse(
            path,
            f"member {name!r} has {info.file_size} bytes but its header declares shape "
            f"{shape} of {dtype} ({expected} bytes)",
        )
    return tuple(int(s) for s in shape), dtype


def _read_meta(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> dict[str, Any]:
    """The JSON metadata, with every field's presence and type checked."""
    if info.file_size > MAX_META_BYTES:
        raise _refuse(path, f"metadata of {info.file_size} bytes (at most {MAX_META_BYTES})")
    shape, dtype = _header(path, archive, info)
    if shape != () or dtype.kind != "U":
        raise _refuse(path, f"metadata must be one string, got shape {shape} of {dtype}")
    try:
        with archive.open(info) as fh:
            text = str(np.lib.format.read_array(fh, allow_pickle=False))
    except Exception as exc:  # corrupt data (CRC, truncation) means "not a plan"
        raise _refuse(path, f"metadata cannot be read ({exc})") from None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: plan metadata is not valid JSON ({exc})") from None
    except RecursionError:
        raise _refuse(path, "metadata nested too deeply") from None
    if not isinstance(meta, dict):
        raise _refuse(path, f"metadata must be a JSON object, got {type(meta).__name__}")
    return check_meta(path, meta)


def check_meta(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Presence and types of the metadata fields (defaults for the optional ones)."""
    version = meta.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise ValueError(
            f"{path}: plan format version {version!r} is not supported "
            f"(this hardbatch reads version {FORMAT_VERSION})"
        )
    for key in ("method", "n_samples", "batch_size"):
        if key not in meta:
            raise _refuse(path, f"metadata lacks {key!r}")
    if not isinstance(meta["method"], str) or not meta["method"]:
        raise _refuse(path, f"method must be a non-empty string, got {meta['method']!r}")
    for key, minimum in (("n_samples", 1), ("batch_size", 1)):
        value = meta[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _refuse(path, f"{key} must be an integer >= {minimum}, got {value!r}")
    seed = meta.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
        raise _refuse(path, f"seed must be null or a non-negative integer, got {seed!r}")
    checks = {
        "drop_last": (bool, False),
        "epoch_rule": ((str, type(None)), None),
        "params": (dict, {}),
        "info": (dict, {}),
    }
    out = dict(meta)
    for key, (kind, default) in checks.items():
        value = meta.get(key, default)
        if not isinstance(value, kind):
            raise _refuse(path, f"{key} has the wrong type ({type(value).__name__})")
        out[key] = value
    out["seed"] = seed
    return out


def _check_shapes(path: Path, meta: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> None:
    """Array shapes against ``n_samples`` and ``batch_size``, from the headers alone."""
    n, b = meta["n_samples"], meta["batch_size"]
    for name, ndim in {"batches": 2, **ARRAY_FIELDS}.items():
        if name in shapes and len(shapes[name]) != ndim:
            raise _refuse(path, f"{name} must be {ndim}-D, got shape {shapes[name]}")
    rows, width = shapes["batches"]
    if width != b:
        raise _refuse(path, f"batches have {width} columns but batch_size={b}")
    if "cluster_groups" in shapes:
        if "clusters" not in shapes:
            raise _refuse(path, "cluster_groups without clusters")
        n_clusters, k = shapes["clusters"]
        if shapes["cluster_groups"] != (n_clusters,):
            raise _refuse(path, f"cluster_groups must have shape ({n_clusters},)")
        if not n_clusters <= n <= n_clusters * k or rows > n:
            raise _refuse(path, f"n_samples={n} disagrees with {n_clusters} clusters of {k}")
    else:
        # Ungrouped plans are cut like cut_order: the row count follows from N exactly.
        expected = n // b + (1 if n % b and not meta["drop_last"] else 0)
        if rows != expected:
            raise _refuse(
                path,
                f"n_samples={n} with batch_size={b} (drop_last={meta['drop_last']}) makes "
                f"{expected} batches, the file holds {rows}",
            )
    if "clusters" in shapes:
        n_clusters, k = shapes["clusters"]
        if not n_clusters <= n <= n_clusters * k:
            raise _refuse(path, f"n_samples={n} disagrees with {n_clusters} clusters of {k}")
    for name in ("order", "duplicate_ids"):
        if name in shapes and shapes[name] != (n,):
            raise _refuse(path, f"{name} must have shape ({n},), got {shapes[name]}")
    if "hard_negatives" in shapes:
        rows_hn, depth = shapes["hard_negatives"]
        if rows_hn != n or depth >= n:
            raise _refuse(
                path, f"hard_negatives must have shape ({n}, h < {n}), got {(rows_hn, depth)}"
            )
