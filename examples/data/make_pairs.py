"""Build ``pairs.jsonl``: real (docstring → code) pairs from the Python standard library.

Each row is one documented function or method of a fixed list of pure-Python standard-library
modules, read with ``ast`` from the interpreter's own sources (no download):

* ``query``: the docstring's first sentence (whitespace collapsed);
* ``target``: the function's ``def`` line and its first lines of code, docstring removed,
  at most :data:`MAX_TARGET_LINES` lines / :data:`MAX_TARGET_CHARS` characters;
* ``module``: the module it comes from (a per-sample group, e.g. for ``--groups module``).

Pairs with a query of fewer than 4 words or fewer than 2 lines of code are skipped, and so is a
repeated query or target (first wins), so the file has no duplicate pairs. At most
:data:`MAX_PER_MODULE` pairs per module, :data:`MAX_PAIRS` in all. The file depends on the
Python version that ran this script (``README.md`` next to it says which).

Usage::

    python examples/data/make_pairs.py            # writes examples/data/pairs.jsonl
"""

from __future__ import annotations

import ast
import json
import re
import sys
import sysconfig
from pathlib import Path

MODULES = (
    "argparse", "ast", "base64", "bisect", "calendar", "cmd", "configparser", "csv",
    "dataclasses", "datetime", "difflib", "email/message.py", "email/utils.py", "enum",
    "fileinput", "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob",
    "gzip", "heapq", "hmac", "html/parser.py", "http/client.py", "http/cookiejar.py", "imaplib",
    "inspect", "ipaddress", "json/decoder.py", "json/encoder.py", "locale", "logging/__init__.py",
    "mailbox", "mimetypes", "ntpath", "optparse", "os", "pathlib", "pickle", "pkgutil",
    "platform", "plistlib", "poplib", "posixpath", "pprint", "queue", "random", "shlex",
    "shutil", "smtplib", "socket", "statistics", "string", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "tokenize", "trace", "traceback", "typing", "urllib/parse.py",
    "urllib/request.py", "uuid", "warnings", "wave", "weakref", "xml/dom/minidom.py", "zipfile",
)  # fmt: skip
MAX_PAIRS = 600
MAX_PER_MODULE = 12
MAX_TARGET_LINES = 8
MAX_TARGET_CHARS = 360
MIN_QUERY_WORDS = 4
OUT = Path(__file__).with_name("pairs.jsonl")


def module_path(stdlib: Path, name: str) -> Path:
    path = stdlib / name
    if path.suffix == ".py":
        return path
    if (stdlib / f"{name}.py").exists():
        return stdlib / f"{name}.py"
    return stdlib / name / "__init__.py"


def first_sentence(doc: str) -> str:
    """The first sentence of a docstring's first paragraph, whitespace collapsed."""
    paragraph = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)[0]
    text = re.sub(r"\s+", " ", paragraph).strip()
    match = re.match(r"(.+?[.!?])(\s|$)", text)
    return match.group(1) if match else text


def code_of(node: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> str:
    """The ``def`` line(s) and the first lines of the body, docstring removed, dedented."""
    body = node.body[1:]  # body[0] is the docstring
    if not body:
        return ""
    head = lines[node.lineno - 1 : node.body[0].lineno - 1]
    # The def line may span several lines; it ends where the docstring starts.
    code = lines[body[0].lineno - 1 : node.end_lineno]
    code = [line for line in code if line.strip()][:MAX_TARGET_LINES]
    indent = len(head[0]) - len(head[0].lstrip())
    text = "\n".join(line[indent:] for line in [*head, *code] if line.strip())
    return text[:MAX_TARGET_CHARS]


def pairs_of(path: Path, module: str):
    source = path.read_text(encoding="utf-8")
    lines = source.splitlines()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        doc = ast.get_docstring(node)
        if not doc:
            continue
        query = first_sentence(doc)
        target = code_of(node, lines)
        if len(query.split()) < MIN_QUERY_WORDS or target.count("\n") < 2:
            continue
        yield {"query": query, "target": target, "module": module}


def main() -> None:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    seen_q, seen_t, rows = set(), set(), []
    for name in MODULES:
        module = name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        path = module_path(stdlib, name)
        if not path.exists():
            continue
        taken = 0
        for row in pairs_of(path, module):
            if row["query"] in seen_q or row["target"] in seen_t:
                continue
            seen_q.add(row["query"])
            seen_t.add(row["target"])
            rows.append(row)
            taken += 1
            if taken == MAX_PER_MODULE or len(rows) == MAX_PAIRS:
                break
        if len(rows) == MAX_PAIRS:
            break
    python = ".".join(map(str, sys.version_info[:3]))
    with open(OUT, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    print(f"{len(rows)} pairs from {len({r['module'] for r in rows})} modules -> {OUT} "
          f"({OUT.stat().st_size / 1024:.0f} KiB, Python {python})")  # fmt: skip


if __name__ == "__main__":
    main()
