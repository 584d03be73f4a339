"""Code search corpus: (docstring → function) pairs mined with ``ast`` from installed sources.

Sources: the CPython standard library on disk (``sysconfig.get_paths()["stdlib"]``) and the
pinned packages of ``benchmarks/evidence/requirements.txt`` (their installed copies). Like
CodeSearchNet's Python set, a query is the docstring's first paragraph and the target is the
function's source with its docstring removed.

Rules (each counted in ``meta["dropped"]``):

* functions and methods only (``def`` / ``async def``), anywhere in a module, with a docstring;
* files under a ``test``/``tests`` directory or named ``test_*.py`` are skipped;
* the code side is the function's lines ``lineno..end_lineno`` (decorators excluded) minus the
  docstring's lines, dedented (slicing lines is ~50x faster than ``ast.get_source_segment``);
* trivial pairs are dropped: a query of fewer than 4 words, or a body of fewer than 2
  non-blank lines once the docstring is gone (``pass``, a bare ``raise NotImplementedError``),
  or a function longer than 150 lines;
* duplicates are dropped corpus-wide (first occurrence wins, sources in a fixed order): a
  repeated normalised query, or a repeated normalised code text;
* split by module (the file): all pairs of a module go to one split (SHA-1 of its name), so
  train and test never share a module.

``duplicate_key`` (false-negative guard of the ``nodup`` method): the first 6 normalised words
of the query; e.g. the many "Return a new array of ..." docstrings share one key.

Usage::

    python -m benchmarks.evidence.data_code            # build, cache, print counts
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
import sysconfig
import textwrap
import time
from pathlib import Path

import numpy as np

from .common import PairCorpus, drop_duplicates, normalise_text, split_of

REQUIREMENTS = Path(__file__).with_name("requirements.txt")
#: Import name of each pinned distribution (where its source lives).
IMPORT_NAMES = {"scikit-learn": "sklearn", "Jinja2": "jinja2"}
MIN_QUERY_WORDS = 4
MIN_BODY_LINES = 2
MAX_FUNCTION_LINES = 150
DUPLICATE_KEY_WORDS = 6


def pinned_packages(path: Path = REQUIREMENTS) -> list[tuple[str, str]]:
    """``(distribution, version)`` pairs of the requirements file, in file order."""
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out.append((name.strip(), version.strip()))
    return out


def check_versions(packages: list[tuple[str, str]]) -> dict[str, str]:
    """Installed version of every pinned package; ValueError if one differs or is missing."""
    found, wrong = {}, []
    for name, version in packages:
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            have = None
        found[name] = have
        if have != version:
            wrong.append(f"{name}: pinned {version}, installed {have}")
    if wrong:
        raise ValueError(
            "the code corpus needs the pinned package versions "
            f"(pip install -r {REQUIREMENTS}): " + "; ".join(wrong)
        )
    return found


def source_roots(packages: list[tuple[str, str]]) -> list[tuple[str, Path]]:
    """``(source name, directory)``: the stdlib first, then each pinned package."""
    roots = [("stdlib", Path(sysconfig.get_paths()["stdlib"]))]
    for name, _ in packages:
        import_name = IMPORT_NAMES.get(name, name.lower())
        dist = importlib.metadata.distribution(name)
        roots.append((name, Path(dist.locate_file(import_name))))
    return roots


def _python_files(source: str, root: Path) -> list[Path]:
    files = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).parts
        if source == "stdlib" and rel and rel[0] in ("site-packages", "dist-packages"):
            continue
        if any(p in ("test", "tests", "testing", "idle_test") for p in rel[:-1]):
            continue
        if rel[-1].startswith("test_") or rel[-1] == "conftest.py":
            continue
        files.append(path)
    return files


def first_paragraph(docstring: str) -> str:
    """The docstring's first paragraph, whitespace collapsed."""
    text = textwrap.dedent(docstring).strip()
    para = re.split(r"\n\s*\n", text, maxsplit=1)[0]
    return re.sub(r"\s+", " ", para).strip()


def function_pairs(source_text: str) -> tuple[list[tuple[str, str]], dict[str, int]]:
    """(query, code) pairs of one module's functions, and what was dropped.

    Parameters
    ----------
    source_text : str
        A module's source.

    Returns
    -------
    pairs : list of (str, str)
    dropped : dict
        Counts of ``no_docstring``, ``short_query``, ``short_body``, ``long_function``.
    """
    dropped = dict.fromkeys(("no_docstring", "short_query", "short_body", "long_function"), 0)
    tree = ast.parse(source_text)
    lines = source_text.splitlines()
    pairs = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc_node = node.body[0] if node.body else None
        if not (
            isinstance(doc_node, ast.Expr)
            and isinstance(doc_node.value, ast.Constant)
            and isinstance(doc_node.value.value, str)
        ):
            dropped["no_docstring"] += 1
            continue
        if node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES:
            dropped["long_function"] += 1
            continue
        query = first_paragraph(doc_node.value.value)
        if len(query.split()) < MIN_QUERY_WORDS:
            dropped["short_query"] += 1
            continue
        # Lines of the function, without the docstring's lines (1-based, inclusive).
        doc_lines = set(range(doc_node.lineno, doc_node.end_lineno + 1))
        kept = [lines[k - 1] for k in range(node.lineno, node.end_lineno + 1) if k not in doc_lines]
        body = [ln for ln in kept[1:] if ln.strip()]
        if len(body) < MIN_BODY_LINES:
            dropped["short_body"] += 1
            continue
        code = textwrap.dedent("\n".join(ln for ln in kept if ln.strip()))
        pairs.append((query, code))
    return pairs, dropped


def mine(
    source: str, root: Path, dropped: dict[str, int], files: list[Path] | None = None
) -> tuple[list[str], list[str], list[str]]:
    """Pairs of every Python file under ``root`` (or of ``files``), before deduplication.

    Returns
    -------
    queries, targets, modules : lists of str
        ``modules[i]`` = ``"source:relative/path.py"``, the split key.
    dropped : updated in place.
    """
    queries, targets, modules = [], [], []
    for path in files if files is not None else _python_files(source, root):
        try:
            text = path.read_text(encoding="utf-8")
            pairs, d = function_pairs(text)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            dropped["unparsable_file"] = dropped.get("unparsable_file", 0) + 1
            continue
        for key, v in d.items():
            dropped[key] = dropped.get(key, 0) + v
        module = f"{source}:{path.relative_to(root).as_posix()}"
        for q, c in pairs:
            queries.append(q)
            targets.append(c)
            modules.append(module)
    return queries, targets, modules


def finish(
    name: str, queries: list[str], targets: list[str], groups: list[str], dropped: dict, meta: dict
) -> PairCorpus:
    """Drop duplicates, split by group, add duplicate keys: the corpus."""
    keep, dup = drop_duplicates(queries, targets)
    dropped.update(dup)
    queries = [queries[i] for i in keep]
    targets = [targets[i] for i in keep]
    groups = [groups[i] for i in keep]
    split = np.array([split_of(g) for g in groups])
    duplicate_key = [" ".join(normalise_text(q).split()[:DUPLICATE_KEY_WORDS]) for q in queries]
    return PairCorpus(
        name, queries, targets, split, groups, duplicate_key, {**meta, "dropped": dropped}
    )


def build(*, allow_other_versions: bool = False, verbose: bool = True) -> PairCorpus:
    """Mine every source root, drop trivial and duplicate pairs, split by module.

    Parameters
    ----------
    allow_other_versions : bool
        Build even if installed versions differ from the pins (the corpus then differs).
    verbose : bool
        Print per-source counts.
    """
    tick = time.perf_counter()
    packages = pinned_packages()
    if allow_other_versions:
        versions = {n: _installed(n) for n, _ in packages}
    else:
        versions = check_versions(packages)
    queries, targets, groups = [], [], []
    dropped = dict.fromkeys(
        ("no_docstring", "short_query", "short_body", "long_function", "unparsable_file"), 0
    )
    per_source = {}
    for source, root in source_roots(packages):
        q, t, g = mine(source, root, dropped)
        queries += q
        targets += t
        groups += g
        per_source[source] = len(q)
        if verbose:
            print(f"  {source:<14} {per_source[source]:>7} pairs", file=sys.stderr)
    meta = {
        "python": sys.version.split()[0],
        "packages": versions,
        "pairs_per_source_before_dedup": per_source,
        "seconds": round(time.perf_counter() - tick, 1),
    }
    return finish("code", queries, targets, groups, dropped, meta)


def _installed(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def load(*, rebuild: bool = False) -> PairCorpus:
    """The cached corpus (built on first use) from ``benchmarks/results/cache/code.jsonl``."""
    return PairCorpus.cached("code", build, rebuild=rebuild)


if __name__ == "__main__":
    c = load(rebuild="--rebuild" in sys.argv)
    print(c.counts(), c.meta)
