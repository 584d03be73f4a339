"""Tables (markdown) and plots (PNG) from the runs of the evidence benchmark."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

LABELS = {
    "random": "random",
    "nodup": "no-duplicates random",
    "hn1": "Hard Negative (1)",
    "tas": "TAS k-means",
    "gcbs": "GCBS (epoch refresh)",
    "gcbs_rec": "GCBS (recorded, 0 extra fwd)",
    "b3": "B3",
    "b3_hn": "B3 + hard negatives",
}


def _ms(values: list[float], scale: float = 100.0) -> str:
    v = np.asarray(values, dtype=float) * scale
    if len(v) == 1:
        return f"{v[0]:.1f}"
    return f"{v.mean():.1f} ± {v.std(ddof=1):.1f}"


def group_runs(runs: list[dict]) -> dict[str, list[dict]]:
    """Runs by method, in the order the methods first appear."""
    out: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        out[r["method"]].append(r)
    return dict(out)


def _epoch_stat(runs: list[dict], key: str, reduce=np.mean) -> float:
    """``reduce`` over every epoch of every run that recorded ``key`` (NaN if none)."""
    vals = [e[key] for r in runs for e in r["epochs"] if key in e]
    return float(reduce(vals)) if vals else float("nan")


def results_table(runs: list[dict], metric_keys: tuple[str, ...]) -> str:
    """Markdown table: quality (mean ± std over seeds), Δ vs random, loss gap, times."""
    by = group_runs(runs)
    base = by.get("random")
    head = ["method", "seeds", *metric_keys]
    if base:
        head.append(f"Δ {metric_keys[0]} vs random")
    head += [
        "gap (mean over epochs)",
        "gap vs random",
        "train s/epoch",
        "extra fwd s/epoch",
        "planning s/epoch",
        "setup s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base_gap = _epoch_stat(base, "gap") if base else None
    for method, rs in by.items():
        row = [LABELS.get(method, method), str(len(rs))]
        row += [_ms([r["test"][k] for r in rs]) for k in metric_keys]
        if base:
            # Paired by seed (same head initialisation): the spread of the difference itself.
            row.append(_paired(base, rs, metric_keys[0]))
        gap = _epoch_stat(rs, "gap")
        row.append(f"{gap:.3f}" if np.isfinite(gap) else "–")
        if base_gap and np.isfinite(gap):
            row.append(f"{gap / base_gap - 1:+.0%}")
        else:
            row.append("–")
        # Times: medians over seeds and epochs, robust to another job's load spikes.
        row.append(f"{_epoch_stat(rs, 'train_s', np.median):.2f}")
        row.append(f"{_epoch_stat(rs, 'extra_forward_s', np.median):.2f}")
        row.append(f"{_epoch_stat(rs, 'planning_s', np.median):.2f}")
        row.append(f"{np.median([r['setup_s'] for r in rs]):.2f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _paired(runs_a: list[dict], runs_b: list[dict], metric: str) -> str:
    """``mean(b - a)`` ± std over the seeds both have, ×100."""
    a = {r["seed"]: r["test"][metric] for r in runs_a}
    b = {r["seed"]: r["test"][metric] for r in runs_b}
    seeds = sorted(set(a) & set(b))
    d = 100 * np.array([b[s] - a[s] for s in seeds])
    if len(d) == 0:
        return "–"
    return f"{d.mean():+.1f}" if len(d) == 1 else f"{d.mean():+.1f} ± {d.std(ddof=1):.1f}"


def ablation_table(runs: list[dict], metric: str) -> str:
    """Plain vs false-negative-filtered runs of every method (paired by seed)."""
    arms = {
        arm: group_runs([r for r in runs if r["ablation"] == arm]) for arm in ("plain", "filtered")
    }
    head = [
        "method",
        "seeds",
        "plain",
        "filtered",
        "Δ filter",
        "Δ vs random (plain)",
        "Δ vs random (filtered)",
        "suspect pairs",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, plain in arms["plain"].items():
        filt = arms["filtered"].get(method, [])
        row = [LABELS.get(method, method), str(len(plain))]
        row.append(_ms([r["test"][metric] for r in plain]))
        row.append(_ms([r["test"][metric] for r in filt]) if filt else "–")
        row.append(_paired(plain, filt, metric))
        for arm in ("plain", "filtered"):
            base = arms[arm].get("random")
            mine = arms[arm].get(method)
            row.append(_paired(base, mine, metric) if base and mine else "–")
        frac = [r["suspect_fraction"] for r in plain if "suspect_fraction" in r]
        row.append(f"{100 * np.mean(frac):.2f}%" if frac else "–")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def summary_table(results: dict) -> str:
    """One row per method, one column per task: test metric (Δ vs random, paired; gap change)."""
    tasks = [
        (task, metric, label)
        for task, metric, label in (
            ("code", "mrr", "code MRR"),
            ("wordnet", "mrr", "WordNet MRR"),
            ("digits", "knn_acc", "digits kNN acc"),
            ("finetune", "mrr", "code MRR, fine-tuned"),
        )
        if results["runs"].get(task)
    ]
    methods: list[str] = []
    for task, _, _ in tasks:
        methods += [m for m in group_runs(results["runs"][task]) if m not in methods]
    head = ["method", *(label for _, _, label in tasks)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in methods:
        row = [LABELS.get(method, method)]
        for task, metric, _ in tasks:
            by = group_runs(results["runs"][task])
            rs, base = by.get(method), by.get("random")
            if not rs:
                row.append("–")
                continue
            cell = _ms([r["test"][metric] for r in rs])
            if base and method != "random":
                cell += f" ({_paired(base, rs, metric)}"
                gap, base_gap = _epoch_stat(rs, "gap"), _epoch_stat(base, "gap")
                if np.isfinite(gap) and np.isfinite(base_gap) and base_gap:
                    cell += f"; gap {gap / base_gap - 1:+.0%}"
                cell += ")"
            row.append(cell)
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def sweep_table(runs: list[dict], metric: str) -> str:
    """Markdown table of a sensitivity sweep: knob value → valid and test metric."""
    rows: dict[tuple, list[dict]] = defaultdict(list)
    for r in runs:
        rows[(r["sweep"], r["method"], r["sweep_value"], r["batch_size"])].append(r)
    lines = [
        f"| knob | method | value | batch | seeds | valid {metric} | test {metric} |",
        "|---|---|---|---|---|---|---|",
    ]
    for (knob, method, value, bs), rs in rows.items():
        lines.append(
            f"| {knob} | {LABELS.get(method, method)} | {value} | {bs} | {len(rs)} | "
            f"{_ms([r['valid'][metric] for r in rs])} | {_ms([r['test'][metric] for r in rs])} |"
        )
    return "\n".join(lines)


def plot_gap(runs: list[dict], path: Path, title: str) -> None:
    """L_global and E[L_train] at each epoch start (GCBS Figure 3), first seed of each method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = group_runs(runs)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for method, rs in by.items():
        eps = [e for e in rs[0]["epochs"] if "gap" in e]
        if not eps:
            continue
        x = [e["epoch"] for e in eps]
        (line,) = axes[0].plot(x, [e["train"] for e in eps], marker="o", label=LABELS[method])
        axes[0].plot(x, [e["global"] for e in eps], ls="--", color=line.get_color(), alpha=0.6)
        # The seeds that measured the gap (the first ``gap_seeds``), epoch by epoch.
        measured = [[e["gap"] for e in r["epochs"] if "gap" in e] for r in rs]
        gaps = np.array([g for g in measured if len(g) == len(x)])
        axes[1].plot(x, gaps.mean(0), marker="o", label=LABELS[method], color=line.get_color())
    axes[0].set(
        xlabel="epoch (start)", ylabel="loss", title="E[L_train] (solid), L_global (dashed)"
    )
    axes[1].set(xlabel="epoch (start)", ylabel="L_global − E[L_train]", title="loss gap")
    axes[1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_quality_time(runs: list[dict], metric: str, path: Path, title: str) -> None:
    """Test metric per method (each seed a dot) next to the time per epoch split."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by = group_runs(runs)
    names = list(by)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for i, m in enumerate(names):
        vals = [100 * r["test"][metric] for r in by[m]]
        axes[0].scatter([i] * len(vals), vals, s=18)
        axes[0].hlines(np.mean(vals), i - 0.3, i + 0.3)
    axes[0].set_xticks(range(len(names)), [LABELS[m] for m in names], rotation=35, ha="right")
    axes[0].set(ylabel=f"test {metric} (×100)", title="quality, every seed")
    bottom = np.zeros(len(names))
    for key, label in (
        ("train_s", "train"),
        ("extra_forward_s", "extra forward"),
        ("planning_s", "planning"),
    ):
        vals = np.array([_epoch_stat(by[m], key, np.median) for m in names])
        axes[1].bar(range(len(names)), vals, bottom=bottom, label=label)
        bottom += vals
    axes[1].set_xticks(range(len(names)), [LABELS[m] for m in names], rotation=35, ha="right")
    axes[1].set(ylabel="seconds per epoch", title="time per epoch (median over seeds, epochs)")
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_sweep(runs: list[dict], metric: str, path: Path, title: str) -> None:
    """One panel per knob: valid metric against the knob value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    knobs = list(dict.fromkeys(r["sweep"] for r in runs))
    fig, axes = plt.subplots(1, len(knobs), figsize=(3.6 * len(knobs), 3.4), squeeze=False)
    for ax, knob in zip(axes[0], knobs, strict=True):
        series: dict[str, dict[Any, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in runs:
            if r["sweep"] == knob:
                series[r["method"]][r["sweep_value"]].append(100 * r["valid"][metric])
        for method, points in series.items():
            xs = list(points)
            ax.plot(
                [str(x) for x in xs],
                [np.mean(points[x]) for x in xs],
                marker="o",
                label=LABELS[method],
            )
        ax.set(title=knob, ylabel=f"valid {metric} (×100)")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def group_arms(runs: list[dict]) -> dict[str, list[dict]]:
    """Runs by arm name (``r["arm"]``), in the order the arms first appear."""
    out: dict[str, list[dict]] = defaultdict(list)
    for r in runs:
        out[r["arm"]].append(r)
    return dict(out)


def _mask_suffix(arm: str) -> str:
    return arm[len(arm.split("+", 1)[0]) :]


def _dial(runs: list[dict]) -> str:
    """Mean hardness the arm's plans were made with (over runs and epochs; "–" for random and
    runs recorded before the dial was logged)."""
    dials = [
        e["dial"]
        for r in runs
        for e in r.get("epochs", [])
        if isinstance(e.get("dial"), (int, float))
    ]
    return f"{np.mean(dials):.2f}" if dials else "–"


def recipe_table(runs: list[dict], metric: str) -> str:
    """One row per arm: quality, Δ vs random and vs random with the same mask (both paired by
    seed), masked and teacher-suspect shares, loss gap vs random, costs per epoch."""
    by = group_arms(runs)
    base = by.get("random")
    head = [
        "arm",
        "seeds",
        f"test {metric}",
        "Δ vs random",
        "Δ vs random + same mask",
        "hardness",
        "masked",
        "suspect (teacher)",
        "gap vs random",
        "train s/epoch",
        "extra fwd + planning s/epoch",
        "setup s",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base_gap = _epoch_stat(base, "gap") if base else float("nan")
    for arm, rs in by.items():
        row = [arm, str(len(rs)), _ms([r["test"][metric] for r in rs])]
        row.append(_paired(base, rs, metric) if base and arm != "random" else "–")
        same = by.get("random" + _mask_suffix(arm))
        row.append(_paired(same, rs, metric) if same and same is not rs else "–")
        row.append(_dial(rs))
        row.append(f"{100 * np.mean([r.get('masked_share', 0.0) for r in rs]):.2f}%")
        frac = [r["suspect_fraction"] for r in rs if "suspect_fraction" in r]
        row.append(f"{100 * np.mean(frac):.2f}%" if frac else "–")
        gap = _epoch_stat(rs, "gap")
        ok = np.isfinite(gap) and np.isfinite(base_gap) and base_gap and arm != "random"
        row.append(f"{gap / base_gap - 1:+.0%}" if ok else "–")
        row.append(f"{_epoch_stat(rs, 'train_s', np.median):.2f}")
        plan = [e["extra_forward_s"] + e["planning_s"] for r in rs for e in r["epochs"]]
        row.append(f"{np.median(plan):.2f}" if plan else "–")
        row.append(f"{np.median([r['setup_s'] for r in rs]):.2f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def recipe_summary(groups: dict[str, tuple[list[dict], str]]) -> str:
    """One row per arm, one column per (student, task): Δ test metric vs random + the same
    mask, paired by seed (the strongest baseline); ``groups``: label -> (runs, metric)."""
    arms: list[str] = []
    for runs, _ in groups.values():
        arms += [a for a in group_arms(runs) if a not in arms]
    head = ["arm", *groups]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for arm in arms:
        row = [arm]
        for runs, metric in groups.values():
            by = group_arms(runs)
            rs, same = by.get(arm), by.get("random" + _mask_suffix(arm))
            if not rs:
                row.append("–")
            elif same is None or same is rs:
                row.append(_ms([r["test"][metric] for r in rs]))
            else:
                row.append(_paired(same, rs, metric))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
