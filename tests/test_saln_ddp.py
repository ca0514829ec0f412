"""SALN under two-process CPU DDP: every rank trains on the same number of samples at every step, selection
(in-batch or from a super-batch) happens within each rank's own batch, and saved caches hold every rank's part."""

import json
import os
import subprocess
import sys

import pytest
import torch

from lightning_balance import LinearRamp
from lightning_balance.functional import spectral_scores
from lightning_balance.selection import keep_count, resolve_keep, select_top_k

SCRIPT = os.path.join(os.path.dirname(__file__), "scripts", "saln_ddp.py")


def _launch(out, *args):
    out.mkdir()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run(
        [sys.executable, SCRIPT, "--out", str(out), "--devices", "2", *args],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.load(open(out / f"rank{r}.json")) for r in range(2)]


@pytest.mark.ddp
@pytest.mark.parametrize("features", ["inputs", "embed"])
def test_ranks_keep_the_same_number_per_step(tmp_path, features):
    ranks = _launch(tmp_path / features, "--features", features)
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


@pytest.mark.ddp
def test_super_batch_selection_is_per_rank_and_saved_caches_cover_every_rank(tmp_path):
    out = tmp_path / "super"
    ranks = _launch(out, "--mode", "super_batch", "--kept", "5")
    sys.path.insert(0, os.path.dirname(SCRIPT))
    from saln_ddp import extractor  # the script's frozen extractor, same seed

    frozen = extractor().eval()
    for rank in ranks:
        assert len(rank["before"]) == len(rank["after"]) == 20
        assert all(s["size"] == 5 for s in rank["steps"])
        for full, kept in zip(rank["before"], rank["after"], strict=True):
            # Each rank selects 5 of its own 12: the graph is the rank's super-batch, never the global one.
            with torch.no_grad():
                feats = frozen(torch.tensor(full["x"]))
            want = select_top_k(spectral_scores(feats), 5)
            assert kept["indices"] == [full["indices"][i] for i in want.tolist()]
    seen_by = [{i for s in rank["before"] for i in s["indices"]} for rank in ranks]
    assert seen_by[0] != seen_by[1]
    # The checkpoint holds the union of both ranks' cached features, with the extractor's values.
    state = torch.load(out / "last.ckpt", weights_only=False)["callbacks"]
    (saved,) = [v for k, v in state.items() if k.startswith("SALN")]
    filled = saved["features"]["filled"]
    seen = seen_by[0] | seen_by[1]
    only_rank1 = seen - seen_by[0]
    assert only_rank1 and set(torch.nonzero(filled).flatten().tolist()) == seen
    rows = {i: x for rank in ranks for s in rank["before"] for i, x in zip(s["indices"], s["x"], strict=True)}
    index = torch.tensor(sorted(rows))
    with torch.no_grad():
        want = frozen(torch.tensor([rows[i] for i in index.tolist()]))
    torch.testing.assert_close(saved["features"]["values"][index], want, atol=1e-6, rtol=0)
