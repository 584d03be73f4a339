"""The ``hardbatch`` command: plan / report / demo, generated method options, errors, help."""

from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

import hardbatch
from hardbatch import cli
from hardbatch.batching import cut_order
from hardbatch.methods import base
from hardbatch.plans import BatchPlan
from hardbatch.synthetic import make_planted_pairs

N, DIM, BATCH = 300, 16, 32


@pytest.fixture(scope="module")
def data_files(tmp_path_factory):
    """X.npy, Y.npy (planted groups of 16, N=300), a 200-row Y, an .npz and the groups."""
    folder = tmp_path_factory.mktemp("cli-data")
    data = make_planted_pairs(N, DIM, group_size=16, seed=0)
    files = {
        "X": folder / "X.npy",
        "Y": folder / "Y.npy",
        "Y200": folder / "Y200.npy",
        "groups": folder / "groups.npy",
        "npz": folder / "not-a-plan.npz",
    }
    np.save(files["X"], data.queries)
    np.save(files["Y"], data.targets)
    np.save(files["Y200"], data.targets[:200])
    np.save(files["groups"], data.groups)
    np.savez(files["npz"], something=np.zeros(3))
    files["data"] = data
    return files


def run(*args) -> int:
    return cli.main([str(a) for a in args])


def plan_args(files, out, *extra):
    return [
        "plan",
        "--queries",
        files["X"],
        "--targets",
        files["Y"],
        "--batch-size",
        BATCH,
        "--seed",
        0,
        "-o",
        out,
        *extra,
    ]


def error_line(capsys) -> str:
    """The one stderr line of a failed command (no traceback)."""
    err = capsys.readouterr().err.strip()
    assert err.startswith("hardbatch: error: "), err
    assert "\n" not in err and "Traceback" not in err
    return err


# --------------------------------------------------------------------------- plan
def test_plan_writes_the_plan_the_library_makes(data_files, tmp_path, capsys):
    out = tmp_path / "plan.npz"
    assert run(*plan_args(data_files, out, "--method", "gcbs", "--quantile", "0.99")) == 0
    stdout = capsys.readouterr().out
    assert "gcbs" in stdout and "N=300" in stdout and str(out) in stdout
    loaded = BatchPlan.load(out, n_samples=N)
    data = data_files["data"]
    expected = hardbatch.plan(
        "gcbs", data.queries, data.targets, batch_size=BATCH, seed=0, quantile=0.99
    )
    np.testing.assert_array_equal(loaded.batches, expected.batches)
    assert loaded.method == "gcbs" and loaded.params["quantile"] == 0.99
    assert loaded.batch_size == BATCH and loaded.seed == 0 and not loaded.drop_last


def test_plan_defaults_to_gcbs_with_the_method_defaults(data_files, tmp_path):
    out = tmp_path / "plan.npz"
    assert run(*plan_args(data_files, out)) == 0
    loaded = BatchPlan.load(out, n_samples=N)
    defaults = hardbatch.methods.GCBS().method_params()
    assert loaded.method == "gcbs" and defaults["hardness"] == "auto"
    # "auto" is recorded as the dial it resolved to (the plan file replays it).
    assert loaded.params["hardness"] == loaded.info["hardness"]["auto"]["hardness"]
    defaults["hardness"] = loaded.params["hardness"]
    assert loaded.params == json.loads(json.dumps(defaults))


def test_plan_top_k_drop_last_and_seed_none(data_files, tmp_path):
    out = tmp_path / "plan.npz"
    args = plan_args(data_files, out, "--top-k", "5", "--drop-last")
    args[args.index("--seed") + 1] = "none"
    assert run(*args) == 0
    loaded = BatchPlan.load(out, n_samples=N)
    assert loaded.params["top_k"] == 5
    assert loaded.drop_last and loaded.n_batches == N // BATCH
    assert isinstance(loaded.seed, int)  # drawn, then recorded


def test_plan_random_needs_only_n_samples(tmp_path):
    out = tmp_path / "random.npz"
    assert (
        run("plan", "--method", "random", "--n-samples", N, "--batch-size", BATCH, "-o", out) == 0
    )
    loaded = BatchPlan.load(out, n_samples=N)
    expected = hardbatch.plan("random", n_samples=N, batch_size=BATCH, seed=0)
    np.testing.assert_array_equal(loaded.batches, expected.batches)


def test_plan_b3_short_aliases_and_fit_arrays(data_files, tmp_path):
    pytest.importorskip("pymetis")
    out = tmp_path / "b3.npz"
    extra = ["--method", "b3", "--cluster-size", "16", "-p", "0", "-m", "10"]
    assert run(*plan_args(data_files, out, *extra, "--groups", data_files["groups"])) == 0
    loaded = BatchPlan.load(out, n_samples=N)
    assert loaded.method == "b3"
    assert loaded.params["cluster_size"] == 16
    assert loaded.params["p"] == 0 and loaded.params["m"] == 10
    # --groups reached fit: every batch holds one planted group only.
    groups = data_files["data"].groups
    assert all(len(np.unique(groups[ids])) == 1 for ids in loaded.iter_batches())


def test_inputs_are_memory_mapped(data_files):
    array = cli.load_array(data_files["X"], "queries")
    assert isinstance(array, np.memmap) and not array.flags.writeable


# --------------------------------------------------------------------------- generated options
class _Dummy(base.Planner):
    """A test method with one parameter of every kind."""

    name = "dummy-cli"
    uses_embeddings = False
    cli_aliases = {"alpha": ["-a"]}
    param_help = {"alpha": "the alpha", "mode": "a or b"}

    def __init__(
        self,
        batch_size: int = 64,
        *,
        alpha: float = 0.5,
        count: int | None = 3,
        flag: bool = True,
        mode: Literal["a", "b"] = "a",
        seed: int | None = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(batch_size, seed=seed, drop_last=drop_last)
        self.alpha, self.count, self.flag, self.mode = alpha, count, flag, mode

    def _plan(self, queries, targets, *, n, batch_size, seed, norms):
        return self._make_plan(cut_order(np.arange(n), batch_size, drop_last=False), n=n, seed=seed)


@pytest.fixture
def dummy_method(monkeypatch):
    monkeypatch.setitem(base._REGISTRY, _Dummy.name, _Dummy)
    return _Dummy


def test_method_options_are_generated_from_the_registry(dummy_method):
    options = cli.method_options()
    alpha, count, flag, mode = (options[k] for k in ("alpha", "count", "flag", "mode"))
    assert alpha.flags == ["--alpha", "-a"] and alpha.kind is float
    assert count.kind is int and count.nullable
    assert flag.kind is bool
    assert mode.choices == ("a", "b")
    assert alpha.help_text() == "[dummy-cli] the alpha (default: 0.5)"
    assert options["quantile"].methods == ["gcbs"]
    assert "batch_size" not in options and "seed" not in options and "device" not in options


def test_generated_options_reach_the_method(dummy_method, tmp_path):
    out = tmp_path / "dummy.npz"
    args = ["plan", "--method", "dummy-cli", "--n-samples", "100", "--batch-size", "10"]
    extra = ["-a", "0.25", "--count", "none", "--no-flag", "--mode", "b", "-o", out]
    assert run(*args, *extra) == 0
    params = BatchPlan.load(out).params
    assert params == {"alpha": 0.25, "count": None, "flag": False, "mode": "b"}
    # Left-out options keep the method's defaults.
    assert run(*args, "-o", out) == 0
    assert BatchPlan.load(out).params == {"alpha": 0.5, "count": 3, "flag": True, "mode": "a"}


def test_generated_option_values_are_checked(dummy_method, tmp_path, capsys):
    args = ["plan", "--method", "dummy-cli", "--n-samples", "100", "-o", tmp_path / "p.npz"]
    assert run(*args, "--mode", "c") == 2
    assert "--mode" in capsys.readouterr().err
    assert run(*args, "--count", "2.5") == 2
    assert "--count" in capsys.readouterr().err


def test_plan_help_lists_every_method_option(capsys):
    assert run("plan", "--help") == 0
    out = capsys.readouterr().out
    for option in cli.method_options().values():
        assert option.flag in out
    assert "[gcbs]" in out and "--quantile" in out
    for method in hardbatch.available_methods():
        assert method in out


# --------------------------------------------------------------------------- errors
def test_option_of_another_method_is_an_error(data_files, tmp_path, capsys):
    out = tmp_path / "p.npz"
    assert run(*plan_args(data_files, out, "--method", "random", "--quantile", "0.9")) == 2
    err = error_line(capsys)
    assert "--quantile" in err and "'random'" in err and "gcbs" in err
    assert not out.exists()


def test_mismatched_n_is_an_error(data_files, tmp_path, capsys):
    args = plan_args(data_files, tmp_path / "p.npz")
    args[args.index("--targets") + 1] = data_files["Y200"]
    assert run(*args) == 2
    err = error_line(capsys)
    assert "same number of rows" in err and "300" in err and "200" in err


def test_missing_file_is_an_error(data_files, tmp_path, capsys):
    args = plan_args(data_files, tmp_path / "p.npz")
    args[args.index("--queries") + 1] = tmp_path / "nope.npy"
    assert run(*args) == 2
    assert "queries file not found" in error_line(capsys)


def test_npz_instead_of_npy_is_an_error(data_files, tmp_path, capsys):
    args = plan_args(data_files, tmp_path / "p.npz")
    args[args.index("--targets") + 1] = data_files["npz"]
    assert run(*args) == 2
    assert ".npz archive" in error_line(capsys)


def test_library_value_errors_are_one_line(data_files, tmp_path, capsys):
    args = plan_args(data_files, tmp_path / "p.npz")
    args[args.index("--batch-size") + 1] = "1"
    assert run(*args) == 2
    assert "batch_size" in error_line(capsys)


def test_missing_output_folder_fails_before_planning(data_files, tmp_path, capsys):
    assert run(*plan_args(data_files, tmp_path / "no" / "p.npz")) == 2
    assert "does not exist" in error_line(capsys)


def test_unknown_device_is_an_error(data_files, tmp_path, capsys):
    assert run(*plan_args(data_files, tmp_path / "p.npz", "--device", "nonsense")) == 2
    assert "--device" in error_line(capsys)


def test_debug_shows_the_exception(data_files, tmp_path):
    args = plan_args(data_files, tmp_path / "p.npz", "--batch-size", "1")
    with pytest.raises(ValueError, match="batch_size"):
        cli.main(["--debug", *map(str, args)])
    with pytest.raises(ValueError, match="batch_size"):
        cli.main([*map(str, args), "--debug"])


def test_usage_errors_exit_2(capsys):
    assert run() == 2
    assert run("plan") == 2  # -o is required
    assert "required" in capsys.readouterr().err


# --------------------------------------------------------------------------- report
@pytest.fixture(scope="module")
def plan_file(data_files, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-plan") / "plan.npz"
    assert cli.main([str(a) for a in plan_args(data_files, out, "--quantile", "0.99")]) == 0
    return out


def test_report_prints_the_table_and_writes_plot_and_json(data_files, plan_file, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png, js = tmp_path / "sim.png", tmp_path / "report.json"
    args = ["report", plan_file, "--queries", data_files["X"], "--targets", data_files["Y"]]
    assert run(*args, "--plot", png, "--json", js, "--temperature", "0.1") == 0
    out = capsys.readouterr().out
    assert "gap L_global - L_train" in out and "gap reduction vs random" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = json.loads(js.read_text())
    data = data_files["data"]
    plan = BatchPlan.load(plan_file, n_samples=N)
    expected = hardbatch.metrics.loss_gap(data.queries, data.targets, plan, temperature=0.1)
    assert rows["plan"]["gap"] == pytest.approx(expected["gap"])
    assert rows["graph"]["quantile"] == 0.99  # the plan's own quantile
    assert rows["plan"]["gap_reduction"] > 0.5  # planted groups: GCBS closes most of the gap


def test_report_against_a_baseline_plan_file(data_files, plan_file, capsys):
    args = ["report", plan_file, "--queries", data_files["X"], "--targets", data_files["Y"]]
    assert run(*args, "--baseline", plan_file) == 0
    out = capsys.readouterr().out
    assert "gap reduction vs gcbs: 0.0%" in out


def test_report_plan_for_another_n_is_an_error(data_files, plan_file, capsys):
    y200 = data_files["Y200"]
    assert run("report", plan_file, "--queries", y200, "--targets", y200) == 2
    err = error_line(capsys)
    assert "N=300" in err and "N=200" in err


def test_report_wrong_plan_file_is_an_error(data_files, capsys):
    files = ["--queries", data_files["X"], "--targets", data_files["Y"]]
    assert run("report", data_files["npz"], *files) == 2
    assert "not a hardbatch plan file" in error_line(capsys)
    assert run("report", data_files["X"].parent / "missing.npz", *files) == 2
    assert "plan file not found" in error_line(capsys)


def test_report_without_matplotlib_is_a_clear_error(
    data_files, plan_file, tmp_path, monkeypatch, capsys
):
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    args = ["report", plan_file, "--queries", data_files["X"], "--targets", data_files["Y"]]
    assert run(*args, "--plot", tmp_path / "x.png") == 2
    assert "hardbatch[plot]" in error_line(capsys)


# --------------------------------------------------------------------------- demo
def test_demo_small(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    args = ["demo", "--n-samples", "512", "--dim", "16", "--batch-size", "32"]
    args += ["--group-size", "16", "--quantile", "0.99", "--out-dir", out_dir, "--save"]
    args += ["--no-plot"]
    assert run(*args) == 0
    out = capsys.readouterr().out
    assert "gap reduction vs random" in out and "batch purity" in out
    assert not (out_dir / "similarity.png").exists()
    report = json.loads((out_dir / "report.json").read_text())
    assert report["batch_purity"]["gcbs"] > 2 * report["batch_purity"]["random"]
    assert report["plan"]["gap_reduction"] > 0.5
    # The saved files are what `hardbatch report` reads.
    plan = BatchPlan.load(out_dir / "plan-gcbs.npz", n_samples=512)
    assert plan.method == "gcbs"
    assert np.load(out_dir / "queries.npy").shape == (512, 16)


def test_demo_writes_the_plot(tmp_path):
    pytest.importorskip("matplotlib")
    out_dir = tmp_path / "demo"
    args = ["demo", "--n-samples", "256", "--dim", "8", "--batch-size", "32", "--group-size", "16"]
    assert run(*args, "--quantile", "0.99", "--out-dir", out_dir) == 0
    assert (out_dir / "similarity.png").stat().st_size > 0


def test_demo_bad_sizes_are_errors(tmp_path, capsys):
    args = ["demo", "--n-samples", "16", "--batch-size", "32", "--no-plot", "--out-dir", tmp_path]
    assert run(*args) == 2
    assert "batch_size" in error_line(capsys)


# --------------------------------------------------------------------------- help, version
def test_help_and_version(capsys):
    assert run("--help") == 0
    out = capsys.readouterr().out
    assert all(command in out for command in ("plan", "report", "demo"))
    for command in ("plan", "report", "demo"):
        assert run(command, "--help") == 0
        assert f"usage: hardbatch {command}" in capsys.readouterr().out
    assert run("--version") == 0
    assert capsys.readouterr().out.strip() == f"hardbatch {hardbatch.__version__}"


def test_every_option_has_help():
    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for name, sub in commands.choices.items():
        for action in sub._actions:
            assert action.help, f"hardbatch {name} {action.option_strings or action.dest}"


def test_console_script_runs():
    script = Path(sys.executable).parent / "hardbatch"
    if not script.exists():
        script = shutil.which("hardbatch")
    if script is None:
        pytest.skip("the hardbatch console script is not installed")
    result = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "usage: hardbatch" in result.stdout


@pytest.mark.parametrize("module", ["hardbatch", "hardbatch.cli"])
def test_python_dash_m_runs(module):
    src = str(Path(hardbatch.__file__).parent.parent)  # this checkout's package first
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", module, "--version"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"hardbatch {hardbatch.__version__}"


def _imported_modules(path: Path, root: Path) -> set[str]:
    """Absolute names of what a file imports (relative imports resolved, function bodies
    included); ``from a import b`` counts as both ``a`` and ``a.b``."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    package = parts[:-1]  # the package holding the module (an __init__ holds itself)
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_no_library_module_imports_the_cli():
    """The CLI sits on top of the library: nothing in hardbatch outside cli/ imports it
    (but ``python -m hardbatch``, whose whole job is to run it)."""
    package = Path(hardbatch.__file__).parent
    own = _imported_modules(package / "cli" / "report.py", package.parent)
    assert "hardbatch.api.plan" in own and "hardbatch.cli.common" in own  # the resolver works
    offenders = {
        str(path.relative_to(package)): sorted(
            name
            for name in _imported_modules(path, package.parent)
            if name == "hardbatch.cli" or name.startswith("hardbatch.cli.")
        )
        for path in package.rglob("*.py")
        if package / "cli" not in path.parents and path != package / "__main__.py"
    }
    assert {path: names for path, names in offenders.items() if names} == {}


def test_plan_takes_the_hardness_dial(data_files, tmp_path, capsys):
    out = tmp_path / "plan.npz"
    assert run(*plan_args(data_files, out, "--top-k", "5", "--hardness", "0.5")) == 0
    loaded = BatchPlan.load(out, n_samples=N)
    assert loaded.params["hardness"] == 0.5 and loaded.info["hardness"]["dial"] == 0.5
    # A decay over the run's epochs: stored as its schedule, replayed by for_epoch.
    assert run(*plan_args(data_files, out, "--top-k", "5", "--hardness", "decay:3")) == 0
    loaded = BatchPlan.load(out, n_samples=N)
    assert loaded.params["hardness"] == hardbatch.HardnessSchedule.decay(3).to_json()
    assert loaded.hardness.at(2) == 0.0
    # A bad value is named with the method's own message, not argparse's "invalid value".
    assert run(*plan_args(data_files, out, "--hardness", "decay:1")) == 2
    assert "hardness must be 'auto', a number in [0, 1] or decay:E" in capsys.readouterr().err


def test_hardness_option_has_a_help_line():
    option = cli.method_options()["hardness"]
    assert option.methods == ["b3", "gcbs"] and option.parser is not None
    assert option.parser("auto") == "auto" and option.parser("0.25") == 0.25
    assert "decay:E" in option.help_text()
    assert "hardness dial" in option.help_text() and "auto" in option.help_text()


def test_output_folder_is_refused_before_planning(data_files, tmp_path, capsys, monkeypatch):
    import hardbatch.cli.plan as plan_command

    monkeypatch.setattr(plan_command, "plan", lambda *a, **k: pytest.fail("planned anyway"))
    assert run(*plan_args(data_files, tmp_path)) == 2
    assert "it is a folder" in error_line(capsys)


@pytest.mark.parametrize(
    "meta",
    [
        {"n_samples": None},
        {"method": None},
        {"batch_size": None},
        {"params": [1]},
        {"seed": "x"},
        {"n_samples": 10**12},
        "[" * 100_000,
        "[1, 2]",
    ],
)
def test_crafted_plan_files_are_one_line_errors(data_files, tmp_path, capsys, meta):
    plan = hardbatch.plan("random", n_samples=N, batch_size=BATCH, seed=0)
    path = plan.save(tmp_path / "plan.npz")
    with np.load(path) as f:
        contents = {name: f[name] for name in f.files}
    if isinstance(meta, dict):
        content = json.loads(str(contents["meta"]))
        content.update(meta)
        text = json.dumps({k: v for k, v in content.items() if v is not None})
    else:
        text = meta
    contents["meta"] = np.array(text)
    np.savez(path, **contents)
    files = ["--queries", data_files["X"], "--targets", data_files["Y"]]
    assert run("report", path, *files) == 2
    assert str(path) in error_line(capsys)
