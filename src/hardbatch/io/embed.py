"""Encode text pairs with a sentence-transformers model, with a resumable on-disk cache.

:func:`embed_pairs` writes ``OUT/queries.npy`` and ``OUT/targets.npy`` (float16, N × d).

The cache lives in ``OUT/.cache/``: ``manifest.json`` holds the key of the run — the data
fingerprint (:attr:`TextPairs.fingerprint`), the model identity (:func:`model_identity`), the
normalisation, max length, prompts and chunk size — and every chunk of ``chunk_size`` texts is
saved as ``queries_000003.npy`` / ``targets_000003.npy`` the moment it is encoded (written to
a temporary name and renamed, so a killed run never leaves half a chunk). A rerun with the same
key encodes only the missing chunks; a rerun with another key (a changed file, model or
option) warns which part of the key changed and starts over. Once every chunk is there, they
are copied into the two output files through a memory map (one chunk in memory at a time), the
manifest is marked complete and the chunks are deleted; a later call with the same key returns
the files without loading the model.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from .pairs import TextPairs

if TYPE_CHECKING:  # pragma: no cover
    from sentence_transformers import SentenceTransformer

#: Version of the cache layout; a cache of another version is re-encoded.
CACHE_VERSION = 1
#: Files up to this size are hashed by content for a model's identity; larger ones (weights)
#: by size and modification time (hashing gigabytes of weights at every call would be slow).
_CONTENT_HASH_MAX = 1 << 20
_SIDES = ("queries", "targets")


class CacheInvalidatedWarning(UserWarning):
    """An embedding cache was made with another file, model or option and is re-encoded."""


def model_identity(model: str | os.PathLike | SentenceTransformer) -> dict[str, Any]:
    """What identifies a model for the embedding cache.

    A path: the resolved path and a hash of every file under it (relative name, size, and the
    content of files up to 1 MiB — configs, tokenizer — or the modification time of larger
    ones). A model object: its class, and a hash of its module tree and every parameter and
    buffer (a fine-tuned copy of the same checkpoint is another model).
    """
    if isinstance(model, (str, os.PathLike)):
        root = Path(model)
        if not root.exists():
            raise ValueError(
                f"model not found: {root} (models are loaded offline from a local path; "
                "save one with SentenceTransformer(...).save(PATH))"
            )
        root = root.resolve()
        h = hashlib.sha256()
        files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else [root]
        for p in files:
            st = p.stat()
            h.update(f"{p.relative_to(root) if root.is_dir() else p.name}\0{st.st_size}\0".encode())
            if st.st_size <= _CONTENT_HASH_MAX:
                h.update(p.read_bytes())
            else:
                h.update(str(st.st_mtime_ns).encode())
        return {"path": str(root), "files": len(files), "hash": h.hexdigest()}
    import torch

    h = hashlib.sha256(repr(model).encode())
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            t = tensor.detach().cpu().contiguous()
            h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"class": type(model).__name__, "hash": h.hexdigest()}


def embed_pairs(
    pairs: TextPairs,
    model: str | os.PathLike | SentenceTransformer,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 64,
    device: str | None = None,
    normalize: bool = True,
    max_length: int | None = None,
    query_prompt: str | None = None,
    target_prompt: str | None = None,
    chunk_size: int = 4096,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Encode the queries and targets of ``pairs``; resume an interrupted run.

    Parameters
    ----------
    pairs : TextPairs
        From :func:`~hardbatch.io.read_pairs`.
    model : str, PathLike or SentenceTransformer
        A model object, or the local folder of a saved sentence-transformers model (loaded
        with ``SentenceTransformer(path)``; nothing is downloaded: set ``HF_HUB_OFFLINE=1``
        to make sure).
    out_dir : str or PathLike
        Folder for ``queries.npy``, ``targets.npy`` and the ``.cache`` subfolder.
    batch_size : int
        Texts per forward pass.
    device : str, optional
        ``"cuda"``, ``"cpu"``, ...; default: the model's.
    normalize : bool
        L2-normalise the embeddings (before the float16 cast).
    max_length : int, optional
        Truncate texts to this many tokens (the model's ``max_seq_length``); default: the
        model's own.
    query_prompt, target_prompt : str, optional
        Text prepended to every query / target (models trained with prefixes, e.g.
        ``"query: "``).
    chunk_size : int
        Texts per cached chunk: what an interruption can lose.
    progress : bool
        A tqdm bar over the texts (resumed chunks count as done).

    Returns
    -------
    queries, targets : np.ndarray of shape (N, d), float16
        Read-only memory maps of the two output files.
    """
    for name, value in (("batch_size", batch_size), ("chunk_size", chunk_size)):
        if not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if max_length is not None and (not isinstance(max_length, (int, np.integer)) or max_length < 1):
        raise ValueError(f"max_length must be a positive integer or None, got {max_length!r}")
    if len(pairs) == 0:
        raise ValueError("no pairs to encode")
    out = Path(out_dir)
    cache = out / ".cache"
    key = {
        "version": CACHE_VERSION,
        "n": len(pairs),
        "data": pairs.fingerprint,
        "model": model_identity(model),
        "normalize": bool(normalize),
        "max_length": None if max_length is None else int(max_length),
        "query_prompt": query_prompt,
        "target_prompt": target_prompt,
        "chunk_size": int(chunk_size),
    }
    finals = {side: out / f"{side}.npy" for side in _SIDES}
    manifest = _read_manifest(cache)
    if manifest is not None and manifest.get("key") != key:
        changed = _changed(manifest.get("key") or {}, key)
        warnings.warn(
            f"embedding cache in {out} was made with another {changed}: re-encoding",
            CacheInvalidatedWarning,
            stacklevel=2,
        )
        shutil.rmtree(cache)
        manifest = None
    if (
        manifest is not None
        and manifest.get("complete")
        and all(p.exists() for p in finals.values())
    ):
        return _load(finals, len(pairs))

    cache.mkdir(parents=True, exist_ok=True)
    _write_json(cache / "manifest.json", {"key": key, "complete": False})
    for path in finals.values():  # outputs of an older key must not outlive an interruption
        path.unlink(missing_ok=True)
    n = len(pairs)
    n_chunks = -(-n // chunk_size)
    todo = [
        (side, c)
        for side in _SIDES
        for c in range(n_chunks)
        if not _chunk_path(cache, side, c).exists()
    ]
    done_texts = sum(
        _chunk_len(n, chunk_size, c) for side in _SIDES for c in range(n_chunks)
    ) - sum(_chunk_len(n, chunk_size, c) for _, c in todo)
    if todo:
        st_model = _load_model(model, device)
        restore = st_model.max_seq_length
        if max_length is not None:
            st_model.max_seq_length = int(max_length)
        texts = {"queries": pairs.queries, "targets": pairs.targets}
        prompts = {"queries": query_prompt, "targets": target_prompt}
        try:
            with tqdm(
                total=2 * n, initial=done_texts, desc="embed", unit="text", disable=not progress
            ) as bar:
                for side, c in todo:
                    lo = c * chunk_size
                    chunk = texts[side][lo : lo + chunk_size]
                    emb = st_model.encode(
                        chunk,
                        batch_size=batch_size,
                        device=device,
                        normalize_embeddings=normalize,
                        prompt=prompts[side],
                        convert_to_numpy=True,
                        show_progress_bar=False,
                    )
                    emb = np.asarray(emb, dtype=np.float32)
                    if emb.ndim != 2 or emb.shape[0] != len(chunk):
                        raise ValueError(
                            f"model returned embeddings of shape {emb.shape} for {len(chunk)} texts"
                        )
                    if not np.isfinite(emb).all():
                        raise ValueError(
                            f"model returned non-finite embeddings for {side} chunk {c}"
                        )
                    _save_npy(_chunk_path(cache, side, c), emb.astype(np.float16))
                    bar.update(len(chunk))
        finally:
            st_model.max_seq_length = restore  # a caller's object leaves as it came
    _assemble(cache, finals, n, n_chunks)
    _write_json(cache / "manifest.json", {"key": key, "complete": True})
    for side in _SIDES:
        for c in range(n_chunks):
            _chunk_path(cache, side, c).unlink(missing_ok=True)
    return _load(finals, n)


# --------------------------------------------------------------------------- helpers
def _load_model(model: Any, device: str | None) -> SentenceTransformer:
    if not isinstance(model, (str, os.PathLike)):
        return model
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as err:  # pragma: no cover - installed in the test env
        raise ImportError(
            "embedding text needs sentence-transformers: "
            "pip install 'hardbatch[sentence-transformers]'"
        ) from err
    return SentenceTransformer(str(model), device=device, local_files_only=True)


def _chunk_path(cache: Path, side: str, c: int) -> Path:
    return cache / f"{side}_{c:06d}.npy"


def _chunk_len(n: int, chunk_size: int, c: int) -> int:
    return min(chunk_size, n - c * chunk_size)


def _save_npy(path: Path, array: np.ndarray) -> None:
    """Write an array under a temporary name, then rename: a kill never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array)
    os.replace(tmp, path)


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _read_manifest(cache: Path) -> dict | None:
    path = cache / "manifest.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {"key": None}  # unreadable: treated as another key, so re-encoded


def _changed(old: dict, new: dict) -> str:
    """Which part of the cache key changed, in words."""
    words = {
        "data": "data file (its texts changed)",
        "n": "number of pairs",
        "model": "model",
        "normalize": "normalize setting",
        "max_length": "max_length",
        "query_prompt": "query prompt",
        "target_prompt": "target prompt",
        "chunk_size": "chunk_size",
        "version": "cache version",
    }
    diff = [words[k] for k in words if old.get(k) != new.get(k)]
    return ", ".join(diff) or "cache key"


def _assemble(cache: Path, finals: dict[str, Path], n: int, n_chunks: int) -> None:
    """Copy the chunks of each side into its output file, one chunk in memory at a time."""
    for side, final in finals.items():
        first = np.load(_chunk_path(cache, side, 0), mmap_mode="r")
        tmp = final.with_name(final.name + ".tmp")
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n, first.shape[1]))
        lo = 0
        for c in range(n_chunks):
            chunk = np.load(_chunk_path(cache, side, c), mmap_mode="r")
            if chunk.shape[1] != first.shape[1]:
                raise ValueError(f"cached chunk {c} of {side} has dimension {chunk.shape[1]}")
            out[lo : lo + len(chunk)] = chunk
            lo += len(chunk)
        out.flush()
        del out
        os.replace(tmp, final)


def _load(finals: dict[str, Path], n: int) -> tuple[np.ndarray, np.ndarray]:
    arrays = tuple(np.load(finals[side], mmap_mode="r") for side in _SIDES)
    for side, a in zip(_SIDES, arrays, strict=True):
        if a.shape[0] != n:
            raise ValueError(f"{finals[side]} has {a.shape[0]} rows for {n} pairs")
    return arrays  # type: ignore[return-value]
