"""The README's example script runs and the balancing strategies lift tail recall over natural sampling."""

import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quickstart_runs():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "quickstart.py")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    runs = re.findall(r"^\s*(\w+) T=(.+?): tail recall ([\d.]+)", result.stdout, re.M)
    assert [(strategy, t) for strategy, t, _ in runs] == [
        ("natural", "1.0"),
        ("upsample", "5.0"),
        ("upweight", "5.0"),
        ("upsample", "Cooldown(start=5.0, end=1.0, at=0.5)"),
    ]
    natural, upsample, upweight = (float(recall) for _, _, recall in runs[:3])
    assert upsample > natural and upweight > natural
