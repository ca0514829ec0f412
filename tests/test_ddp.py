"""Two CPU processes under Lightning's DDP train on exactly the single-process sample sequence."""

import os

import pytest

from tests.helpers import launch_script

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "train_ddp.py")


def _launch(out, devices, batch_size, *extra):
    return launch_script(SCRIPT, out, devices, batch_size, *extra)


@pytest.mark.ddp
def test_ddp_ranks_partition_the_single_process_sequence(tmp_path):
    ranks = _launch(tmp_path / "ddp", devices=2, batch_size=8)
    (single,) = _launch(tmp_path / "single", devices=1, batch_size=16)

    for rank in ranks:
        assert rank["world_size"] == 2
        # Lightning kept our sampler: it neither wrapped it in DistributedSamplerWrapper nor re-shuffled it.
        assert rank["sampler_is_ours"] and rank["sampler_is_mixture"]
    assert len(ranks[0]["steps"]) == len(ranks[1]["steps"]) == len(single["steps"]) == 3 * 20
    assert all(len(step) == 8 for rank in ranks for step in rank["steps"])

    # Rank r trains on global[r::2]; interleaving the ranks gives back the single-process sequence.
    flat = [[i for step in rank["steps"] for i in step] for rank in ranks]
    interleaved = [flat[r][i] for i in range(len(flat[0])) for r in range(2)]
    assert interleaved == [i for step in single["steps"] for i in step]
    # The Cooldown switch lands on the same optimizer step in both runs.
    assert ranks[0]["temperatures"] == ranks[1]["temperatures"] == single["temperatures"]
    assert ranks[0]["temperatures"].index(1.0) == 30


@pytest.mark.ddp
def test_resume_on_two_processes_continues_a_one_process_stream(tmp_path):
    # One process, batch 8, checkpoint after 13 steps (104 samples); resume on two processes with batch 8 each.
    (single,) = _launch(tmp_path / "single", 1, 8, "--max-steps", "60", "--save-every", "13")
    checkpoint = tmp_path / "single" / "epoch=0-step=13.ckpt"
    assert checkpoint.exists()
    ranks = _launch(tmp_path / "resumed", 2, 8, "--max-steps", "60", "--resume", str(checkpoint))
    assert len(ranks[0]["steps"]) == len(ranks[1]["steps"]) == 60 - 13
    flat = [[i for step in rank["steps"] for i in step] for rank in ranks]
    resumed = [flat[r][i] for i in range(len(flat[0])) for r in range(2)]
    stream = [i for step in single["steps"] for i in step]
    # Cooldown switches at optimizer step 30 of 60 in both runs, whatever their global batch ...
    assert single["temperatures"].index(1.0) == 30
    assert ranks[0]["temperatures"] == ranks[1]["temperatures"]
    assert ranks[0]["temperatures"].index(1.0) == 30 - 13
    # ... and until the single run's switch (sample 30 * 8) the resumed run continues its stream exactly.
    assert resumed[: 30 * 8 - 104] == stream[104 : 30 * 8]
