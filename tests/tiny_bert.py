"""A tiny offline BERT and sentence-transformers model for the tests (nothing downloaded).

The tokenizer is built from a vocabulary dict: newer transformers (5.x) ignore
``BertTokenizerFast(vocab_file=...)``, and a tokenizer that maps every word to ``[UNK]`` embeds
all texts of one length alike. Import after ``pytest.importorskip("sentence_transformers")``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from sentence_transformers import SentenceTransformer
from transformers import BertConfig, BertModel, BertTokenizerFast

try:  # sentence-transformers >= 6 layout
    from sentence_transformers.base.modules.transformer import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling
except ImportError:  # 3.x - 5.x
    from sentence_transformers.models import Pooling, Transformer

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def save_tiny_bert(
    path: Path,
    words: list[str],
    *,
    hidden: int = 16,
    max_position_embeddings: int = 32,
    dropout: bool = True,
    **config: Any,
) -> str:
    """Save a seeded 1-layer BERT (``hidden`` wide) whose tokenizer knows ``words``."""
    vocab = [*SPECIAL, *dict.fromkeys(words)]
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)})
    assert "[UNK]" not in tokenizer.tokenize(" ".join(vocab[len(SPECIAL) :]))
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    if not dropout:
        config = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, **config}
    bert = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=max_position_embeddings,
        **config,
    )
    BertModel(bert).save_pretrained(path)
    return str(path)


def save_tiny_sentence_transformer(
    bert_path: Path, out: Path, words: list[str], *, hidden: int = 16, max_seq_length: int = 48
) -> Path:
    """Save a sentence-transformers model (tiny BERT + mean pooling) to ``out``."""
    save_tiny_bert(bert_path, words, hidden=hidden, max_position_embeddings=64)
    transformer = Transformer(str(bert_path), max_seq_length=max_seq_length)
    model = SentenceTransformer(modules=[transformer, Pooling(hidden, "mean")], device="cpu")
    model.save(str(out))
    return out
