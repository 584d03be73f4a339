"""Sampler state that travels with a training checkpoint.

:meth:`hardbatch.HardBatchSampler.state_dict` returns plain data: numbers, strings, lists,
dicts and numpy arrays; a plan is stored as such data by :func:`plan_to_state`.
:func:`save_state` writes it with ``torch.save`` (arrays as tensors) and :func:`load_state`
reads it back with ``torch.load(weights_only=True)``: nothing is unpickled, so a checkpoint
folder cannot run code when it is resumed.
"""

from __future__ import annotations

import json
import os
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ._json import to_jsonable
from .plans import BatchPlan

#: Version of the sampler state written by :meth:`hardbatch.HardBatchSampler.state_dict`.
STATE_VERSION = 1

#: BatchPlan fields stored as JSON text (free-form dicts).
_JSON_FIELDS = ("params", "info")


def plan_to_state(plan: BatchPlan) -> dict[str, Any]:
    """A :class:`BatchPlan` as plain data (arrays stay numpy arrays)."""
    state: dict[str, Any] = {}
    for f in fields(plan):
        value = getattr(plan, f.name)
        if f.name in _JSON_FIELDS:
            value = json.dumps(value, default=to_jsonable)
        elif isinstance(value, np.generic):
            value = value.item()
        state[f.name] = value
    return state


def plan_from_state(state: dict[str, Any]) -> BatchPlan:
    """The :class:`BatchPlan` stored by :func:`plan_to_state`."""
    values = dict(state)
    for name in _JSON_FIELDS:
        values[name] = json.loads(values[name])
    return BatchPlan(**values)


def pack_rows(rows: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Variable-length rows of sample ids as two arrays (ids, lengths)."""
    ids = np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)
    return {"ids": ids.astype(np.int64), "lengths": np.array([len(r) for r in rows], np.int64)}


def unpack_rows(packed: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The rows :func:`pack_rows` packed."""
    if not len(packed["lengths"]):
        return []
    bounds = np.cumsum(packed["lengths"])[:-1]
    return list(np.split(np.asarray(packed["ids"], dtype=np.int64), bounds))


def _to_torch(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _to_torch(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_torch(v) for v in obj]
    return obj


def _to_numpy(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {k: _to_numpy(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_numpy(v) for v in obj]
    return obj


def save_state(path: str | os.PathLike, state: Any) -> Path:
    """Write a sampler state (or a list/dict of them) to ``path``."""
    path = Path(path)
    torch.save(_to_torch(state), path)
    return path


def load_state(path: str | os.PathLike) -> Any:
    """Read what :func:`save_state` wrote (``weights_only=True``: plain data only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no hardbatch sampler state at {path}")
    return _to_numpy(torch.load(path, weights_only=True))


__all__ = [
    "STATE_VERSION",
    "load_state",
    "pack_rows",
    "plan_from_state",
    "plan_to_state",
    "save_state",
    "unpack_rows",
]
