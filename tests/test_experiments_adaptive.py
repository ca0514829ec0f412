"""--adaptive: the adaptive mixing runs beside the static strategies, what they record, the goal they are judged
by, and the rule that tunes OverfitGuard."""

import json
import math

import pytest
import torch.nn.functional as F

from lightning_balance.experiments import adaptive_study
from lightning_balance.experiments.cli import main
from lightning_balance.experiments.runner import CompareResult, RunResult, compare
from lightning_balance.experiments.settings import ADAPTIVE_NAMES, CompareSettings, ComponentSpec, default_runs
from lightning_balance.experiments.summary import adaptive_goal, summarize
from lightning_balance.models import MLPClassifier
from tests.test_compare import SmallDigits

TINY = ["--seeds", "1", "--max-steps", "20", "--val-every", "5", "--no-progress", "--data", "digits",
        "--datamodule-args", "val_per_class=10", "batch_size=8"]


class PlainValidation(MLPClassifier):
    """Its validation loss does not go through `balanced_loss`: the DataModule cannot see it per group."""

    def validation_step(self, batch, batch_idx):
        x, y = batch[0], batch[1]
        logits = self(x)
        self.log("val/loss", F.cross_entropy(logits, y))
        return {"preds": logits, "target": y}


def test_adaptive_runs_train_with_the_same_seeds_and_budget(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["compare", *TINY, "--strategies", "natural,upsample", "--adaptive", "--out", str(out)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    data = json.loads((out / "results.json").read_text())
    names = [r["name"] for r in data["runs"]]
    assert names == ["natural", "upsample", *ADAPTIVE_NAMES]
    assert {(r["seed"], r["steps"], r["samples_seen"]) for r in data["runs"]} == {(0, 20, 160)}
    by_name = {r["name"]: r for r in data["runs"]}
    assert [e["step"] for e in by_name["group_dro"]["mixing"]] == list(range(1, 21))  # Group DRO: every step
    assert [e["step"] for e in by_name["online_mixing"]["mixing"]] == list(range(1, 21))  # val_every 5 // 5
    assert [e["step"] for e in by_name["overfit_guard"]["mixing"]] == [5, 10, 15, 20]  # after every validation
    assert all(len(p["probs"]) == 10 for r in data["runs"] for p in r["curve"])
    assert all("loss_weights" in p for p in by_name["group_dro"]["curve"])
    natural = [p["probs"] for p in by_name["natural"]["curve"]]
    online = [p["probs"] for p in by_name["online_mixing"]["curve"]]
    counts = data["settings"]["group_counts"]
    assert natural[0] == pytest.approx([c / sum(counts) for c in counts], abs=1e-5)  # EXP3 starts from these...
    assert online[0] == pytest.approx([0.1] * 10, abs=1e-6)  # ...and EXP3 still explores uniformly 5 updates in
    assert (out / "mixing.png").stat().st_size > 10_000
    assert "Adaptive goal (beat every static strategy and Cooldown on tail F1 or worst-group recall" in printed
    assert "Goal cannot be judged (fewer than two seeds)" in printed


def test_overfit_guard_sees_validation_losses_per_group_whatever_the_model_logs():
    runs = default_runs(only=["natural"], adaptive=True, overfit_patience=1, overfit_smoothing=1.0)
    runs = [r for r in runs if r.name in ("natural", "overfit_guard")]
    # OverfitGuard raises when no validation loss per group reached it; the runner feeds them for any model.
    result = compare(ComponentSpec(SmallDigits), ComponentSpec(PlainValidation, {}, "--model", size_from_data=True),
                     runs=runs, settings=CompareSettings(seeds=[0], max_steps=12, val_every=3), progress=False)
    guard = next(r for r in result.runs if r.name == "overfit_guard")
    assert [e["step"] for e in guard.mixing] == [3, 6, 9, 12]


def _run(name, seed, head, tail, worst):
    final = {"recall_head": head, "recall_tail": tail, "f1_tail": tail, "recall_worst": worst}
    return RunResult(name, name, name, seed, 10, 100, 1.0, 1, final, None, 1.0, None, [])


def _goal(table, seeds=(0, 1, 2)):
    runs = [_run(n, s, h + 0.01 * s, t + 0.02 * s + 0.003 * i * s, w) for i, (n, (h, t, w)) in enumerate(table.items())
            for s in seeds]
    return adaptive_goal(summarize(runs), runs)


STATIC = {"natural": (0.90, 0.10, 0.0), "upsample": (0.85, 0.30, 0.1), "cooldown": (0.89, 0.20, 0.05)}


def test_the_goal_is_met_by_a_policy_that_beats_every_static_strategy_and_keeps_the_head():
    goal = _goal({**STATIC, "overfit_guard": (0.895, 0.35, 0.05)})
    assert goal["met"] is True
    policy = goal["policies"]["overfit_guard"]
    assert policy["head_ok"] and policy["beats"]["f1_tail"] is True and policy["beats"]["recall_worst"] is False
    other, stat = policy["closest"]["f1_tail"]
    assert other == "upsample" and stat["low"] > 0
    assert goal["lines"][-1] == "  Goal met."


def test_the_goal_is_not_met_when_the_head_pays_or_a_static_strategy_is_as_good():
    assert _goal({**STATIC, "overfit_guard": (0.80, 0.50, 0.5)})["met"] is False  # the head pays 10 points
    goal = _goal({**STATIC, "group_dro": (0.90, 0.30, 0.1)})  # level with upsampling
    assert goal["met"] is False and goal["policies"]["group_dro"]["beats"] == {"f1_tail": False,
                                                                             "recall_worst": False}
    assert _goal({**STATIC, "overfit_guard": (0.895, 0.35, 0.05)}, seeds=(0,))["met"] is None


def _grid_result(table, seeds=(0, 1, 2)):
    runs = [_run(n, s, h + 0.005 * s, t + 0.02 * s + (0.004 * i * s if n != "guard_p3_s0.5" else 0), 0.0)
            for i, (n, (h, t)) in enumerate(table.items()) for s in seeds]
    return CompareResult({}, runs, summarize(runs))


def test_tuning_keeps_the_default_unless_another_setting_beats_it_beyond_the_noise():
    table = {"natural": (0.90, 0.1), "guard_p3_s0.5": (0.895, 0.30), "guard_p1_s1": (0.895, 0.301),
             "guard_p5_s0.25": (0.80, 0.60)}
    report = adaptive_study.choose(_grid_result(table))
    # p1_s1 is ahead of the default by a hair the seeds do not separate; p5_s0.25 costs the head
    assert report["kept"]["name"] == "guard_p3_s0.5" and "beyond the seed noise" in report["kept"]["why"]
    table["guard_p1_s1"] = (0.895, 0.35)
    assert adaptive_study.choose(_grid_result(table))["kept"]["name"] == "guard_p1_s1"
    low_heads = {"natural": (0.90, 0.1), "guard_p3_s0.5": (0.80, 0.30), "guard_p5_s0.25": (0.85, 0.25)}
    kept = adaptive_study.choose(_grid_result(low_heads))["kept"]
    assert kept["name"] == "guard_p5_s0.25" and not kept["head_ok"] and "best head recall" in kept["why"]


def test_the_guard_grid_names_every_setting():
    grid = adaptive_study.guard_grid()
    assert len(grid) == len(adaptive_study.PATIENCE) * len(adaptive_study.SMOOTHING)
    assert {r.name for r in grid} >= {"guard_p3_s0.5", "guard_p1_s0.25", "guard_p5_s1"}
    assert all(r.policy == "overfit_guard" and r.strategy == "upsample" for r in grid)
    assert not math.isnan(dict(grid[0].policy_args)["smoothing"])


@pytest.mark.parametrize("bad", [["--overfit-patience", "0"], ["--overfit-smoothing", "1.5"]])
def test_bad_guard_settings_exit_2(tmp_path, capsys, bad):
    assert main(["compare", *TINY, "--adaptive", *bad, "--out", str(tmp_path / "out")]) == 2
    assert "overfit_" in capsys.readouterr().err and not (tmp_path / "out").exists()
