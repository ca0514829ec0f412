"""Device check: what SALN's scoring costs next to a training step, the Fiedler solvers, and the sampler's rate.

Writes ``gpu.md`` (default folder ``benchmarks/results``) with three tables:

1. **Scoring against a step.** The training step (forward, backward, SGD) of a small conv net defined here
   (``SmallConvNet``: three 3x3 convolutions on 3 x 32 x 32 images, ten classes; no torchvision) at B = 256 and
   1024, in fp32 and in bf16-mixed (autocast), against SALN's per-step work on the same batch: the frozen
   features (D = 512) gathered from a host-side table and copied with ``non_blocking=True``, ``spectral_scores``
   (``solver="auto"`` and ``"eigh"``), the top-k and the cut of the batch; and, for the loss-based baselines, a
   no-grad forward pass of the batch. Reported as a percentage of the step.
2. **Fiedler solvers.** ``eigh``, ``subspace`` and ``lobpcg`` on batches of clustered features (a Gaussian mixture
   of ten clusters, D = 512): time per batch, graphs handed to ``eigh``, and how often the kept half of a batch
   is the same as ``eigh``'s.
3. **Sampler.** ``lightning_balance.Mixture.indices`` on 100 long-tailed groups (IF = 100) at T = 5: indices per
   second (it runs on the CPU whatever the device).

On a machine without CUDA the same code runs on the CPU, and the file says so; ``--quick`` shrinks every size
for a smoke run (``tests/test_gpu_check.py`` runs it). One GPU: about a minute; CPU without ``--quick``: a few
minutes. Timings are medians of repeats, synchronised on CUDA; torch runs one CPU thread unless ``--threads``.

Usage: ``python benchmarks/gpu_check.py [--quick] [--out DIR] [--device cpu|cuda] [--threads N]``
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from lightning_balance import Mixture  # noqa: E402
from lightning_balance.functional import fiedler_vectors, spectral_scores  # noqa: E402
from lightning_balance.functional.spectral import _score, _similarity  # noqa: E402
from lightning_balance.selection import keep_count, select_top_k  # noqa: E402

DEFAULT_OUT = HERE / "results"


class SmallConvNet(nn.Module):
    """Three 3x3 convolutions (32, 64, 128 channels) with ReLU and pooling, then a linear layer: a CIFAR-sized
    classifier small enough that SALN's scoring is not hidden by the step."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.head = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _autocast(device: torch.device, precision: str) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")


def clustered(n: int, b: int, d: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(10, d, generator=gen)
    labels = torch.randint(0, 10, (n, b), generator=gen)
    return (centres[labels] + 0.8 * torch.randn(n, b, d, generator=gen)).to(device)


# ------------------------------------------------------------------------------------------------ part 1


def step_cost(device: torch.device, sizes: Sequence[int], repeats: int, dim: int = 512) -> list[dict]:
    rows = []
    for b in sizes:
        images = torch.randn(b, 3, 32, 32, device=device)
        targets = torch.randint(0, 10, (b,), device=device)
        # The frozen-feature cache SALN keeps in host memory (pinned with CUDA), 4 batches' worth of rows.
        table = clustered(1, 4 * b, dim, torch.device("cpu"))[0]
        if device.type == "cuda":
            table = table.pin_memory()
        indices = torch.randperm(4 * b)[:b]
        for precision in ("fp32", "bf16-mixed"):
            rows.append(_step_row(device, precision, images, targets, table, indices, repeats))
            r = rows[-1]
            print(f"  step B={b} {precision}: step {r['step_ms']:.2f} ms, spectral auto {r['spectral_auto_ms']:.2f} /"
                  f" eigh {r['spectral_eigh_ms']:.2f} ms, loss forward {r['loss_forward_ms']:.2f} ms", flush=True)
    return rows


def _step_row(device: torch.device, precision: str, images: torch.Tensor, targets: torch.Tensor, table: torch.Tensor,
              indices: torch.Tensor, repeats: int) -> dict:
    b = len(images)
    k = keep_count(0.5, b)
    torch.manual_seed(0)
    model = SmallConvNet().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def train_step() -> None:
        with _autocast(device, precision):
            loss = nn.functional.cross_entropy(model(images), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def saln_step(solver: str) -> Callable[[], Any]:
        def run() -> Any:
            rows = table.index_select(0, indices)
            if device.type == "cuda":
                rows = rows.pin_memory()
            feats = rows.to(device, non_blocking=True)
            positions = select_top_k(spectral_scores(feats, solver=solver), k)
            return images[positions], targets[positions]

        return run

    def loss_forward() -> Any:
        with torch.no_grad(), _autocast(device, precision):
            losses = nn.functional.cross_entropy(model(images), targets, reduction="none")
        return select_top_k(losses.float(), k)

    return {"B": b, "precision": precision, "step_ms": _median_ms(train_step, device, repeats),
            "spectral_auto_ms": _median_ms(saln_step("auto"), device, repeats),
            "spectral_eigh_ms": _median_ms(saln_step("eigh"), device, repeats),
            "loss_forward_ms": _median_ms(loss_forward, device, repeats)}


# ------------------------------------------------------------------------------------------------ part 2


def solver_comparison(device: torch.device, sizes: Sequence[int], batches: int, repeats: int,
                      dim: int = 512) -> list[dict]:
    rows = []
    for b in sizes:
        sim = _similarity(clustered(batches, b, dim, device, seed=b), "clamp")
        k = keep_count(0.5, b)
        reference = select_top_k(_score(fiedler_vectors(sim, method="eigh"), "boundary", None), k)
        for method in ("eigh", "subspace", "lobpcg"):
            info = fiedler_vectors(sim, method=method, return_info=True)
            kept = select_top_k(_score(info.vectors, "boundary", None), k)
            ms = _median_ms(lambda m=method, s=sim: fiedler_vectors(s, method=m), device, repeats, warmup=1) / batches
            rows.append({"B": b, "method": method, "ms_per_batch": ms, "batches": batches,
                         "fallbacks": int(info.fallback.sum()),
                         "same_kept_set": int((kept == reference).all(-1).sum())})
            print(f"  solver B={b} {method}: {ms:.2f} ms/batch, fallbacks {rows[-1]['fallbacks']},"
                  f" same kept set {rows[-1]['same_kept_set']}/{batches}", flush=True)
    return rows


# ------------------------------------------------------------------------------------------------ part 3


def sampler_rate(total: int, chunk: int, repeats: int) -> dict:
    shares = [0.01 ** (i / 99) for i in range(100)]
    sizes = [max(1, round(total * share / sum(shares))) for share in shares]
    mixture = Mixture(sizes, temperature=5.0, seed=0)
    start = 0

    def draw() -> None:
        nonlocal start
        mixture.indices(start, start + chunk)
        start += chunk

    ms = _median_ms(draw, torch.device("cpu"), repeats)
    return {"groups": 100, "examples": sum(sizes), "chunk": chunk, "indices_per_s": chunk / (ms / 1e3)}


# ------------------------------------------------------------------------------------------------ report


def write_report(out: Path, device: torch.device, quick: bool, steps: list[dict], solvers: list[dict],
                 sampler: dict, seconds: float) -> Path:
    on_gpu = device.type == "cuda"
    name = torch.cuda.get_device_name(device) if on_gpu else f"{platform.processor() or platform.machine()} CPU"
    lines = ["# Device check", "",
             f"Generated by `python benchmarks/gpu_check.py{' --quick' if quick else ''}` on"
             f" {time.strftime('%Y-%m-%d')} in {seconds:.0f} s: torch {torch.__version__}, device **{name}**,"
             f" {torch.get_num_threads()} CPU thread(s).", ""]
    if not on_gpu:
        lines += ["**No CUDA device was available: every figure below was measured on the CPU**, with the same code"
                  " that runs on a GPU" + (" and the smaller sizes of `--quick`" if quick else "") + ". Rerun on a"
                  " GPU machine for the GPU figures.", ""]
    lines += ["## SALN's scoring against a training step", "",
              "Training step of `SmallConvNet` (3 x 32 x 32 inputs, forward + backward + SGD). SALN spectral: the"
              " batch's frozen features (D = 512) gathered from the host table and copied to the device, then"
              " `spectral_scores`, top-k of half the batch and the cut; loss forward: the no-grad forward that"
              " the loss-based baselines (loss, Selective Backprop, RHO-LOSS, JEST) add. Medians of repeats.", "",
              "| B | precision | step (ms) | spectral, auto (ms) | % of step | spectral, eigh (ms) | % of step |"
              " loss forward (ms) | % of step |", "|---|---|---|---|---|---|---|---|---|"]
    for r in steps:
        pct = {key: 100 * r[key] / r["step_ms"] for key in ("spectral_auto_ms", "spectral_eigh_ms", "loss_forward_ms")}
        lines.append(f"| {r['B']} | {r['precision']} | {r['step_ms']:.2f} | {r['spectral_auto_ms']:.2f} |"
                     f" {pct['spectral_auto_ms']:.0f}% | {r['spectral_eigh_ms']:.2f} | {pct['spectral_eigh_ms']:.0f}% |"
                     f" {r['loss_forward_ms']:.2f} | {pct['loss_forward_ms']:.0f}% |")
    lines += ["", "## Fiedler solvers", "",
              "Clustered features (ten Gaussian clusters, D = 512, clamped cosine graph, random-walk Laplacian);"
              " 'same kept set': batches whose kept half (boundary score) is exactly `eigh`'s.", "",
              "| B | solver | ms per batch | handed to eigh | same kept set as eigh |", "|---|---|---|---|---|"]
    for r in solvers:
        lines.append(f"| {r['B']} | {r['method']} | {r['ms_per_batch']:.2f} | {r['fallbacks']}/{r['batches']} |"
                     f" {r['same_kept_set']}/{r['batches']} |")
    lines += ["", "## Sampler", "",
              f"`Mixture.indices` over {sampler['groups']} long-tailed groups ({sampler['examples']:,} examples,"
              f" T = 5), chunks of {sampler['chunk']:,} positions: **{sampler['indices_per_s'] / 1e6:.2f} M indices/s**"
              " (CPU, whatever the training device).", ""]
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gpu.md"
    path.write_text("\n".join(lines))
    return path


def main(argv: Optional[Sequence[str]] = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (a smoke run)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: benchmarks/results)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda when available")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for torch (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    start = time.perf_counter()
    if args.quick:
        steps = step_cost(device, (64, 128), repeats=3)
        solvers = solver_comparison(device, (128, 256), batches=2, repeats=2)
        sampler = sampler_rate(10**5, 10**4, repeats=3)
    else:
        steps = step_cost(device, (256, 1024), repeats=10 if device.type == "cuda" else 5)
        gpu = device.type == "cuda"
        solvers = solver_comparison(device, (256, 1024) + ((2048,) if gpu else ()), batches=8 if gpu else 4,
                                    repeats=5 if gpu else 3)
        sampler = sampler_rate(10**7, 10**6, repeats=5)
    path = write_report(args.out, device, args.quick, steps, solvers, sampler, time.perf_counter() - start)
    print(f"wrote {path} in {time.perf_counter() - start:.0f} s")
    return path


if __name__ == "__main__":
    main()
