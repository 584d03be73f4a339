"""hardbatch.losses: the false-negative mask and masked InfoNCE against slow loop references."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import hardbatch  # noqa: E402
from hardbatch.losses import MaskedInfoNCELoss, false_negative_mask, info_nce  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


# ---------------------------------------------------------------------------- references
def cosine_loop(q, t):
    """s(i, j) by a double loop over plain Python floats."""
    q = q.double().tolist()
    t = t.double().tolist()

    def cos(a, b):
        dot = sum(x * y for x, y in zip(a, b, strict=True))
        return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))

    return [[cos(qi, tj) for tj in t] for qi in q]


def mask_loop(q, t, rule, margin, ids=None):
    """The rules as written in the docstring, one pair at a time."""
    s = cosine_loop(q, t)
    b, b_all = len(s), len(s[0])
    out = np.zeros((b, b_all), dtype=bool)
    for i in range(b):
        for j in range(b_all):
            if j == i:
                continue
            if rule == "relative" and s[i][i] > 0 and s[i][j] > margin * s[i][i]:
                out[i, j] = True
            if rule == "absolute" and s[i][j] > s[i][i] - margin:
                out[i, j] = True
            if ids is not None and j < len(ids) and ids[i] == ids[j]:
                out[i, j] = True
    return out


def info_nce_loop(q, t, keep, temperature, symmetric):
    """Per-row log-sum-exp over the kept candidates (keep: (B, B') bool)."""
    s = torch.tensor(cosine_loop(q, t), dtype=torch.float64)
    b, b_all = s.shape
    q2t = 0.0
    for i in range(b):
        cand = [j for j in range(b_all) if keep[i, j]]
        logits = s[i, cand] / temperature
        q2t += -(logits[cand.index(i)] - torch.logsumexp(logits, 0))
    q2t /= b
    if not symmetric:
        return q2t
    t2q = 0.0
    for j in range(b):
        cand = [i for i in range(b) if keep[i, j]]
        logits = s[cand, j] / temperature
        t2q += -(logits[cand.index(j)] - torch.logsumexp(logits, 0))
    return (q2t + t2q / b) / 2


def pairs(b, extra, d=8, noise=1.0, seed=0):
    """Random pairs: target i = query i + noise (positives mostly score > 0), then extras."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, d, generator=gen, dtype=torch.float64)
    t = torch.cat(
        [
            q + noise * torch.randn(b, d, generator=gen, dtype=torch.float64),
            torch.randn(extra, d, generator=gen, dtype=torch.float64),
        ]
    )
    return q, t


# ---------------------------------------------------------------------------- mask
@pytest.mark.parametrize(
    "rule,margin",
    [("relative", 0.95), ("relative", 0.5), ("absolute", 0.1), ("absolute", -0.1), ("none", 0.95)],
)
@pytest.mark.parametrize("extra", [0, 5])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mask_matches_loop(rule, margin, extra, seed):
    # Noise 3: some positives score <= 0 (seeds 0, 1), exercising the relative rule's guard.
    q, t = pairs(12, extra, noise=3.0, seed=seed)
    got = false_negative_mask(q, t, rule=rule, margin=margin)
    assert got.dtype == torch.bool and got.shape == (12, 12 + extra)
    want = mask_loop(q, t, rule, margin)
    np.testing.assert_array_equal(got.numpy(), want)
    assert not got[:, :12].diagonal().any()
    if rule != "none":
        assert want.any()  # the test exercises masking, not only an all-False mask


@pytest.mark.parametrize("rule", ["relative", "absolute", "none"])
@pytest.mark.parametrize("extra", [0, 4])
def test_mask_with_duplicate_ids_matches_loop(rule, extra):
    q, t = pairs(10, extra, seed=3)
    ids = np.array([0, 1, 2, 1, 4, 0, 6, 7, 7, 9])
    got = false_negative_mask(q, t, rule=rule, margin=0.9, duplicate_ids=ids)
    np.testing.assert_array_equal(got.numpy(), mask_loop(q, t, rule, 0.9, ids))
    # Pairs sharing an id are left out in both directions, whatever the scores.
    for i, j in [(1, 3), (3, 1), (0, 5), (5, 0), (7, 8), (8, 7)]:
        assert got[i, j]
    assert not got[:, :10].diagonal().any()


def test_duplicate_ids_of_all_targets_cover_the_extras():
    q, t = pairs(4, 3, seed=4)
    ids = torch.tensor([10, 11, 12, 13, 11, 99, 10])  # extra 4 repeats pair 1, extra 6 pair 0
    got = false_negative_mask(q, t, rule="none", duplicate_ids=ids)
    want = np.zeros((4, 7), dtype=bool)
    want[1, 4] = want[0, 6] = True
    np.testing.assert_array_equal(got.numpy(), want)
    # Length-B ids say nothing about the extras.
    short = false_negative_mask(q, t, rule="none", duplicate_ids=ids[:4])
    assert not short.any()


def test_relative_rule_skips_rows_whose_positive_scores_non_positive():
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # Row 0's positive is opposite to it (s = -1); rows 1, 2 have positives they score 1.
    t = torch.tensor([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    got = false_negative_mask(q, t, rule="relative", margin=0.95)
    # Row 0 scores targets 1 and 2 at 1 and 0, both above 0.95 × (-1): unguarded, the rule
    # would leave out both; guarded, row 0 leaves out nothing.
    assert not got[0].any()
    assert got[1].tolist() == [False, False, False]
    # The absolute rule has no such guard: s(0, j) > -1 - 0.1 for j = 1, 2.
    got_abs = false_negative_mask(q, t, rule="absolute", margin=0.1)
    assert got_abs[0].tolist() == [False, True, True]


def test_mask_scale_invariant_and_detached():
    q, t = pairs(8, 2, seed=5)
    q.requires_grad_(True)
    got = false_negative_mask(q, t)
    assert not got.requires_grad
    torch.testing.assert_close(got, false_negative_mask(3 * q.detach(), 0.5 * t))
    # float32 / numpy input gives the same answer here (no comparisons near the margin).
    same = false_negative_mask(q.detach().float().numpy(), t.float().numpy())
    torch.testing.assert_close(got, same)


def test_mask_from_scores():
    q, t = pairs(6, 2, seed=6)
    s = F.normalize(q, dim=1) @ F.normalize(t, dim=1).T
    torch.testing.assert_close(
        false_negative_mask(scores=s, margin=0.8), false_negative_mask(q, t, margin=0.8)
    )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(rule="percpos"), "rule must be one of"),
        (dict(margin=0.0), "margin must be > 0 for rule='relative'"),
        (dict(margin=-0.5), "margin must be > 0"),
        (dict(margin=float("nan")), "margin must be finite"),
        (dict(rule="absolute", margin=float("inf")), "margin must be finite"),
        (dict(margin="high"), "margin must be a number"),
        (dict(duplicate_ids=[0, 1]), "duplicate_ids must be 1-D of length 4"),
        (dict(duplicate_ids=[0.0, 1.0, 2.0, 3.0]), "duplicate_ids must be integers"),
    ],
)
def test_mask_rejects_bad_arguments(kwargs, match):
    q, t = pairs(4, 0)
    with pytest.raises(ValueError, match=match):
        false_negative_mask(q, t, **kwargs)


def test_mask_rejects_bad_embeddings():
    q, t = pairs(4, 2)
    bad = q.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match="queries contains NaN"):
        false_negative_mask(bad, t)
    bad_t = t.clone()
    bad_t[5, 0] = float("inf")
    with pytest.raises(ValueError, match="targets contains NaN or infinite"):
        false_negative_mask(q, bad_t)
    with pytest.raises(ValueError, match="targets must have at least as many rows"):
        false_negative_mask(q, t[:3])
    with pytest.raises(ValueError, match="same dimension"):
        false_negative_mask(q, t[:, :4])
    with pytest.raises(ValueError, match="queries must be 2-D"):
        false_negative_mask(q[0], t)
    with pytest.raises(ValueError, match="must be floating point"):
        false_negative_mask(q.long(), t)
    with pytest.raises(ValueError, match="not both"):
        false_negative_mask(q, t, scores=torch.zeros(4, 6))
    with pytest.raises(ValueError, match="scores must be"):
        false_negative_mask(scores=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="queries and targets are required"):
        false_negative_mask(q)


# ---------------------------------------------------------------------------- info_nce
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("extra", [0, 3])
@pytest.mark.parametrize("masked", [False, True])
def test_info_nce_matches_loop(symmetric, extra, masked):
    q, t = pairs(9, extra, noise=1.5, seed=7)
    mask = false_negative_mask(q, t, rule="relative", margin=0.7) if masked else None
    keep = np.ones((9, 9 + extra), dtype=bool) if mask is None else ~mask.numpy()
    if masked:
        assert not keep.all()
    got = info_nce(q, t, temperature=0.1, mask=mask, symmetric=symmetric)
    want = info_nce_loop(q, t, keep, 0.1, symmetric)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("extra", [0, 3])
def test_info_nce_without_mask_is_cross_entropy_on_cosine_logits(extra):
    q, t = pairs(7, extra, seed=8)
    logits = F.normalize(q, dim=1) @ F.normalize(t, dim=1).T / 0.05
    labels = torch.arange(7)
    want = F.cross_entropy(logits, labels)
    torch.testing.assert_close(info_nce(q, t, symmetric=False), want)
    both = (want + F.cross_entropy(logits[:, :7].T, labels)) / 2
    torch.testing.assert_close(info_nce(q, t), both)


def test_masked_pairs_get_no_gradient():
    q, t = pairs(6, 2, seed=9)
    q.requires_grad_(True)
    t.requires_grad_(True)
    mask = torch.zeros(6, 8, dtype=torch.bool)
    mask[:, 7] = True  # extra target 7 left out for every query: no influence at all
    mask[0, 3] = mask[2, 5] = True
    loss = info_nce(q, t, mask=mask)
    loss.backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(t.grad).all()
    assert torch.equal(t.grad[7], torch.zeros(8, dtype=torch.float64))
    assert t.grad[6].abs().sum() > 0  # the unmasked extra does get a gradient
    # Moving the fully masked extra target changes nothing.
    moved = t.detach().clone()
    moved[7] = torch.randn(8, dtype=torch.float64)
    assert torch.equal(info_nce(q.detach(), moved, mask=mask), loss.detach())
    # The gradient is that of the loop loss without the masked pairs (so the pair (0, 3)
    # contributes nothing, in either direction).
    q2 = q.detach().clone().requires_grad_(True)
    t2 = t.detach().clone().requires_grad_(True)
    info_nce_loop_autograd(q2, t2, ~mask.numpy(), 0.05).backward()
    torch.testing.assert_close(q.grad, q2.grad)
    torch.testing.assert_close(t.grad, t2.grad)


def info_nce_loop_autograd(q, t, keep, temperature):
    """Symmetric loop loss with autograd (cosines from torch ops, not Python floats)."""
    qn, tn = F.normalize(q, dim=1), F.normalize(t, dim=1)
    b, b_all = keep.shape
    total = 0.0
    for i in range(b):
        cand = [j for j in range(b_all) if keep[i, j]]
        logits = torch.stack([qn[i] @ tn[j] for j in cand]) / temperature
        total = total - (logits[cand.index(i)] - torch.logsumexp(logits, 0)) / b
    for j in range(b):
        cand = [i for i in range(b) if keep[i, j]]
        logits = torch.stack([tn[j] @ qn[i] for i in cand]) / temperature
        total = total - (logits[cand.index(j)] - torch.logsumexp(logits, 0)) / b
    return total / 2


def test_info_nce_rejects_bad_arguments():
    q, t = pairs(4, 1)
    for bad in (0, -0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature must be finite and > 0"):
            info_nce(q, t, temperature=bad)
    with pytest.raises(ValueError, match="mask must have shape"):
        info_nce(q, t, mask=torch.zeros(4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        info_nce(q, t, mask=torch.zeros(4, 5))
    diag = torch.zeros(4, 5, dtype=torch.bool)
    diag[2, 2] = True
    with pytest.raises(ValueError, match="leaves out a positive pair"):
        info_nce(q, t, mask=diag)
    bad_q = q.clone()
    bad_q[0, 0] = float("nan")
    with pytest.raises(ValueError, match="queries contains NaN"):
        info_nce(bad_q, t)


# ---------------------------------------------------------------------------- module
def test_module_self_mask_and_share():
    q, t = pairs(8, 2, noise=1.5, seed=10)
    loss_fn = MaskedInfoNCELoss(temperature=0.1, margin=0.7)
    assert loss_fn.last_masked_share_ is None
    q.requires_grad_(True)
    got = loss_fn(q, t)
    mask = false_negative_mask(q, t, margin=0.7)
    torch.testing.assert_close(got, info_nce(q, t, temperature=0.1, mask=mask))
    assert loss_fn.last_masked_share_ == int(mask.sum()) / (8 * 10 - 8)
    assert 0 < loss_fn.last_masked_share_ < 1
    got.backward()
    assert q.grad is not None


def test_module_given_mask_embeddings_and_ids():
    q, t = pairs(6, 0, seed=11)
    teacher_q, teacher_t = pairs(6, 0, noise=2.0, seed=12)
    ids = [0, 1, 2, 3, 4, 1]
    loss_fn = MaskedInfoNCELoss(rule="absolute", margin=0.2, mask_from="given", symmetric=False)
    got = loss_fn(q, t, teacher_q.numpy(), teacher_t.numpy(), duplicate_ids=ids)
    mask = false_negative_mask(teacher_q, teacher_t, rule="absolute", margin=0.2, duplicate_ids=ids)
    assert mask[1, 5] and mask[5, 1]
    torch.testing.assert_close(got, info_nce(q, t, mask=mask, symmetric=False))
    assert loss_fn.last_masked_share_ == int(mask.sum()) / 30


def test_module_rejects_bad_use():
    q, t = pairs(4, 0)
    with pytest.raises(ValueError, match="mask_from must be"):
        MaskedInfoNCELoss(mask_from="teacher")
    with pytest.raises(ValueError, match="rule must be one of"):
        MaskedInfoNCELoss(rule="gist")
    with pytest.raises(ValueError, match="temperature must be"):
        MaskedInfoNCELoss(temperature=0)
    with pytest.raises(ValueError, match="only with mask_from='given'"):
        MaskedInfoNCELoss()(q, t, q, t)
    with pytest.raises(ValueError, match="needs both mask_queries and mask_targets"):
        MaskedInfoNCELoss(mask_from="given")(q, t, q)
    with pytest.raises(ValueError, match="must have the rows of queries / targets"):
        MaskedInfoNCELoss(mask_from="given")(q, t, q[:3], t[:3])


# ---------------------------------------------------------------------------- benchmark
def test_benchmark_teacher_filter_is_this_rule():
    """The evidence benchmark's teacher filter (0.95 × positive) is false_negative_mask."""
    from evidence.students import teacher_suspects

    for seed in range(5):
        q, t = pairs(16, 6, noise=1.0, seed=20 + seed)
        fq, ft = F.normalize(q.float(), dim=1), F.normalize(t.float(), dim=1)
        got = teacher_suspects(fq, ft, 0.95)
        np.testing.assert_array_equal(got.numpy(), false_negative_mask(fq, ft).numpy())
        # The benchmark's original inline formula, on the rows whose positive scores > 0 (the
        # only rows where the library's relative rule applies at all).
        teacher = fq @ ft.T
        old = teacher > 0.95 * teacher.diagonal()[:, None]
        old[:, :16].fill_diagonal_(False)
        rows = teacher.diagonal() > 0
        assert rows.sum() >= 12 and old.any()
        np.testing.assert_array_equal(got[rows].numpy(), old[rows].numpy())


# ---------------------------------------------------------------------------- mask advice
def _mrr_loop(queries, targets):
    """Slow reference: rank of target i among all targets for query i (ties against it)."""
    q = np.asarray(queries, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    total = 0.0
    for i in range(len(q)):
        positive = q[i] @ t[i]
        rank = sum(1 for j in range(len(t)) if q[i] @ t[j] >= positive)
        total += 1.0 / rank
    return total / len(q)


def test_retrieval_mrr_matches_loop_reference():
    rng = np.random.default_rng(3)
    q = rng.normal(size=(1500, 8))
    t = q + rng.normal(scale=1.5, size=q.shape)
    assert hardbatch.losses.retrieval_mrr(q, t) == pytest.approx(_mrr_loop(q, t), abs=1e-12)
    # A tie counts against the positive: two identical targets give rank 2 to both rows.
    same = np.array([[1.0, 0.0], [1.0, 0.0]])
    assert hardbatch.losses.retrieval_mrr(same, same) == pytest.approx(0.5)
    # Above max_rows a seeded sample of the pairs is ranked among itself.
    a = hardbatch.losses.retrieval_mrr(q, t, max_rows=200, seed=1)
    rows = np.sort(np.random.default_rng([1, 7]).choice(1500, 200, replace=False))
    assert a == pytest.approx(_mrr_loop(q[rows], t[rows]), abs=1e-12)


def test_teacher_mask_advice_follows_the_ratio():
    rng = np.random.default_rng(0)
    q = rng.normal(size=(300, 16))
    sharp = (q, q + rng.normal(scale=0.5, size=q.shape))
    blurred = (q, q + rng.normal(scale=3.0, size=q.shape))
    passed = hardbatch.losses.teacher_mask_advice(student=sharp, teacher=blurred)
    assert not passed.use_mask and passed.ratio > 1.05 and "without" in passed.reason
    below = hardbatch.losses.teacher_mask_advice(student=blurred, teacher=sharp)
    assert below.use_mask and below.ratio < 1 and below.student_mrr < below.teacher_mrr
    # The same embeddings for both: a model scored before training, said loudly.
    with pytest.warns(UserWarning, match="after training"):
        equal = hardbatch.losses.teacher_mask_advice(student=sharp, teacher=sharp)
    assert equal.use_mask and equal.ratio == pytest.approx(1.0)
    with pytest.warns(UserWarning, match="after training"):
        assert not hardbatch.losses.teacher_mask_advice(sharp, sharp, max_ratio=0.9).use_mask


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_ratio": 0}, "max_ratio"),
        ({"max_ratio": "x"}, "max_ratio"),
        ({"student": (np.ones((3, 2)),)}, "student must be"),
        ({"teacher": (np.ones((4, 2)), np.ones((4, 2)))}, "same validation pairs"),
        ({"max_rows": 1}, "max_rows"),
    ],
)
@pytest.mark.filterwarnings("ignore:teacher_mask_advice")
def test_teacher_mask_advice_errors(kwargs, match):
    pair = (np.eye(3), np.eye(3))
    args = {"student": pair, "teacher": pair, **kwargs}
    with pytest.raises(ValueError, match=match):
        hardbatch.losses.teacher_mask_advice(**args)


def test_retrieval_mrr_needs_pairs():
    with pytest.raises(ValueError, match="pairs"):
        hardbatch.losses.retrieval_mrr(np.eye(3), np.eye(4)[:, :3])
