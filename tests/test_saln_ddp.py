"""SALN under two-process CPU DDP: every rank trains on the same number of samples at every step."""

import json
import os
import subprocess
import sys

import pytest

from lightning_balance import LinearRamp
from lightning_balance.selection import keep_count, resolve_keep

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "saln_ddp.py")


def _launch(out, features):
    out.mkdir()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, SCRIPT, "--out", str(out), "--devices", "2", "--features", features],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.load(open(out / f"rank{r}.json")) for r in range(2)]


@pytest.mark.ddp
@pytest.mark.parametrize("features", ["inputs", "embed"])
def test_ranks_keep_the_same_number_per_step(tmp_path, features):
    ranks = _launch(tmp_path / features, features)
    assert all(rank["world_size"] == 2 for rank in ranks)
    steps = [rank["steps"] for rank in ranks]
    # 240 samples per epoch over 2 ranks of 12: 10 steps per epoch, 2 epochs.
    assert len(steps[0]) == len(steps[1]) == 20
    schedule = LinearRamp(start=1.0, end=0.3)
    for step, (a, b) in enumerate(zip(*steps, strict=True)):
        assert a["global_step"] == b["global_step"] == step
        want = keep_count(resolve_keep(schedule, step / 20), 12)
        assert a["size"] == b["size"] == want
    # The schedule did shrink the batches, and the ranks trained on different samples.
    assert steps[0][-1]["size"] == 5 < steps[0][0]["size"] == 12
    assert any(a["x"] != b["x"] for a, b in zip(*steps, strict=True))
    assert ranks[0]["kept"] == ranks[1]["kept"] == sum(s["size"] for s in steps[0])
