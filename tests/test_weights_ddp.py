"""Upweighting with ``normalize="weights"`` trains the same model on two processes as on one."""

import os

import pytest
import torch

from tests.helpers import launch_script

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "weights_ddp.py")


def _launch(out, devices, batch_size, *extra):
    return launch_script(SCRIPT, out, devices, batch_size, *extra)


@pytest.mark.ddp
def test_weight_normalisation_is_independent_of_the_number_of_processes(tmp_path):
    ranks = _launch(tmp_path / "ddp", devices=2, batch_size=8)
    (single,) = _launch(tmp_path / "single", devices=1, batch_size=16)
    assert [rank["world_size"] for rank in ranks] == [2, 2] and single["world_size"] == 1
    assert ranks[0]["global_step"] == ranks[1]["global_step"] == single["global_step"] == 20

    # The ranks' halves of a global batch carry different weight sums, so dividing each rank's loss by its own
    # sum would train another model: the comparison below has power.
    sums = torch.tensor([ranks[0]["weight_sums"], ranks[1]["weight_sums"]], dtype=torch.float64)
    torch.testing.assert_close(sums.sum(0), torch.tensor(single["weight_sums"], dtype=torch.float64))
    assert (sums[0] / sums[1]).max() > 1.5 or (sums[1] / sums[0]).max() > 1.5

    initial = torch.nn.Linear(4, 4)
    for name, values in single["parameters"].items():
        expected = torch.tensor(values)
        assert not torch.allclose(expected, getattr(initial, name.split(".")[-1]).detach().flatten(), atol=1e-2)
        for rank in ranks:
            torch.testing.assert_close(torch.tensor(rank["parameters"][name]), expected, atol=1e-5, rtol=0)
