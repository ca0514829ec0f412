"""The answer of a comparison: the recommendation (--prefer), best validation points (--select), --resume, and
the bad input that stops the command before it writes anything."""

import json
import math

import pytest
from lightning.pytorch import Callback

from lightning_balance.experiments.cli import main
from lightning_balance.experiments.runner import RunResult, best_point
from lightning_balance.experiments.summary import HEAD_TOLERANCE, recommend, summarize

TINY = ["--seeds", "1", "--max-steps", "4", "--val-every", "2", "--no-progress", "--data", "digits",
        "--datamodule-args", "val_per_class=10", "batch_size=8"]


def _run(name, seed, head, tail, worst=0.1, wall=1.0, epochs=None, curve=None):
    final = {"recall_head": head, "recall_tail": tail, "f1_tail": tail, "recall_worst": worst}
    return RunResult(name, f"{name} label", name, seed, 100, 3200, wall, 1, final, None, 1.0, None, curve or [],
                     epochs_per_group=epochs)


def _runs(table, seeds=(0, 1, 2)):
    """Runs from {name: (head, tail, worst)}; every seed shifts all strategies alike (pairing removes it)."""
    return [_run(name, s, head + 0.01 * s, tail + 0.02 * s + 0.001 * i * s, worst + 0.01 * s,
                 epochs=[1.0, 2.0 * (i + 1)])
            for i, (name, (head, tail, worst)) in enumerate(table.items()) for s in seeds]


TABLE = {"natural": (0.90, 0.20, 0.05), "upsample": (0.80, 0.60, 0.30), "cooldown": (0.895, 0.45, 0.20),
         "upweight": (0.86, 0.50, 0.40)}


def test_balanced_is_the_best_tail_among_strategies_that_keep_the_head():
    runs = _runs(TABLE)
    rec = recommend(summarize(runs), runs, "balanced")
    # upsample and upweight have the better tail, but cost more than a point of head recall
    assert rec["winner"] == "cooldown" and rec["metric"] == "f1_tail"
    assert set(rec["excluded"]) == {"upsample", "upweight"} and "head recall" in rec["excluded"]["upsample"]
    assert rec["vs_natural"]["difference"] == pytest.approx(0.25 + 0.002, abs=1e-9)
    assert rec["vs_natural"]["pairs"] == 3 and rec["vs_natural"]["low"] > 0
    assert rec["confidence"] == "clear"
    text = "\n".join(rec["lines"])
    assert "Recommendation (--prefer balanced" in text and "cooldown (cooldown label), tail F1 0.472" in text
    assert "left out for the head: upsample, upweight" in text
    assert "passes over each group's data: 1 6" in text and "(natural: 1 2)" in text


def test_the_head_tolerance_is_one_point():
    table = {"natural": (0.90, 0.20, 0.05), "a": (0.90 - HEAD_TOLERANCE + 0.001, 0.40, 0.1),
             "b": (0.90 - HEAD_TOLERANCE - 0.001, 0.50, 0.1)}
    runs = _runs(table)
    rec = recommend(summarize(runs), runs, "balanced")
    assert rec["winner"] == "a" and list(rec["excluded"]) == ["b"]


@pytest.mark.parametrize(("prefer", "winner", "metric"), [("tail", "upsample", "f1_tail"),
                                                          ("worst", "upweight", "recall_worst"),
                                                          ("head", "natural", "recall_head")])
def test_what_each_preference_picks(prefer, winner, metric):
    runs = _runs(TABLE)
    rec = recommend(summarize(runs), runs, prefer)
    assert (rec["winner"], rec["metric"], rec["excluded"]) == (winner, metric, {})


def test_how_sure_follows_the_paired_intervals():
    # cooldown beats natural in every seed, but against upweight the per-seed differences change sign
    runs = [_run("natural", s, 0.9, 0.2) for s in range(3)]
    runs += [_run("cooldown", s, 0.9, t) for s, t in enumerate([0.50, 0.40, 0.60])]
    runs += [_run("upweight", s, 0.9, t) for s, t in enumerate([0.45, 0.55, 0.45])]
    rec = recommend(summarize(runs), runs, "tail")
    assert rec["winner"] == "cooldown" and rec["runner_up"] == "upweight"
    assert rec["vs_runner_up"]["low"] < 0 < rec["vs_runner_up"]["high"]
    assert rec["confidence"] == "ahead of natural"
    one = [r for r in runs if r.seed == 0]
    assert recommend(summarize(one), one, "tail")["confidence"] == "one seed"


def test_a_strategy_that_diverged_never_wins():
    runs = _runs(TABLE)
    runs[3].diverged = True  # upsample, seed 0
    rec = recommend(summarize(runs), runs, "tail")
    assert rec["winner"] != "upsample" and "diverged" in rec["excluded"]["upsample"]


def test_best_point_beside_the_final_one():
    curve = [{"step": 10, "f1_tail": 0.3, "recall_head": 0.95}, {"step": 20, "f1_tail": 0.6, "recall_head": 0.9},
             {"step": 30, "f1_tail": 0.5, "recall_head": 0.92}]
    assert best_point(curve, "f1_tail") == {"step": 20, "f1_tail": 0.6, "recall_head": 0.9}
    run = _run("natural", 0, 0.92, 0.5, curve=curve)
    run.best, run.best_metric = best_point(curve, "f1_tail"), "f1_tail"
    final, best = summarize([run])[0], summarize([run], select="best")[0]
    assert final["recall_head_mean"] == 0.92 and best["recall_head_mean"] == 0.9
    assert final["best_step_mean"] == best["best_step_mean"] == 20
    assert final["best_value_mean"] == 0.6 and final["final_value_mean"] == 0.5


# ------------------------------------------------------------------ the command line
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prefer", "fast"], "Expected `--prefer` to be one of balanced, tail, worst, head, but got 'fast'. Give"
                               " e.g. --prefer balanced"),
        (["--select", "last"], "Expected `--select` to be `final` or `best`, but got 'last'. Give --select final"),
        (["--select", "best", "--val-every", "4"], "`--select best` picks every run's best validation during"
                                                   " training, but with `--val-every` 4 and `--max-steps` 4 it"
                                                   " validates only at the end. Give a --val-every below"),
    ],
)
def test_bad_answer_settings_exit_2_and_write_nothing(tmp_path, capsys, args, message):
    assert main(["compare", *TINY, "--out", str(tmp_path / "out"), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lightning-balance compare: error: ") and message in err
    assert not (tmp_path / "out").exists()


def test_the_command_prints_the_recommendation_and_the_best_points(tmp_path, capsys):
    assert main(["compare", *TINY, "--out", str(tmp_path / "out"), "--strategies", "natural,upsample",
                 "--prefer", "tail", "--select", "best"]) == 0
    out = capsys.readouterr().out
    assert "Best validation, mean ± std over 1 seed(s)" in out
    assert "Best validation by f1_tail (tail) beside the final one" in out
    assert "Recommendation (--prefer tail: the best tail F1 (best validation of every run))" in " ".join(out.split())
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["settings"]["prefer"] == "tail" and data["settings"]["select"] == "best"
    for run in data["runs"]:
        assert run["best_metric"] == "f1_tail" and run["best"]["step"] in (2, 4)
        assert run["best"]["f1_tail"] == max(p["f1_tail"] for p in run["curve"])
    row = data["summary"][0]
    assert row["select"] == "best" and row["f1_tail_mean"] == pytest.approx(row["best_value_mean"])


class Trainings(Callback):
    """Counts the runs that train; interrupts the one numbered `interrupt` (Ctrl-C) at its second step."""

    started = 0
    interrupt = None

    def on_fit_start(self, trainer, pl_module):
        type(self).started += 1
        self.number = type(self).started

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.number == type(self).interrupt and trainer.global_step == 2:
            raise KeyboardInterrupt


def _config(tmp_path, steps=4):
    config = tmp_path / "cfg.yaml"
    config.write_text(f"trainer:\n  max_steps: {steps}\n  val_check_interval: 2\n  callbacks:\n"
                      "    - class_path: tests.test_experiments_answer.Trainings\n")
    return str(config)


def test_resume_continues_an_interrupted_comparison_without_training_its_finished_runs(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["compare", "--seeds", "2", "--no-progress", "--strategies", "natural,upweight", "--config",
            _config(tmp_path), "--data", "digits", "--datamodule-args", "val_per_class=10", "batch_size=8"]
    Trainings.started, Trainings.interrupt = 0, 3  # natural seeds 0 and 1 finish, upweight seed 0 is cut
    assert main([*args, "--out", str(out)]) == 130
    first = json.loads((out / "results.json").read_text())
    assert first["complete"] is False and [(r["name"], r["seed"]) for r in first["runs"]] == [("natural", 0),
                                                                                             ("natural", 1)]
    capsys.readouterr()
    Trainings.started, Trainings.interrupt = 0, None
    assert main([*args, "--resume", str(out)]) == 0
    assert Trainings.started == 2  # only upweight's two seeds trained again
    assert "resuming: 2 runs finished" in " ".join(capsys.readouterr().out.split())
    data = json.loads((out / "results.json").read_text())
    assert data["complete"] is True
    assert [(r["name"], r["seed"]) for r in data["runs"]] == [("natural", 0), ("natural", 1), ("upweight", 0),
                                                              ("upweight", 1)]
    assert data["runs"][:2] == first["runs"]  # the finished runs are kept as they were


def test_resume_refuses_a_folder_of_another_configuration(tmp_path, capsys):
    out = tmp_path / "out"
    args = ["compare", "--seeds", "1", "--no-progress", "--strategies", "natural", "--data", "digits",
            "--datamodule-args", "val_per_class=10", "batch_size=8", "--val-every", "2"]
    Trainings.started, Trainings.interrupt = 0, None
    assert main([*args, "--max-steps", "4", "--out", str(out)]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert main([*args, "--max-steps", "6", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lightning-balance compare: error: `--resume` ")
    assert "holds a comparison of another configuration (max_steps: 4 there, 6 now)" in err
    assert "Give the same arguments as the interrupted comparison" in err
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing written


def test_resume_needs_a_comparison_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["compare", *TINY, "--resume", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "`--resume` " in err and "holds no comparison (no results.json)" in err
    assert list((tmp_path / "empty").iterdir()) == []


def test_logit_adjustment_needs_the_logits(tmp_path, capsys):
    code = main(["compare", *TINY, "--out", str(tmp_path / "out"), "--strategies", "natural,logit_adjust",
                 "--model", "tests.test_compare.PlainMeanModel", "--model-args", "num_features=64", "num_classes=10"])
    assert code == 2
    err = capsys.readouterr().err
    assert "did not compute its loss with `lightning_balance.balanced_cross_entropy(self, logits, target)`" in err
    assert "strategy='logit_adjust'" in err and "leave the strategy out of --strategies" in err


def test_posthoc_logit_adjustment_predicts_with_the_adjusted_logits(tmp_path):
    assert main(["compare", *TINY, "--out", str(tmp_path / "out"), "--strategies",
                 "natural,logit_adjust_posthoc"]) == 0
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    natural, posthoc = data["runs"]
    assert posthoc["name"] == "logit_adjust_posthoc" and posthoc["wall_time_s"] == natural["wall_time_s"]
    # the same training, another prediction: the losses and the recall differ
    assert natural["final"]["loss_all"] != posthoc["final"]["loss_all"]
    assert not math.isclose(natural["final"]["recall_tail"], posthoc["final"]["recall_tail"])


def test_when_only_natural_keeps_the_head_the_recommendation_says_what_the_head_would_pay():
    table = {"natural": (0.90, 0.05, 0.0), "upsample": (0.84, 0.23, 0.02), "logit_adjust_posthoc": (0.71, 0.37, 0.1)}
    runs = _runs(table)
    rec = recommend(summarize(runs), runs, "balanced")
    assert rec["winner"] == "natural" and rec["confidence"] == "the only one"
    assert rec["best_excluded"] == "logit_adjust_posthoc"
    text = " ".join(rec["lines"])
    assert "How sure: it is the only strategy that qualifies." in text
    assert ("If the head may pay: logit_adjust_posthoc has the best tail F1 (0.392) at head recall 0.720 (-0.190;"
            in text)
