"""Text pairs in, ordered training files out.

* :func:`read_pairs` reads a file of (query, target) text pairs — JSON Lines, CSV/TSV, Parquet
  or a Hugging Face dataset saved to disk — into :class:`TextPairs`.
* :func:`embed_pairs` encodes both columns with a sentence-transformers model into
  ``queries.npy`` / ``targets.npy`` (float16) with a resumable chunk cache.
* :func:`export_plan` writes the rows of the pairs in plan order, one block per epoch, with
  ``epoch`` and ``batch`` columns, for trainers that hardbatch has no adapter for.

Parquet and saved Hugging Face datasets need the optional ``pyarrow`` / ``datasets`` packages
(``pip install 'hardbatch[io]'``); JSON Lines and CSV need nothing beyond the core install.
"""

from __future__ import annotations

from .embed import embed_pairs, model_identity
from .export import export_plan, iter_export_rows
from .pairs import FORMATS, TextPairs, detect_format, read_pairs

__all__ = [
    "FORMATS",
    "TextPairs",
    "detect_format",
    "embed_pairs",
    "export_plan",
    "iter_export_rows",
    "model_identity",
    "read_pairs",
]
