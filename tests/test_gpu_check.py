"""The device check runs on a CPU-only machine (its --quick path) and says so in what it writes."""

import importlib.util
import os
import time

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "gpu_check.py")


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_cpu_run_writes_the_three_tables(tmp_path):
    start = time.perf_counter()
    path = _load().main(["--quick", "--device", "cpu", "--out", str(tmp_path)])
    assert time.perf_counter() - start < 60
    text = path.read_text()
    assert path == tmp_path / "gpu.md"
    assert "No CUDA device was available: every figure below was measured on the CPU" in text
    assert "--quick" in text
    for b in (64, 128):
        for precision in ("fp32", "bf16-mixed"):
            assert f"| {b} | {precision} |" in text
    for solver in ("eigh", "subspace", "lobpcg"):
        assert f"| 256 | {solver} |" in text
    assert "M indices/s" in text


def test_conv_net_is_defined_here_without_torchvision():
    import torch

    model = _load().SmallConvNet()
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    with open(SCRIPT) as f:
        assert "torchvision" not in f.read().replace("no torchvision", "")
