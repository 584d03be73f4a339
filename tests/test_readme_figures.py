"""The README's figure tables agree with the committed results files
(``benchmarks/readme_figures.py``), and a stale figure is caught."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def figures():
    spec = importlib.util.spec_from_file_location(
        "readme_figures", ROOT / "benchmarks" / "readme_figures.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_tables_match_the_results_files(figures):
    _, changed = figures.stale_tables((ROOT / "README.md").read_text())
    assert changed == [], f"stale README tables {changed}: python benchmarks/readme_figures.py"


def test_a_stale_figure_is_caught(figures):
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- readme-figures: example-training -->")
    row = readme[start:].splitlines()[3]  # the first row of figures
    assert row.startswith("| ")
    updated, changed = figures.stale_tables(readme.replace(row, row[:-4] + "9 |", 1))
    assert changed == ["example-training"]
    assert row in updated  # --write puts the figure from the results file back


def test_every_table_has_a_marker(figures):
    readme = (ROOT / "README.md").read_text()
    start = readme.index("<!-- readme-figures: scale -->")
    end = readme.index("<!-- /readme-figures -->", start) + len("<!-- /readme-figures -->")
    with pytest.raises(ValueError, match="no marker for \\['scale'\\]"):
        figures.stale_tables(readme[:start] + readme[end:])
