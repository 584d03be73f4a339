"""One training run: a student, a batch source, E epochs; what is measured on the way.

Per epoch ``e`` (all methods identical except for the batches):

1. the batch source plans epoch ``e`` (timed: ``extra_forward_s`` = the sampler's no-grad
   embedding pass, ``planning_s`` = the rest of the sampler's work and the negative lookup);
2. measured, not timed: ``hardbatch.metrics.loss_gap`` of the current student's train
   embeddings under the epoch's served batches — ``L_global − E[L_train]`` at the epoch start
   (GCBS paper, Figure 3), at the student's training temperature, in-batch negatives only
   (mined extra negatives are not part of this diagnostic);
3. training steps over the epoch's batches, at most ``max_steps`` in total (timed:
   ``train_s``; the recorder copy of ``gcbs_rec`` is inside it, it is that method's cost).

At the end: ``evaluate("valid")`` and ``evaluate("test")``.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

import hardbatch

from .methods import epoch_plan, make_source, to_numpy


def run(
    *,
    student,
    method: str,
    seed: int,
    n_train: int,
    teacher: tuple[np.ndarray, np.ndarray],
    duplicate_ids: np.ndarray | None,
    epochs: int,
    batch_size: int = 64,
    max_steps: int | None = None,
    knobs: dict | None = None,
    measure_gap: bool = True,
    on_epoch_start=None,
    eval_splits: tuple[str, ...] = ("valid", "test"),
    fn_when: str = "always",
) -> dict[str, Any]:
    """Train ``student`` with ``method``'s batches; return metrics, gaps and timings.

    Parameters
    ----------
    student : a student of :mod:`.students`
    method : str
        One of :data:`.methods.METHODS`.
    seed : int
        Seeds the student (already, by its constructor) and the batches.
    n_train : int
    teacher : (Tq, Tt), np.ndarray of shape (n_train, d)
    duplicate_ids : np.ndarray of shape (n_train,), optional
    epochs : int
    batch_size : int
    max_steps : int, optional
        Stop after this many steps (the fine-tune student).
    knobs : dict, optional
        Method knobs (:data:`.methods.DEFAULTS`).
    measure_gap : bool
        Measure the loss gap at every epoch start.
    on_epoch_start : callable epoch -> None, optional
        Called before the epoch is planned (the digits student draws its views here).
    fn_when : {"always", "hard"}
        When the student's false-negative mask applies (:class:`.students.FalseNegativeStats`).
    """
    student.fn.when = fn_when

    def embed_fn(ids):
        return student.embed(np.asarray(ids))

    source = make_source(
        method,
        n=n_train,
        batch_size=batch_size,
        seed=seed,
        teacher=teacher,
        duplicate_ids=duplicate_ids,
        embed_fn=embed_fn,
        student_dim=student.dim,
        knobs=knobs,
    )
    history = []
    steps = 0
    for epoch in range(epochs):
        if max_steps is not None and steps >= max_steps:
            break
        if on_epoch_start is not None:
            on_epoch_start(epoch)
        served = source.epoch(epoch)
        student.fn.start_epoch(served.hardness)
        row: dict[str, Any] = {
            "epoch": epoch,
            "extra_forward_s": served.extra_forward_s,
            "planning_s": served.planning_s,
            "n_batches": len(served.batches),
            "dial": served.dial,
        }
        if measure_gap:
            t0 = time.perf_counter()
            q, t = student.train_embeddings()
            row.update(
                hardbatch.metrics.loss_gap(
                    q,
                    t,
                    epoch_plan(served.batches, n_train, batch_size),
                    temperature=student.temperature,
                )
            )
            row["gap_s"] = time.perf_counter() - t0
        tick = time.perf_counter()
        losses = []
        for ids, negatives in zip(served.batches, served.negatives, strict=True):
            if max_steps is not None and steps >= max_steps:
                break
            if len(ids) < 2:
                continue
            loss, q_emb, t_emb = student.step(ids, negatives)
            if source.records:
                source.sampler.record(q_emb, t_emb, indices=ids)
            losses.append(loss)
            steps += 1
        row["train_s"] = time.perf_counter() - tick
        row["train_loss"] = float(np.mean(losses)) if losses else float("nan")
        # Share of the in-batch (and mined) negative pairs the loss left out, mean per step.
        row["masked_share"] = student.fn.pop_epoch()
        row["steps"] = steps
        history.append(row)
    result: dict[str, Any] = {
        "method": method,
        "seed": seed,
        "student": student.name,
        "batch_size": batch_size,
        "knobs": knobs or {},
        "setup_s": source.setup_s,
        "source_info": _jsonable(source.info),
        "epochs": history,
        "steps": steps,
    }
    # The mask option, and the share of in-batch negative pairs the teacher scores near the
    # positive (counted whenever the student knows the teacher; the ablation's "suspect").
    result.update(student.fn.summary())
    result["fn_filter"] = student.fn.fn_mask == "teacher"
    shares = [e["masked_share"] for e in history if np.isfinite(e["masked_share"])]
    result["masked_share"] = float(np.mean(shares)) if shares else 0.0
    tick = time.perf_counter()
    for split in eval_splits:
        result[split] = student.evaluate(split)
    result["eval_s"] = time.perf_counter() - tick
    return result


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, (np.floating, np.integer)):
            v = v.item()
        elif isinstance(v, np.ndarray):
            v = to_numpy(v).tolist()
        out[k] = v
    return out
