"""Small torch helpers: device choice and moving row blocks of any array-like to a device."""

from __future__ import annotations

import numpy as np
import torch

from .validation import ArrayLike


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` or ``"auto"`` picks CUDA when available, else CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def rows_to_tensor(a: ArrayLike, index: slice | np.ndarray, device: torch.device) -> torch.Tensor:
    """Rows ``a[index]`` as a float32 tensor on ``device``.

    Only the selected rows are read, so a numpy memmap is streamed, not loaded whole. The
    result may share memory with ``a``: never modify it in place.
    """
    if isinstance(a, torch.Tensor):
        if isinstance(index, np.ndarray):
            index = torch.as_tensor(index, device=a.device)
        return a[index].detach().to(device=device, dtype=torch.float32)
    block = np.ascontiguousarray(np.asarray(a[index], dtype=np.float32))
    if not block.flags.writeable:
        block = block.copy()  # torch warns on read-only arrays (memmaps opened with mode "r")
    return torch.from_numpy(block).to(device)


def normalized_rows(
    a: ArrayLike,
    index: slice | np.ndarray,
    inv_norms: np.ndarray | None,
    device: torch.device,
) -> torch.Tensor:
    """Rows ``a[index]`` as float32 on ``device``, scaled by ``inv_norms[index]`` when given.

    ``inv_norms`` is ``None`` for the dot-product metric (no normalisation).
    """
    block = rows_to_tensor(a, index, device)
    if inv_norms is not None:
        scale = torch.from_numpy(inv_norms[index].astype(np.float32)).to(device)
        # Not in place: the block may be a view of the caller's array.
        block = block * scale[:, None]
    return block
