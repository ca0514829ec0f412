"""Resuming from a mid-epoch checkpoint continues the exact index stream of an uninterrupted run."""

import glob
import os

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_balance import Cooldown
from tests.helpers import RecordIndices, ToyData, ToyModel, trainer

STEPS = 50  # 20 steps per epoch: checkpoints at 13 (mid epoch 0) and 26 (mid epoch 1)


def _run(tmp_path, strategy, temperature, ckpt_path=None, save_every=None, num_workers=2):
    recorder = RecordIndices()
    callbacks = [recorder]
    if save_every:
        callbacks.append(ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=save_every, save_top_k=-1))
    dm = ToyData(strategy=strategy, temperature=temperature, batch_size=8, samples_per_epoch=160,
                 num_workers=num_workers, seed=4)
    torch.manual_seed(0)
    model = ToyModel()
    trainer(max_steps=STEPS, callbacks=callbacks, enable_checkpointing=bool(save_every)).fit(
        model, dm, ckpt_path=ckpt_path
    )
    return recorder, model


@pytest.mark.parametrize("strategy, temperature", [
    ("upsample", Cooldown(5.0, 1.0, 0.5)),
    ("upweight", Cooldown(5.0, 1.0, 0.5)),
    ("natural", 1.0),
])
def test_resume_matches_uninterrupted_run(tmp_path, strategy, temperature):
    full, full_model = _run(tmp_path, strategy, temperature, save_every=13)
    assert len(full.steps) == STEPS
    checkpoints = {int(p.split("step=")[1].split(".")[0]): p for p in glob.glob(os.path.join(tmp_path, "*.ckpt"))}
    assert sorted(checkpoints) == [13, 26, 39]
    for step in (13, 26):
        resumed, resumed_model = _run(tmp_path / f"resumed{step}", strategy, temperature, ckpt_path=checkpoints[step])
        # Neither a sample skipped nor one repeated: the stream continues where training stopped, even
        # though two DataLoader workers had prefetched past that point.
        assert resumed.steps == full.steps[step:]
        assert resumed.temperatures == full.temperatures[step:]
        for a, b in zip(full_model.parameters(), resumed_model.parameters(), strict=True):
            torch.testing.assert_close(a, b)


def test_checkpoint_holds_plain_sampler_state(tmp_path):
    _run(tmp_path, "upsample", 5.0, save_every=13, num_workers=0)
    path = sorted(glob.glob(os.path.join(tmp_path, "*.ckpt")))[0]
    state = torch.load(path, weights_only=True)["ToyData"]["sampler"]  # plain values only
    assert state["position"] == 13 * 8 and state["processed"] == 13 and state["step"] == 13
    assert state["strategy"] == "upsample" and state["temperature"] == "5.0"
    assert state["mixture"]["seed"] == 4 and state["mixture"]["total"] == 376 and state["mixture"]["history"] == []


@pytest.mark.parametrize("checkpoint", [
    dict(every_n_train_steps=20),  # saved after the last batch of epoch 0
    dict(every_n_epochs=1),  # saved when the epoch ends
])
def test_resume_from_an_epoch_boundary(tmp_path, checkpoint):
    def run(path, ckpt_path=None, callbacks=()):
        recorder = RecordIndices()
        dm = ToyData(strategy="upsample", temperature=Cooldown(5.0, 1.0, 0.5), batch_size=8, samples_per_epoch=160,
                     num_workers=0, seed=4)
        torch.manual_seed(0)
        trainer(max_steps=STEPS, callbacks=[recorder, *callbacks], enable_checkpointing=bool(callbacks),
                default_root_dir=path).fit(ToyModel(), dm, ckpt_path=ckpt_path)
        return recorder

    full = run(tmp_path, callbacks=[ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, **checkpoint)])
    first = sorted(glob.glob(os.path.join(tmp_path, "*.ckpt")))[0]
    assert "step=20" in first
    resumed = run(tmp_path / "resumed", ckpt_path=first)
    assert resumed.steps == full.steps[20:]
    assert resumed.temperatures == full.temperatures[20:]


def test_limited_epochs_continue_the_stream_instead_of_skipping_it():
    # With limit_train_batches, every epoch starts where the previous one stopped in the run's stream.
    recorder = RecordIndices()
    dm = ToyData(strategy="upsample", temperature=5.0, batch_size=8, samples_per_epoch=160, seed=4)
    trainer(max_epochs=3, limit_train_batches=5, callbacks=[recorder]).fit(ToyModel(), dm)
    reference = dm.sampler.epoch_plan(0).tolist()
    assert [i for step in recorder.steps for i in step] == reference[:120]


def test_a_new_trainer_after_a_resume_starts_a_new_stream(tmp_path):
    full, _ = _run(tmp_path, "upsample", 5.0, save_every=13, num_workers=0)
    checkpoint = sorted(glob.glob(os.path.join(tmp_path, "*.ckpt")))[0]
    dm = ToyData(strategy="upsample", temperature=5.0, batch_size=8, samples_per_epoch=160, seed=4)
    resumed, fresh = RecordIndices(), RecordIndices()
    trainer(max_steps=STEPS, callbacks=[resumed]).fit(ToyModel(), dm, ckpt_path=checkpoint)
    trainer(max_steps=5, callbacks=[fresh]).fit(ToyModel(), dm)  # the same DataModule, no checkpoint
    assert resumed.steps == full.steps[13:]
    assert fresh.steps == full.steps[:5]


@pytest.mark.parametrize("batch_after", [16, 4])
def test_resume_onto_another_batch_keeps_the_schedule_on_its_optimizer_step(tmp_path, batch_after):
    # Cooldown(at=0.5) over 40 optimizer steps: the switch stays at step 20 whatever the batch after the resume,
    # and the sample stream continues from the checkpoint's position.
    schedule = Cooldown(float("inf"), 1.0, 0.5)
    dm = ToyData(strategy="upsample", temperature=schedule, batch_size=8, samples_per_epoch=160, seed=4)
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=6, save_top_k=-1)
    full = RecordIndices()
    trainer(max_steps=40, callbacks=[full, saver], enable_checkpointing=True).fit(ToyModel(), dm)
    assert full.temperatures.index(1.0) == 20
    checkpoint = os.path.join(tmp_path, "epoch=0-step=6.ckpt")
    resumed = RecordIndices()
    dm2 = ToyData(strategy="upsample", temperature=schedule, batch_size=batch_after, samples_per_epoch=160, seed=4)
    trainer(max_steps=40, callbacks=[resumed]).fit(ToyModel(), dm2, ckpt_path=checkpoint)
    assert resumed.temperatures.index(1.0) == 20 - 6
    stream = [i for step in full.steps for i in step]
    continued = [i for step in resumed.steps for i in step]
    # Both runs sample at T=inf until the first of them reaches step 20: until there the stream is the same.
    same_until = min(20 * 8, 48 + (20 - 6) * batch_after)
    assert continued[: same_until - 48] == stream[48:same_until]
    assert continued[same_until - 48 : same_until - 48 + 8] != stream[same_until : same_until + 8]
