"""The runner lives in lightning_balance.experiments, apart from the library; the old import paths still work."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ["datamodule", "sampler", "mixture", "temperature", "weighting", "losses", "policies", "schedules",
           "tail_recall", "selection", "sources", "callbacks"]


def test_the_library_does_not_import_the_tool():
    code = ("import sys, lightning_balance\n"
            + "".join(f"import lightning_balance.{name}\n" for name in LIBRARY)
            + "print(sorted(m for m in sys.modules if m.startswith('lightning_balance.experiments')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "[]"
    for path in (ROOT / "lightning_balance").rglob("*.py"):
        if "experiments" in path.parts or path.stem in {"compare", "cli", "paper", "reporting", "plots", "datasets",
                                                        "models", "__main__"}:
            continue
        assert "lightning_balance.experiments" not in path.read_text(encoding="utf-8"), path


@pytest.mark.parametrize(("old", "new", "names"), [
    ("compare", "runner", ["compare", "run_once", "CompareResult", "RunResult", "smoothed_rise"]),
    ("compare", "settings", ["CompareSettings", "ComponentSpec", "ConfigurationError", "RunSpec", "default_runs"]),
    ("compare", "checks", ["import_object", "check_output_dir", "check_datamodule"]),
    ("reporting", "report", ["write_compare_outputs", "summary_table", "summary_markdown", "SUMMARY_COLUMNS"]),
    ("reporting", "summary", ["paired_t", "paired_difference", "verdict", "recommend"]),
    ("plots", "plots", ["plot_curves", "plot_tradeoff", "plot_variance_factor"]),
    ("paper", "paper", ["reproduce", "tail_dynamics", "cooldown_check", "BIAS_Z_LIMIT"]),
    ("cli", "cli", ["main", "build_parser", "lightning_cli", "parse_kwargs"]),
    ("datasets", "datasets", ["LongTailDigits", "long_tail_counts", "long_tail_subset", "independent_groups"]),
    ("models", "models", ["MLPClassifier"]),
])
def test_the_old_import_paths_give_the_same_objects(old, new, names):
    import importlib

    shim = importlib.import_module(f"lightning_balance.{old}")
    home = importlib.import_module(f"lightning_balance.experiments.{new}")
    for name in names:
        assert getattr(shim, name) is getattr(home, name), name


def test_the_console_script_is_the_shim():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'lightning-balance = "lightning_balance.cli:main"' in text
