"""JSON for numpy values: the one fallback used by plan files and the CLI's JSON reports."""

from __future__ import annotations

from typing import Any

import numpy as np


def to_jsonable(value: Any) -> Any:
    """``json.dumps(..., default=to_jsonable)`` fallback for what ``json`` cannot write.

    Parameters
    ----------
    value : Any
        A value ``json`` met and cannot encode itself.

    Returns
    -------
    Any
        A numpy scalar as its Python value, a numpy array as nested lists, anything else as
        its ``str`` (so a plan's ``params``/``info`` never fail to save).
    """
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
