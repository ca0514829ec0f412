"""Adaptive mixing: policies against hand-written references, and the callback under a Trainer."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from lightning_balance import AdaptiveMixing
from lightning_balance.policies import GroupDRO, GroupSignals, MixingDecision, OnlineMixing, OverfitGuard
from tests.helpers import RecordIndices, ToyData, ToyModel, trainer


def _signals(train, probs, natural=None, val=None):
    k = len(train)
    natural = probs if natural is None else natural
    return GroupSignals(0, torch.tensor(train, dtype=torch.float64), torch.ones(k, dtype=torch.float64),
                        None if val is None else torch.tensor(val, dtype=torch.float64), torch.zeros(k),
                        torch.zeros(k), torch.tensor(probs, dtype=torch.float64),
                        torch.tensor(natural, dtype=torch.float64), torch.ones(k, dtype=torch.float64))


# ---------------------------------------------------------------- policies
def test_group_dro_is_exponentiated_gradient():
    policy = GroupDRO(step_size=0.5)
    q = np.ones(3) / 3
    for losses in ([1.0, 2.0, 0.5], [0.2, 3.0, float("nan")]):
        decision = policy(_signals(losses, [0.6, 0.3, 0.1]))
        q = q * np.exp(0.5 * np.nan_to_num(losses))  # an unobserved group keeps its weight
        q = q / q.sum()
        np.testing.assert_allclose(decision.loss_weights.numpy(), q / np.array([0.6, 0.3, 0.1]), rtol=1e-12)


def test_online_mixing_is_exp3_with_decaying_exploration():
    policy = OnlineMixing()
    k = 3
    log_w = np.zeros(k)
    for t, losses in enumerate([[1.0, 2.0, 3.0], [0.5, 0.5, 4.0], [1.0, 1.0, 1.0]], start=1):
        eps_prev = min(1 / k, np.sqrt(np.log(k) / (k * max(t - 1, 1))))
        log_w += eps_prev * np.array(losses)
        eps = min(1 / k, np.sqrt(np.log(k) / (k * t)))
        w = np.exp(log_w - log_w.max())
        expected = (1 - k * eps) * w / w.sum() + eps
        np.testing.assert_allclose(policy(_signals(losses, [1 / 3] * 3)).probs.numpy(), expected / expected.sum(),
                                   rtol=1e-12)
    state = policy.state_dict()
    clone = OnlineMixing()
    clone.load_state_dict(state)
    assert torch.equal(clone(_signals([1.0, 2.0, 3.0], [1 / 3] * 3)).probs,
                       policy(_signals([1.0, 2.0, 3.0], [1 / 3] * 3)).probs)


def test_overfit_guard_moves_emphasis_and_keeps_the_objective():
    guard = OverfitGuard(patience=2, smoothing=1.0)
    target, natural = [0.4, 0.3, 0.3], [0.8, 0.15, 0.05]
    assert guard(_signals([1.0, 1.0, 1.0], target, natural, val=[1.0, 1.0, 1.0])).probs is None
    assert guard(_signals([0.9, 0.8, 0.8], target, natural, val=[0.9, 0.9, 1.1])).probs is None
    # Group 2's validation loss rose twice while its training loss fell; group 1's rose once only.
    decision = guard(_signals([0.8, 0.7, 0.6], target, natural, val=[0.8, 1.0, 1.2]))
    assert guard.guarded.tolist() == [False, False, True]
    probs, weights = decision.probs.numpy(), decision.loss_weights.numpy()
    assert probs[2] == pytest.approx(0.05) and probs.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(probs * weights, target)  # E[w * loss] is the configured mixture's loss
    with pytest.raises(ValueError, match="validation"):
        OverfitGuard()(_signals([1.0], [1.0]))


def test_overfit_guard_ignores_a_rise_when_training_loss_rises_too():
    guard = OverfitGuard(patience=1, smoothing=1.0)
    guard(_signals([1.0, 1.0], [0.5, 0.5], [0.9, 0.1], val=[1.0, 1.0]))
    assert guard(_signals([1.0, 1.5], [0.5, 0.5], [0.9, 0.1], val=[1.0, 1.5])).probs is None


@pytest.mark.parametrize("kwargs,match", [
    (dict(every_n_steps=0), "every_n_steps"),
    (dict(on="epoch"), "`on`"),
    (dict(lookahead_batches=0), "lookahead_batches"),
])
def test_callback_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdaptiveMixing(OnlineMixing(), **kwargs)


# ---------------------------------------------------------------- in a Trainer
class _Broken:
    def __init__(self, probs):
        self.probs = probs

    def __call__(self, signals):
        return MixingDecision(probs=torch.tensor(self.probs))

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


@pytest.mark.parametrize("probs,match", [
    ([float("nan"), 1.0, 1.0, 1.0], "finite"),
    ([-1.0, 1.0, 1.0, 1.0], "non-negative"),
    ([0.0, 0.0, 0.0, 0.0], "not all zero"),
    ([0.5, 0.5], "4 groups"),
])
def test_a_bad_policy_output_is_named(probs, match):
    dm = ToyData(strategy="upsample", temperature=2.0, batch_size=8)
    with pytest.raises(ValueError, match=match):
        trainer(max_steps=6, callbacks=[AdaptiveMixing(_Broken(probs), every_n_steps=2)]).fit(ToyModel(), dm)


def test_validation_mode_needs_a_validation_loop():
    dm = ToyData(strategy="upsample", temperature=2.0, batch_size=8)
    with pytest.raises(ValueError, match="needs a validation loop"):
        trainer(max_steps=2, callbacks=[AdaptiveMixing(OverfitGuard(), on="validation")]).fit(ToyModel(), dm)


def test_epoch_order_cannot_change_probabilities():
    dm = ToyData(strategy="natural", batch_size=8)
    with pytest.raises(ValueError, match="order='stratified'"):
        trainer(max_steps=2, callbacks=[AdaptiveMixing(OnlineMixing())]).fit(ToyModel(), dm)


def _adaptive_run(tmp_path=None, ckpt=None, save_every=0, max_steps=40):
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint

    pl.seed_everything(0, verbose=False)  # the same initial model in every run, so the same losses
    recorder = RecordIndices()
    mixing = AdaptiveMixing(OnlineMixing(scale=5.0), every_n_steps=5)
    callbacks = [recorder, mixing]
    if save_every:
        callbacks.append(ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=save_every, save_top_k=-1))
    dm = ToyData(strategy="upsample", temperature=1.0, batch_size=8, samples_per_epoch=160, seed=1, order="stratified")
    trainer(max_steps=max_steps, callbacks=callbacks, enable_checkpointing=bool(save_every)).fit(
        ToyModel(), dm, ckpt_path=ckpt)
    return recorder, mixing, dm


def test_changes_apply_ahead_of_training_and_keep_the_past(tmp_path):
    recorder, mixing, dm = _adaptive_run()
    assert len(mixing.history) == 8  # steps 5, 10, ..., 40
    assert all(record["position"] == (record["step"] + 2) * 8 for record in mixing.history)
    mixture = dm.mixture()
    assert [p for p, _ in mixture.adaptations] == [record["position"] for record in mixing.history]
    # Training drew exactly the stream the final mixture describes, and nothing before the first change moved.
    stream = [i for step in recorder.steps for i in step]
    assert stream == dm.group_index.order[mixture.indices(0, 40 * 8)].tolist()
    plain = dm.group_index.order[type(mixture)(mixture.sizes, 1.0, seed=1).indices(0, 56)].tolist()
    assert stream[:56] == plain
    # The policy moved probability towards the high-loss (tail) groups.
    assert mixing.history[-1]["probs"][3] > 4 / 376


def test_resume_replays_the_probability_history(tmp_path):
    full, full_mixing, _ = _adaptive_run()
    _adaptive_run(tmp_path, save_every=20, max_steps=20)
    checkpoint = sorted(glob.glob(os.path.join(tmp_path, "*.ckpt")))[0]
    resumed, resumed_mixing, _ = _adaptive_run(ckpt=checkpoint)
    assert resumed.steps == full.steps[20:]
    assert resumed_mixing.history == full_mixing.history


def test_a_checkpoint_of_another_policy_warns(tmp_path):
    _adaptive_run(tmp_path, save_every=10, max_steps=10)
    checkpoint = sorted(glob.glob(os.path.join(tmp_path, "*.ckpt")))[0]
    state = torch.load(checkpoint, weights_only=False)
    key = next(k for k in state["callbacks"] if k.startswith("AdaptiveMixing"))
    mixing = AdaptiveMixing(GroupDRO())
    with pytest.warns(UserWarning, match="policy 'OnlineMixing' with policy 'GroupDRO'"):
        mixing.load_state_dict(state["callbacks"][key])


SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "adaptive_ddp.py")


def _launch(out, *args, timeout=300):
    out.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, SCRIPT, "--out", str(out), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.ddp
def test_ranks_decide_the_same_as_one_process(tmp_path):
    ddp = _launch(tmp_path / "ddp", "--devices", "2", "--batch-size", "8")
    _, err = ddp.communicate(timeout=300)
    assert ddp.returncode == 0, err[-3000:]
    single = _launch(tmp_path / "single", "--devices", "1", "--batch-size", "16")
    _, err = single.communicate(timeout=300)
    assert single.returncode == 0, err[-3000:]
    ranks = [json.load(open(tmp_path / "ddp" / f"rank{r}.json")) for r in range(2)]
    (one,) = [json.load(open(tmp_path / "single" / "rank0.json"))]
    assert ranks[0]["history"] == ranks[1]["history"]
    assert len(one["history"]) == len(ranks[0]["history"]) > 0
    for a, b in zip(ranks[0]["history"], one["history"], strict=True):
        assert a["position"] == b["position"]
        np.testing.assert_allclose(a["probs"], b["probs"], rtol=1e-6)


def test_sigkill_and_resume_is_exact(tmp_path):
    # An uninterrupted run, then a run killed with SIGKILL after its step-20 checkpoint, resumed from it.
    reference = _launch(tmp_path / "full", "--devices", "1", "--batch-size", "8")
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err[-3000:]
    killed = _launch(tmp_path / "killed", "--devices", "1", "--batch-size", "8", "--save-every", "20",
                     "--slow-after", "20")
    checkpoint = tmp_path / "killed" / "epoch=0-step=20.ckpt"
    import time

    deadline = time.time() + 240
    while not checkpoint.exists() and time.time() < deadline and killed.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)  # let the checkpoint file be complete
    killed.kill()
    killed.communicate()
    assert checkpoint.exists()
    resumed = _launch(tmp_path / "resumed", "--devices", "1", "--batch-size", "8", "--resume", str(checkpoint))
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    full = json.load(open(tmp_path / "full" / "rank0.json"))
    again = json.load(open(tmp_path / "resumed" / "rank0.json"))
    assert again["steps"] == full["steps"][20:]
    assert again["history"] == full["history"]
