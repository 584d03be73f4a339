"""The evidence benchmark's loss and ablation filter, against a loop reference."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from evidence.report import _paired, ablation_table  # noqa: E402
from evidence.students import FrozenHeadStudent, info_nce  # noqa: E402


def info_nce_loop(q, t, keep, temperature):
    """Symmetric InfoNCE by a loop: query i's candidates are the targets j with keep[i, j]."""
    b = len(q)
    total = 0.0
    for i in range(b):
        cand = [j for j in range(b) if keep[i, j]]
        logits = torch.stack([q[i] @ t[j] for j in cand]) / temperature
        total += -(logits[cand.index(i)] - torch.logsumexp(logits, 0))
    for j in range(b):
        cand = [i for i in range(b) if keep[i, j]]
        logits = torch.stack([t[j] @ q[i] for i in cand]) / temperature
        total += -(logits[cand.index(j)] - torch.logsumexp(logits, 0))
    return total / (2 * b)


def test_batch_mask_drops_pairs_from_both_directions():
    gen = torch.Generator().manual_seed(0)
    q = torch.nn.functional.normalize(torch.randn(6, 8, generator=gen), dim=1)
    t = torch.nn.functional.normalize(torch.randn(6, 8, generator=gen), dim=1)
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[0, 3] = mask[4, 1] = mask[2, 5] = True
    got = info_nce(q, t, batch_mask=mask, temperature=0.1)
    want = info_nce_loop(q, t, ~mask.numpy(), 0.1)
    assert torch.allclose(got, want, atol=1e-5)
    plain = info_nce(q, t, temperature=0.1)
    assert torch.allclose(plain, info_nce_loop(q, t, np.ones((6, 6), bool), 0.1), atol=1e-5)


def test_filter_counts_and_masks_teacher_suspects():
    # Targets 0 and 1 are the same vector: for query 0, target 1 scores like its positive.
    feats = np.eye(4, 4, dtype=np.float32)
    feats_t = feats.copy()
    feats_t[1] = feats_t[0]
    features = {"train": (feats, feats_t)}
    ids = np.arange(4)
    losses = {}
    for fn_filter in (False, True):
        student = FrozenHeadStudent(features, seed=0, hidden=4, fn_filter=fn_filter)
        losses[fn_filter], _, _ = student.step(ids, None)
        # The one suspect: (query 0, target 1), teacher 1.0 > 0.95 × 1.0 (query 1's positive
        # scores 0, as do its negatives: not above). Of 4 × 3 negative pairs.
        assert student.fn_pairs == 1 and student.neg_pairs == 12
    # Same initial heads: dropping target 1 from query 0's candidates lowers the loss.
    assert losses[True] < losses[False]


def test_paired_difference_and_ablation_table():
    def run(method, seed, mrr, arm="plain"):
        return {"method": method, "seed": seed, "test": {"mrr": mrr}, "ablation": arm}

    base = [run("random", 0, 0.50), run("random", 1, 0.60)]
    other = [run("gcbs", 0, 0.52), run("gcbs", 1, 0.63)]
    assert _paired(base, other, "mrr") == "+2.5 ± 0.7"
    runs = (
        base
        + other
        + [run(r["method"], r["seed"], r["test"]["mrr"] + 0.01, "filtered") for r in base + other]
    )
    table = ablation_table(runs, "mrr")
    assert table.count("\n") == 3  # header, rule, two methods
    gcbs_row = "| GCBS (epoch refresh) | 2 | 57.5 ± 7.8 | 58.5 ± 7.8 | +1.0 ± 0.0 | +2.5 ± 0.7 |"
    assert gcbs_row + " +2.5 ± 0.7 | – |" in table
