"""What the commands print and write besides the numbers: a table that fits 100 columns, Lightning logs of every
run, the threads and the machine's load beside the wall time, and a quiet `fit` that ends with the tail recall."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from rich.console import Console

from lightning_balance.experiments.cli import main
from lightning_balance.experiments.report import TABLE_WIDTH, best_table, summary_table
from lightning_balance.experiments.runner import RunResult
from lightning_balance.experiments.summary import summarize

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--seeds", "1", "--max-steps", "4", "--val-every", "2", "--no-progress", "--data", "digits",
        "--datamodule-args", "val_per_class=10", "batch_size=8"]


def _runs():
    finals = {"recall_head": 0.912345, "recall_tail": 0.5, "f1_tail": 0.25, "recall_worst": 0.0}
    runs = []
    for name in ("natural", "logit_adjust_posthoc", "upsample_t100", "class_balanced"):
        for seed in (0, 1, 2):
            runs.append(RunResult(name, "LA post hoc τ=1", name, seed, 600, 38400, 123.4, 1,
                                  {k: v + 0.01 * seed for k, v in finals.items()}, 575, 1.0, 25, [],
                                  diverged=name == "class_balanced" and seed == 0))
    return runs


def test_the_console_tables_fit_100_columns():
    console = Console(width=300, record=True)  # wide enough that nothing wraps: the table takes its own width
    summary = summarize(_runs())
    console.print(summary_table(summary))
    console.print(best_table(summary))
    lines = console.export_text().splitlines()
    assert max(len(line.rstrip()) for line in lines) <= TABLE_WIDTH
    text = "\n".join(lines)
    assert "logit_adjust_posthoc" in text and "0.922±.010" in text and "Div" in text


def test_every_run_logs_through_a_lightning_logger_into_the_output_folder(tmp_path):
    assert main(["compare", *TINY, "--strategies", "natural,upsample", "--out", str(tmp_path / "out")]) == 0
    for name in ("natural", "upsample"):
        metrics = tmp_path / "out" / "logs" / name / "seed_0" / "metrics.csv"
        with open(metrics) as f:
            rows = list(csv.DictReader(f))
        steps = {row["step"] for row in rows if row.get("compare/recall_tail")}
        assert len(steps) == 2, rows  # the two validations, steps 2 and 4
        assert any(row.get("train/loss") for row in rows)  # the model's own logging goes there too
        assert (metrics.parent / "hparams.yaml").exists()


def test_threads_apply_and_the_wall_time_comes_with_the_load(tmp_path, capsys, monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    assert main(["compare", *TINY, "--strategies", "natural", "--threads", "2", "--out", str(tmp_path / "out")]) == 0
    assert calls == [2]
    out = " ".join(capsys.readouterr().out.split())
    assert "Total wall time" in out and "CPUs (load average" in out and "torch threads" in out
    settings = json.loads((tmp_path / "out" / "results.json").read_text())["settings"]
    assert settings["cpus"] >= 1 and settings["load_average_start"] is not None
    run = json.loads((tmp_path / "out" / "results.json").read_text())["runs"][0]
    assert len(run["load_average"]) == 2
    calls.clear()
    assert main(["paper", *TINY[:9], "--num-batches", "10", "--threads", "3", "--out", str(tmp_path / "p")]) == 0
    assert calls == [3]


def test_fit_prints_no_lightning_noise_and_ends_with_the_tail_recall(tmp_path):
    env = {**os.environ}
    env.pop("PYTHONWARNINGS", None)  # the warnings a user would see
    script = Path(sys.executable).with_name("lightning-balance")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "lightning_balance"]
    result = subprocess.run(
        [*command, "fit", "--config", str(ROOT / "configs" / "digits_natural.yaml"), "--trainer.max_steps=6",
         "--trainer.val_check_interval=3", f"--trainer.default_root_dir={tmp_path}", "--threads", "1"],
        capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    printed = result.stdout + result.stderr
    for noise in ("Tip:", "litlogger", "litmodels", "GPU available", "TPU available", "Warning", "deprecated",
                  "/-2", "Trainable params"):
        assert noise not in printed, (noise, printed[-3000:])
    assert "Final validation recall at step 6 (groups split absolute by training count): head" in printed
    assert "tail" in printed.split("Final validation recall", 1)[1]


@pytest.mark.parametrize("bar", [True, False])
def test_fit_progress_bar_shows_steps_not_a_negative_last_epoch(tmp_path, bar, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-balance"])
    args = ["fit", "--config", str(ROOT / "configs" / "digits_natural.yaml"), "--trainer.max_steps=3",
            "--trainer.limit_val_batches=0", f"--trainer.default_root_dir={tmp_path}",
            f"--trainer.enable_progress_bar={str(bar).lower()}"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "/-2" not in printed and "Final validation recall at step 3" in printed
