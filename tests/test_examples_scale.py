"""examples/scale_litdata.py runs, and what it prints is the mixture's closed-form counts at the switch and end."""

import glob
import os
import re
import subprocess
import sys
import tempfile

import pytest

from lightning_balance import Cooldown, Mixture

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZES = [3000, 1200, 400, 120, 40, 12]


def test_scale_litdata_example_runs():
    pytest.importorskip("litdata")
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "scale_litdata-*")))
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "scale_litdata.py"), "--steps", "20", "--batch-size", "8"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
        env={**os.environ, "LITDATA_DISABLE_VERSION_CHECK": "1", "PYTHONWARNINGS": "ignore"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "6 languages, 4772 examples" in out
    assert "temperature before the switch: 5.0 (steps 0-9); after: 1.0 (steps 10-19)" in out
    rows = re.findall(r"^(\w\w)\s+(\d+)\s+(\d+)\s+([\d.]+)\s+(\d+)\s+([\d.]+)$", out, re.M)
    assert [row[0] for row in rows] == ["en", "de", "hi", "sw", "yo", "zu"]
    assert [int(row[1]) for row in rows] == SIZES
    # The printed draws are the mixture's counts at 10 and 20 steps of 8 samples, from nothing but its definition.
    reference = Mixture(SIZES, Cooldown(5.0, 1.0, 0.5), seed=0, step_size=8, total_steps=20)
    assert [int(row[2]) for row in rows] == reference.counts(80).tolist()
    assert [int(row[4]) for row in rows] == reference.counts(160).tolist()
    for _, n, _, _, draws_end, epochs_end in rows:
        assert float(epochs_end) == pytest.approx(int(draws_end) / int(n), abs=1e-3)
    # Before the switch (T = 5) the smaller a language, the more often it has been gone through.
    epochs_at_switch = [float(row[3]) for row in rows]
    assert epochs_at_switch == sorted(epochs_at_switch) and epochs_at_switch[-1] > 10 * epochs_at_switch[0]
    assert "no example repeated before its language's pass was complete: True" in out
    # The temporary shards are removed at the end.
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "scale_litdata-*"))) <= before
