"""Input checks shared by every stage.

Every public entry point calls these before any heavy work, so bad input fails fast with a
``ValueError`` that names the problem instead of a traceback from deep inside numpy or torch.
Embeddings are read in row blocks, so a memory-mapped ``.npy`` is never loaded whole here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

#: Rows read at a time by the validation pass (bounded memory for memmaps).
_CHECK_ROWS = 16384

ArrayLike = Any  # numpy array, numpy memmap or torch tensor, shape (N, d)


def n_rows(a: ArrayLike) -> int:
    """Number of rows of an array-like (numpy, memmap, torch)."""
    return int(a.shape[0])


def check_embeddings(a: ArrayLike, name: str = "embeddings") -> np.ndarray:
    """Check an (N, d) embedding matrix and return its row norms.

    Parameters
    ----------
    a : numpy array, numpy memmap or torch tensor of shape (N, d)
        Floating point (float16, float32 or float64).
    name : str
        Used in error messages (``"queries"``, ``"targets"``).

    Returns
    -------
    norms : np.ndarray of shape (N,), float64
        Euclidean norm of every row (reused for cosine normalisation).

    Raises
    ------
    ValueError
        Not 2-D, empty, non-floating dtype, NaN/inf values or an all-zero row.
    """
    # No silent conversion of lists: every later stage indexes rows of the caller's array.
    if not isinstance(a, (np.ndarray, torch.Tensor)):
        raise ValueError(
            f"{name} must be a numpy array, numpy memmap or torch tensor of shape (N, d), "
            f"got {type(a).__name__}"
        )
    shape = tuple(a.shape)
    if len(shape) != 2:
        raise ValueError(f"{name} must be 2-D with shape (N, d), got shape {shape}")
    if shape[0] == 0 or shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {shape}")
    if isinstance(a, torch.Tensor):
        if not a.is_floating_point():
            raise ValueError(f"{name} must be a floating point tensor, got dtype {a.dtype}")
    elif not np.issubdtype(a.dtype, np.floating):
        raise ValueError(
            f"{name} must have a floating dtype (float16/float32/float64), got {a.dtype}"
        )
    norms = np.empty(shape[0], dtype=np.float64)
    for start in range(0, shape[0], _CHECK_ROWS):
        # float32 on the CPU, as the similarity stage computes: multi-threaded and cheap.
        block = a[start : start + _CHECK_ROWS]
        if isinstance(block, torch.Tensor):
            block = block.detach().to("cpu", torch.float32)
        else:
            block = np.asarray(block, dtype=np.float32)
            # torch warns on read-only arrays (memmaps opened with mode "r"): copy those blocks.
            block = torch.from_numpy(block if block.flags.writeable else block.copy())
        block_norms = torch.linalg.vector_norm(block, dim=1)
        # A NaN or inf anywhere makes the row norm non-finite: one cheap reduction finds both.
        bad = ~torch.isfinite(block_norms)
        if bool(bad.any()):
            row = start + int(torch.nonzero(bad)[0, 0])
            if bool(torch.isfinite(block[row - start]).all()):
                raise ValueError(
                    f"{name} row {row} has a norm beyond the float32 range; rescale the embeddings"
                )
            raise ValueError(
                f"{name} contains NaN or inf values (first in row {row}; values beyond the "
                "float32 range count as inf)"
            )
        zero = torch.nonzero(block_norms == 0)
        if zero.numel():
            row = start + int(zero[0, 0])
            if bool((block[row - start] != 0).any()):
                # Not zero, but its squared norm underflows float32 (e.g. values of 1e-30).
                raise ValueError(
                    f"{name} row {row} has a near-zero norm (it underflows float32); "
                    "cosine similarity is undefined for it: rescale the embeddings"
                )
        norms[start : start + len(block)] = block_norms.numpy()
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise ValueError(
            f"{name} has {zero.size} all-zero row(s) (first: row {int(zero[0])}); "
            "cosine similarity is undefined for them"
        )
    return norms


def check_pair(queries: ArrayLike, targets: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Check paired embeddings: both valid, same N and same d. Returns both row norms."""
    q_norms = check_embeddings(queries, "queries")
    t_norms = check_embeddings(targets, "targets")
    if queries.shape[0] != targets.shape[0]:
        raise ValueError(
            f"queries and targets must have the same number of rows (row i of queries is the "
            f"positive of row i of targets), got {queries.shape[0]} and {targets.shape[0]}"
        )
    if queries.shape[1] != targets.shape[1]:
        raise ValueError(
            f"queries and targets must have the same dimension, got {queries.shape[1]} "
            f"and {targets.shape[1]}"
        )
    return q_norms, t_norms


def check_batch_size(batch_size: Any, n_samples: int | None = None) -> int:
    """Check ``2 <= batch_size <= n_samples`` (the upper bound only when N is given) and return
    it as int."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise ValueError(f"batch_size must be an integer, got {batch_size!r}")
    batch_size = int(batch_size)
    if batch_size <= 1:
        raise ValueError(
            f"batch_size must be at least 2 (a batch needs in-batch negatives), got {batch_size}"
        )
    if n_samples is not None and n_samples < batch_size:
        raise ValueError(
            f"N={n_samples} samples is smaller than batch_size={batch_size}: "
            "not even one full batch"
        )
    return batch_size


def check_seed(seed: Any) -> int | None:
    """Check a seed: None or a non-negative integer."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be None or a non-negative integer, got {seed!r}")
    return int(seed)


def check_fraction(value: Any, name: str, *, low: float = 0.0, high: float = 1.0) -> float:
    """Check ``low < value < high`` (open interval) and return it as float."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in ({low}, {high}), got {value!r}") from None
    if not (low < value < high):
        raise ValueError(f"{name} must be in the open interval ({low}, {high}), got {value}")
    return value


def check_positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    """Check an integer ``>= minimum`` and return it."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def check_optional_positive_int(value: Any, name: str, *, minimum: int = 1) -> int | None:
    """``None``, or an integer ``>= minimum``."""
    return None if value is None else check_positive_int(value, name, minimum=minimum)


def check_bool(value: Any, name: str) -> bool:
    """``True`` or ``False`` (numpy booleans too; not 0/1 or strings)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_optional_bool(value: Any, name: str) -> bool | None:
    """``None``, ``True`` or ``False``."""
    return None if value is None else check_bool(value, name)


def check_choice(value: Any, name: str, choices: tuple[Any, ...]) -> Any:
    """``value`` must be one of ``choices``."""
    try:
        ok = value in choices
    except TypeError:  # an unhashable or odd value compares badly
        ok = False
    if not ok:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_device(device: Any, name: str = "device") -> str | torch.device | None:
    """A torch device that exists on this machine (``None`` or ``"auto"``: the default).

    Raises
    ------
    ValueError
        Not a device name (``"bogus"``), or a CUDA/MPS device this machine does not have.
    """
    if device is None or device == "auto":
        return device
    if not isinstance(device, (str, torch.device)):
        raise ValueError(
            f"{name} must be a torch device name such as 'cpu' or 'cuda', got {device!r}"
        )
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"{name}={device!r} is not a torch device ({exc})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{name}={device!r}: CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"{name}={device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{name}={device!r}: MPS is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"{name}={device!r}: hardbatch runs on cpu, cuda or mps devices")
    return device
