"""The README's figure tables, generated from the committed results files.

Every table of measured figures in README.md sits between two markers::

    <!-- readme-figures: NAME -->
    | ... the table ... |
    <!-- /readme-figures -->

and NAME is one of the renderers below, each reading one results file that a benchmark script
writes. ``--check`` (the default; also run by ``tests/test_readme_figures.py``) regenerates
every table and reports each one that differs from the README, so a figure that no longer
matches its results file is caught; ``--write`` puts the regenerated tables into the README
(after re-running a benchmark, e.g. ``python examples/train_sentence_transformers.py >
benchmarks/results/example_train_sentence_transformers.txt``).

Only the tables are generated; the prose around them quotes some of their figures and is
checked by eye when a table changes.

Usage::

    python benchmarks/readme_figures.py            # --check: exit status 1 when stale
    python benchmarks/readme_figures.py --write
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Callable
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The recipe table pairs runs as the evidence report's own tables do (one implementation).
sys.path.insert(0, str(ROOT / "benchmarks"))
from evidence import report  # noqa: E402

from hardbatch.losses import TEACHER_MASK_MAX_RATIO  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"

MARKER = re.compile(
    r"(<!-- readme-figures: (?P<name>[\w-]+) -->\n)(?P<body>.*?)(<!-- /readme-figures -->)",
    re.DOTALL,
)


# --------------------------------------------------------------------------- renderers
def _gib(n_bytes: float) -> str:
    return f"{n_bytes / 2**30:.2f}"


def gcbs_speed() -> str:
    """``benchmarks/gcbs_speed.py`` → ``results/gcbs_speed.json``."""
    data = json.loads((RESULTS / "gcbs_speed.json").read_text())
    by = {(r["which"], r["n"]): r for r in data["results"]}
    rows = [
        "| N | (a) paper s | (b) matmul s | (c) hardbatch s | (a)/(c) | (c)/(b) | (a)/(b) "
        "| (c) peak GiB beyond inputs | inputs GiB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n in sorted({n for _, n in by}):
        paper, matmul, ours = by.get(("paper", n)), by[("matmul", n)], by[("hardbatch", n)]
        a = f"{paper['seconds']:.1f}" if paper else "skipped"
        a_c = f"{paper['seconds'] / ours['seconds']:.1f}" if paper else "skipped"
        a_b = f"{paper['seconds'] / matmul['seconds']:.1f}" if paper else "skipped"
        rows.append(
            f"| {n:,} | {a} | {matmul['seconds']:.1f} | {ours['seconds']:.1f} | {a_c} | "
            f"{ours['seconds'] / matmul['seconds']:.2f} | {a_b} | "
            f"{_gib(ours['peak_beyond_inputs_bytes'])} | {_gib(ours['input_bytes'])} |"
        )
    return "\n".join(rows)


def b3_speed() -> str:
    """``benchmarks/b3_speed.py`` → ``results/b3_speed.json`` (its own table function)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from b3_speed import table
    finally:
        sys.path.pop(0)
    return table(json.loads((RESULTS / "b3_speed.json").read_text())["results"])


def scale() -> str:
    """``benchmarks/scale.py`` → ``benchmarks/scale/scale.json``."""
    rows = json.loads((ROOT / "benchmarks" / "scale" / "scale.json").read_text())
    out = [
        "| method | N | backend | search s | structure s | total s | CPU s | peak RSS GB | recall "
        "| partitioner |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    methods = list(dict.fromkeys(r["method"] for r in rows))  # first appearance
    for r in sorted(rows, key=lambda r: (methods.index(r["method"]), r["n"])):
        recall = "–" if r["recall"] is None else f"{r['recall']:.3f}"
        out.append(
            f"| {r['method']} | {r['n']:,} | {r['backend']} | {r['search']:.1f} | "
            f"{r['structure']:.1f} | {r['total']:.1f} | {r['cpu']:.0f} | "
            f"{r['peak_rss_gb']:.2f} | {recall} | {r['partitioner'] or '–'} |"
        )
    return "\n".join(out)


def scale_compare() -> str:
    """``benchmarks/scale.py --compare-exact 20000`` → ``scale/compare_20000.json``."""
    rows = json.loads((ROOT / "benchmarks" / "scale" / "compare_20000.json").read_text())
    labels = {"gcbs": "gcbs (quantile 0.999)", "b3": "b3 (p = 30, m = 100)"}
    out = ["| method | exact | faiss (recall) |", "|---|---|---|"]
    for method, label in labels.items():
        exact = next(r for r in rows if r["method"] == method and r["backend"] == "exact")
        faiss = next(r for r in rows if r["method"] == method and r["backend"] == "faiss")
        out.append(f"| {label} | {exact['gap']:.4f} | {faiss['gap']:.4f} ({faiss['recall']:.3f}) |")
    return "\n".join(out)


def _tables_md_table(heading: str) -> str:
    """The first table under ``heading`` in the evidence run's ``tables.md``."""
    text = (RESULTS / "evidence" / "full" / "tables.md").read_text()
    section = text.split(f"\n{heading}\n", 1)[1]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    start = section.splitlines().index(lines[0])
    table = []
    for line in section.splitlines()[start:]:
        if not line.startswith("|"):
            break
        table.append(line)
    return "\n".join(table)


def evidence_summary() -> str:
    """``benchmarks/evidence.py`` → ``results/evidence/full/tables.md`` (Summary)."""
    return _tables_md_table("### Summary")


def ablation_code() -> str:
    """The false-negative ablation on code (``tables.md``)."""
    return _tables_md_table("### Ablation: false negatives (code, frozen student)")


def ablation_wordnet() -> str:
    """The false-negative ablation on WordNet (``tables.md``)."""
    return _tables_md_table("### Ablation: false negatives (wordnet, frozen student)")


def _round3(text: str) -> str:
    """A printed figure to 3 decimals, half up (``1.3755`` → ``1.376``, as a reader rounds)."""
    return str(Decimal(text).quantize(Decimal("0.001"), rounding=ROUND_HALF_UP))


def example_training() -> str:
    """``examples/train_sentence_transformers.py`` output →
    ``results/example_train_sentence_transformers.txt`` (its summary table)."""
    text = (RESULTS / "example_train_sentence_transformers.txt").read_text()
    labels = {"gcbs": 'gcbs, `refresh="epoch"`'}
    teacher = re.search(r"teacher pass ran once before training \(([\d.]+) s", text)
    out = [
        "| method | gap before (random) | gap after (random on same embeddings) "
        "| train s/epoch | refresh s/epoch | overhead |",
        "|---|---|---|---|---|---|",
    ]
    row = re.compile(
        r"^(\w+)\s+([\d.]+) \(([\d.]+)\)\s+([\d.]+) \(([\d.]+)\)\s+\d+\s+([\d.]+)\s+"
        r"([\d.]+)\s+([\d.]+)\s+([\d.]+)%$"
    )
    for line in text.splitlines():
        m = row.match(line.strip())
        if not m:
            continue
        method, before, before_r, after, after_r, train, embed, plan, overhead = m.groups()
        parts = [f"{v} {what}" for v, what in ((embed, "embed"), (plan, "plan")) if float(v)]
        refresh = " + ".join(parts) or "0"
        share = "0%" if float(overhead) == 0 else f"{overhead}%"
        if method == "b3" and teacher:
            share += f" (+{teacher.group(1)} s teacher pass once)"
        out.append(
            f"| {labels.get(method, method)} | {_round3(before)} ({_round3(before_r)}) | "
            f"{_round3(after)} ({_round3(after_r)}) | {train} | {refresh} | {share} |"
        )
    return "\n".join(out)


#: The recipe table's columns: (label, results folder under results/evidence, group key,
#: metric). Each folder is written by ``benchmarks/evidence.py --parts recipe`` (README says
#: which command).
RECIPE_COLUMNS = [
    ("code, frozen (full corpus)", "recipe_full/frozen_code", "recipe_frozen_code", "mrr"),
    ("code, static (full corpus)", "recipe_full/static_code", "recipe_static_code", "mrr"),
    (
        "code, fine-tuned (full corpus, GPU)",
        "recipe_gpu/finetune_code",
        "recipe_finetune_code",
        "mrr",
    ),  # fmt: skip
    (
        "code, top layers fine-tuned (full corpus, CPU)",
        "recipe_full/finetune_top_code",
        "recipe_finetune_top_code",
        "mrr",
    ),  # fmt: skip
    (
        "WordNet, frozen (full corpus)",
        "recipe_full/frozen_wordnet",
        "recipe_frozen_wordnet",
        "mrr",
    ),  # fmt: skip
    (
        "WordNet, static (full corpus)",
        "recipe_full/static_wordnet",
        "recipe_static_wordnet",
        "mrr",
    ),  # fmt: skip
    (
        "WordNet, top layers fine-tuned (full corpus, CPU)",
        "recipe_full/finetune_top_wordnet",
        "recipe_finetune_top_wordnet",
        "mrr",
    ),  # fmt: skip
    ("code, frozen", "recipe/frozen_code", "recipe_frozen_code", "mrr"),
    ("code, static", "recipe/static_code", "recipe_static_code", "mrr"),
    ("code, top layers fine-tuned", "recipe/finetune_top_code", "recipe_finetune_top_code", "mrr"),
    ("WordNet, frozen", "recipe/frozen_wordnet", "recipe_frozen_wordnet", "mrr"),
    ("WordNet, static", "recipe/static_wordnet", "recipe_static_wordnet", "mrr"),
    ("digits, SimCLR CNN", "recipe/frozen_digits", "recipe_frozen_digits", "knn_acc"),
]
#: The recipe table's rows: (label, arm); the recipe is the defaults with a decaying hardness
#: + the teacher mask.
RECIPE_ROWS = [
    ("random + teacher mask", "random+mask_teacher"),
    ("random + self mask (the student's own scores)", "random+mask_self"),
    ("GCBS, paper's quantile 0.999", "gcbs"),
    ("GCBS defaults, no mask", "gcbs_default"),
    ("GCBS defaults at `hardness=1`, no mask", "gcbs_full"),
    ("GCBS defaults at `hardness=1` + mask", "gcbs_full+mask_teacher"),
    ("GCBS defaults at `hardness=0.5` + mask", "gcbs_dial05+mask_teacher"),
    ("GCBS defaults, `hardness` ramp 0 → 1 over 4 epochs", "gcbs_ramp"),
    ("GCBS defaults, `hardness` ramp 0 → 1 + mask", "gcbs_ramp+mask_teacher"),
    ("GCBS defaults, `HardnessSchedule.decay(E)` (1 → 0 at the last epoch), no mask", "gcbs_decay"),
    ("B3 as the evidence run had it (`hardness=1`)", "b3"),
    ("B3 defaults at `hardness=1` + mask", "b3_full+mask_teacher"),
    ('B3 defaults (`hardness="auto"`) + mask', "b3_default+mask_teacher"),
    ("B3 defaults, `HardnessSchedule.decay(E)`, no mask", "b3_decay"),
    ("B3 defaults, `HardnessSchedule.decay(E)` + mask", "b3_decay+mask_teacher"),
    ("GCBS defaults + self mask", "gcbs_default+mask_self"),
    (
        "GCBS defaults, `HardnessSchedule.decay(E)` + mask in the epochs of hardness > 0 only",
        "gcbs_decay+mask_teacher_hard",
    ),  # fmt: skip
    (
        'GCBS defaults (constant `hardness="auto"`) + mask: the previous recipe',
        "gcbs_default+mask_teacher",
    ),  # fmt: skip
    (
        "GCBS defaults, `HardnessSchedule.decay(E)` + mask (every column)",
        "gcbs_decay+mask_teacher",
    ),  # fmt: skip
]
#: The recipe's arms. A head over frozen features or a static embedding table: the decay with
#: the teacher mask, and without it where :func:`mask_rule` says so. A fine-tuned encoder: the
#: defaults (constant ``hardness="auto"``), no mask.
RECIPE = "gcbs_decay+mask_teacher"
RECIPE_NO_MASK = "gcbs_decay"
RECIPE_FINE_TUNED = "gcbs_default"
#: The mask rule's bound on the random-batch student's validation MRR over the teacher's
#: zero-shot one: the library's (above it, the student has passed its teacher and the mask
#: costs; chosen from these runs, see ``hardbatch.losses.TEACHER_MASK_MAX_RATIO``).
MASK_RULE_RATIO = TEACHER_MASK_MAX_RATIO
#: Columns of fine-tuned encoders (the student starts as the teacher and trains past it).
FINE_TUNED = {
    "recipe/finetune_top_code",
    "recipe_full/finetune_top_code",
    "recipe_full/finetune_top_wordnet",
    "recipe_gpu/finetune_code",
}
#: Columns whose runs test on another subset than the one the results file's teacher
#: zero-shot score was measured on (the top-layer fine-tune draws its own 1 600 / 200 / 400).
OTHER_TEST_SPLIT = {"recipe/finetune_top_code"}
#: The arm whose ``hardness="auto"`` choice the table's last row shows (``gcbs_default`` where
#: a column has no masked run).
AUTO_ARM = "gcbs_default+mask_teacher"


def _paired_delta(base: list[dict], runs: list[dict], metric: str) -> str:
    """The evidence report's paired Δ (``mean(run - base)`` ± std over common seeds, ×100),
    with a typographic minus."""
    return report._paired(base, runs, metric).replace("-", "−")


def _recipe_column(folder: str, key: str) -> tuple[dict[str, list[dict]], dict | None]:
    """One results file, read once: the runs of group ``key`` (``recipe_<student>_<task>``) by
    arm, and the teacher's own MRR per split (all-MiniLM-L6-v2 zero-shot) on the group's task
    as the file records it; None where there is none (digits: the teacher is pixels) or where
    the runs test on another subset (:data:`OTHER_TEST_SPLIT`)."""
    path = RESULTS / "evidence" / folder / "results.json"
    if not path.exists():
        return {}, None
    results = json.loads(path.read_text())
    by: dict[str, list[dict]] = {}
    for run in results["runs"].get(key, []):
        by.setdefault(run["arm"], []).append(run)
    task = results.get("data", {}).get(key.rsplit("_", 1)[1], {})
    scores = task.get("teacher_zero_shot") if isinstance(task, dict) else None
    if folder in OTHER_TEST_SPLIT or scores is None:
        return by, None
    return by, {split: v["mrr"] for split, v in scores.items()}


def mask_rule(
    teacher: dict[str, float] | None, by: dict[str, list[dict]]
) -> tuple[bool, float | None]:
    """The recipe's mask rule for a column of a frozen or static student: ``(mask?, student /
    teacher validation MRR)``. No mask where the random-batch student's validation MRR passes
    the teacher's zero-shot one by more than :data:`MASK_RULE_RATIO`; else the mask (a
    fine-tuned encoder gets none either way: :data:`RECIPE_FINE_TUNED`)."""
    ratio = None
    if teacher is not None and by.get("random"):
        valid = [r["valid"]["mrr"] for r in by["random"]]
        ratio = sum(valid) / len(valid) / teacher["valid"]
    return ratio is None or ratio <= MASK_RULE_RATIO, ratio


def recipe() -> str:
    """``benchmarks/evidence.py --parts recipe`` → ``results/evidence/recipe*/*/results.json``:
    the metric of random, every arm's Δ vs random, and the recipe's Δ vs random + the same
    mask (all paired by seed; seeds in brackets)."""
    columns = [(label, folder, *_recipe_column(folder, key), metric)
               for label, folder, key, metric in RECIPE_COLUMNS]  # fmt: skip
    out = ["| arm | " + " | ".join(c[0] for c in columns) + " |", "|---" * (len(columns) + 1) + "|"]
    cells = [
        f"{report._ms([r['test'][m] for r in by['random']])} ({len(by['random'])})"
        if by.get("random")
        else "–"
        for _, _f, by, _t, m in columns
    ]
    out.append("| random (test MRR / kNN acc. ×100, seeds) | " + " | ".join(cells) + " |")
    cells = ["–" if t is None else f"{100 * t['test']:.1f}" for _, _f, _b, t, _m in columns]
    out.append("| the teacher itself, zero-shot (test MRR ×100) | " + " | ".join(cells) + " |")
    rules = [mask_rule(teacher, by) for _, _f, by, teacher, _m in columns]
    cells = ["–" if ratio is None else f"{ratio:.2f}" for _, ratio in rules]
    out.append(
        "| random-batch student / teacher, validation MRR | " + " | ".join(cells) + " |"
    )  # fmt: skip
    for label, arm in RECIPE_ROWS:
        row = [_paired_delta(by.get("random", []), by[arm], m) if arm in by else "–"
               for _, _f, by, _t, m in columns]  # fmt: skip
        out.append(f"| {label} | " + " | ".join(row) + " |")
    chosen = [
        RECIPE_FINE_TUNED if folder in FINE_TUNED else RECIPE if mask else RECIPE_NO_MASK
        for (_, folder, _b, _t, _m), (mask, _) in zip(columns, rules, strict=True)
    ]
    marks = {RECIPE: "", RECIPE_NO_MASK: " (no mask)", RECIPE_FINE_TUNED: " (defaults)"}
    row = [
        _paired_delta(by.get("random", []), by[arm], m) + marks[arm] if arm in by else "–"
        for (_, _f, by, _t, m), arm in zip(columns, chosen, strict=True)
    ]
    out.append(
        "| **recipe: GCBS defaults; a fine-tuned encoder: nothing else (constant hardness, no "
        "mask); a head over frozen features or a static table: `hardness=HardnessSchedule."
        "decay(E)` + mask unless the student passes its teacher** | " + " | ".join(row) + " |"
    )
    row = []
    for (_, _f, by, _t, m), arm in zip(columns, chosen, strict=True):
        base = "random+mask_teacher" if arm == RECIPE else "random"
        row.append(_paired_delta(by[base], by[arm], m) if arm in by and base in by else "–")
    out.append("| **recipe vs random with the same mask** | " + " | ".join(row) + " |")
    # The masked arm's choice, or the unmasked one's where a column ran only that.
    dials = [report._dial(by.get(AUTO_ARM) or by.get("gcbs_default", []))
             for _, _f, by, _t, _m in columns]  # fmt: skip
    out.append('| mean `hardness` that `"auto"` chose (constant) | ' + " | ".join(dials) + " |")
    return "\n".join(out)


def mining() -> str:
    """``benchmarks/mining_vs_st.py --n 100000 > results/mining_vs_st_100000.txt``: the table
    printed after the machine line."""
    text = (RESULTS / "mining_vs_st_100000.txt").read_text()
    tail = text.split("\nN = ", 1)[1]
    return "\n".join(line for line in tail.splitlines() if line.startswith("|"))


def _first_cell(row: str) -> str:
    """The first cell of a Markdown table row (the method of a recall.md row)."""
    return row.split("|")[1].strip()


def recall_defaults() -> str:
    """``benchmarks/recall.py defaults N --family F --out`` → the "Defaults with the FAISS
    search" sections of ``results/recall.md`` (the latest of each data set and N), one row per
    method and data set."""
    text = (RESULTS / "recall.md").read_text()
    head = re.compile(r"^### Defaults with the FAISS search: (?P<what>.+?), N = (?P<n>[\d,]+)$")
    # The latest row of every (data, N, method): a run may measure one method only.
    latest: dict[tuple[str, str], dict[str, str]] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = head.match(line)
        if not m:
            continue
        rows = latest.setdefault((m.group("what"), m.group("n")), {})
        for row in lines[i + 1 :]:
            if row.startswith("### "):
                break
            if row.startswith("| gcbs ") or row.startswith("| b3 "):
                rows[_first_cell(row)] = row
    out = [
        "| data | N | method | k searched | recall | widening steps | candidates / list | "
        "lists probed | plan s | warning |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (what, n), rows in latest.items():
        for row in sorted(rows.values(), key=lambda r: _first_cell(r) != "gcbs"):
            cells = [c.strip() for c in row.strip("|").split("|")]
            method, k, rec, _target, steps, cands, probed, secs, warn = cells
            out.append(
                f"| {what} | {n} | {method} | {k} | {rec} | {steps} | {cands} | {probed} "
                f"| {secs} | {warn} |"
            )
    return "\n".join(out)


RENDERERS: dict[str, Callable[[], str]] = {
    "recall-defaults": recall_defaults,
    "mining": mining,
    "recipe": recipe,
    "gcbs-speed": gcbs_speed,
    "b3-speed": b3_speed,
    "scale": scale,
    "scale-compare": scale_compare,
    "evidence-summary": evidence_summary,
    "ablation-code": ablation_code,
    "ablation-wordnet": ablation_wordnet,
    "example-training": example_training,
}


# --------------------------------------------------------------------------- check / write
def stale_tables(readme: str) -> tuple[str, list[str]]:
    """The README with every table regenerated, and the names of the tables that changed.

    ``ValueError`` for a marker naming no renderer, or a renderer without a marker.
    """
    found: list[str] = []
    changed: list[str] = []

    def replace(m: re.Match) -> str:
        name = m.group("name")
        if name not in RENDERERS:
            raise ValueError(f"README marker names no renderer: {name!r}")
        found.append(name)
        body = RENDERERS[name]().rstrip("\n") + "\n"
        if body != m.group("body"):
            changed.append(name)
        return m.group(1) + body + m.group(4)

    updated = MARKER.sub(replace, readme)
    missing = sorted(set(RENDERERS) - set(found))
    if missing:
        raise ValueError(f"README has no marker for {missing}")
    return updated, changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="report stale tables (default)")
    mode.add_argument("--write", action="store_true", help="rewrite the tables in README.md")
    args = parser.parse_args(argv)
    readme = README.read_text()
    updated, changed = stale_tables(readme)
    if args.write:
        README.write_text(updated)
        print(f"rewrote {len(changed)} table(s): {', '.join(changed) or 'none'}")
        return 0
    if not changed:
        print(f"README figures match the results files ({len(RENDERERS)} tables)")
        return 0
    diff = difflib.unified_diff(
        readme.splitlines(), updated.splitlines(), "README.md", "from results", lineterm=""
    )
    print("\n".join(diff))
    print(f"stale README table(s): {', '.join(changed)} (run with --write after checking)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
