"""Scale, seek, throughput and resume of the stateless ``Mixture`` against the samplers and data engines it replaces.

Measured side by side in one process, each figure the median of at least three repeats whose order rotates
between the alternatives, with one torch and one BLAS/OpenMP thread (``torch.set_num_threads(1)``):

* **construct**: ``Mixture(sizes, T)`` at 10^9, 10^10 and 10^12 examples in K = 100 and 10^4 virtual groups
  (long-tailed, :math:`n_i \\propto (1/100)^{i/(K-1)}`), constant ``T = 5`` and ``Cooldown(5, 1, 0.5)``: time,
  traced Python/numpy allocations (``tracemalloc`` peak) and peak RSS increase.
* **seek**: ``counts(p)`` and ``indices(p, p + 1)`` at positions 0, 10^9 and 10^11 on a fresh mixture (cold) and
  again on the same one (warm), for ``T = 5``, ``Cooldown`` and a ``LinearRamp`` over 10^4 optimizer steps; and a
  sequential read across many segments of a ramp (the cost of every segment crossed).
* **throughput**: ``Mixture.indices`` over 2^20 positions (K = 100 and 10^4), its group stage
  (``Mixture.groups``) and the Feistel ``permute`` alone, against ``np.random.permutation`` and
  ``torch.randperm`` of the same size.
* **litdata**: LitData's ``CombinedStreamingDataset(datasets, weights)`` read through its
  ``StreamingDataLoader`` over local chunks written by ``litdata.optimize``, against ``MixtureSampler`` over the
  same group sizes: samples per second, and the time from a saved state to the first batch at 10^5 and 10^6
  samples seen (LitData replays its random generator once per sample seen) against ``set_position`` + first
  batch. Each resumed first batch is checked against the uninterrupted run.
* **hf**: ``datasets.interleave_datasets(probabilities=...)`` on in-memory datasets, map-style (the interleaved
  index is built up front) and iterable (``to_iterable_dataset``, resumable through ``state_dict``).
* **wrs**: ``torch.utils.data.WeightedRandomSampler`` with one weight per example at N = 10^6 and 10^7 against
  ``TemperatureSampler`` (one epoch's indices).
* **legacy**: the 0.1 epoch-plan ``TemperatureSampler`` (``benchmarks/legacy_temperature_sampler.py``) at
  N = 10^6 in 10^4 groups with a ``LinearRamp``: one epoch's plan, and a resume in epoch 4.

Run ``python benchmarks/mixture_benchmark.py`` (under 10 minutes on 2 cores) to rewrite
``benchmarks/results/mixture.{json,md,png}``, or ``--quick`` for a smoke run (under 30 s) that writes to a
temporary folder. ``--sections`` picks sections, ``--render-only`` rewrites the table and plot from the JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime as dt
import gc
import hashlib
import importlib
import importlib.metadata
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results"
SECTIONS = ("construct", "seek", "throughput", "litdata", "hf", "wrs", "legacy")
IMBALANCE = 100.0
SEED = 0
GOAL_CONSTRUCT_S = 1.0
GOAL_CONSTRUCT_MB = 100.0
GOAL_SEEK_S = 0.010
GOAL_RATE = 5e6
GOAL_RESUME_RATIO = 1000.0
BATCH = 256


# ---------------------------------------------------------------------------------------------- helpers
def long_tail_sizes(total: int, num_groups: int, imbalance: float = IMBALANCE) -> Any:
    """Group sizes :math:`n_i \\propto (1/IF)^{i/(K-1)}` summing exactly to ``total`` (largest remainder)."""
    import numpy as np

    exact = (1.0 / imbalance) ** (np.arange(num_groups) / max(num_groups - 1, 1))
    exact = exact / exact.sum() * total
    sizes = np.floor(exact).astype(np.int64)
    short = total - int(sizes.sum())
    sizes[np.argsort(sizes - exact)[:short]] += 1
    if sizes.min() < 1:
        raise ValueError(f"{total} examples are too few for {num_groups} groups with imbalance {imbalance}.")
    return sizes


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def interleaved(cases: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Run every case ``repeats`` times, rotating the order each round; each case returns its own seconds.

    A case times only what it measures (its setup, such as building a fresh object, stays outside), and the
    rotation spreads a change in the machine's load over all cases instead of whichever ran last.
    """
    names = list(cases)
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            gc.collect()
            out[name].append(float(cases[name]()))
    return out


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _proc_kib(path: str, field: str) -> Optional[int]:
    try:
        with open(path) as proc_file:
            for line in proc_file:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def rss_peak_delta(fn: Callable[[], Any]) -> Optional[float]:
    """Peak RSS increase (MB) while ``fn`` runs, from the kernel's high-water mark; ``None`` off Linux."""
    gc.collect()
    base = _proc_kib("/proc/self/status", "VmRSS")
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        return None
    keep = fn()
    peak = _proc_kib("/proc/self/status", "VmHWM")
    del keep
    if base is None or peak is None:
        return None
    return max(0, peak - base) / 1024


def traced_peak(fn: Callable[[], Any]) -> float:
    """Peak of the allocations ``tracemalloc`` sees (Python objects and numpy buffers) while ``fn`` runs, MB."""
    gc.collect()
    tracemalloc.start()
    try:
        keep = fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    del keep
    return peak / 2**20


def load_average() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info() -> dict[str, Any]:
    import numpy as np
    import torch

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), cpu)
    except OSError:
        cpu = platform.processor() or cpu
    mem_kib = _proc_kib("/proc/meminfo", "MemTotal")
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    measured = ["lightning_balance/mixture.py", "lightning_balance/permutation.py", "lightning_balance/sampler.py"]
    try:
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", *measured], cwd=HERE.parent, capture_output=True, text=True
        ).stdout.split()[1::2]
    except OSError:
        dirty = []
    digests = {}
    for name in measured:
        with contextlib.suppress(OSError):
            digests[name] = hashlib.sha1((HERE.parent / name).read_bytes()).hexdigest()[:12]
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "ram_gib": None if mem_kib is None else round(mem_kib / 2**20, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "numpy": np.__version__,
        "litdata": version("litdata"),
        "datasets": version("datasets"),
        "lightning_balance": version("lightning-balance"),
        "git_commit": commit,
        "uncommitted_sources": dirty,
        "source_sha1": digests,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


@contextlib.contextmanager
def quiet_fds(log_path: Path) -> Iterator[None]:
    """Send this process's (and its children's) stdout and stderr to ``log_path`` for the block."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def _cell(seconds: list[float], **extra: Any) -> dict[str, Any]:
    return {"median_s": median(seconds), "seconds": seconds, **extra}


# ---------------------------------------------------------------------------------------------- config
def config(quick: bool) -> dict[str, Any]:
    """Every size the sections use; ``--quick`` shrinks them to a smoke run."""
    if quick:
        return {
            "repeats": 3,
            "rate_repeats": 3,
            "construct_totals": [10**9, 10**12],
            "construct_groups": [100, 10**4],
            "seek_total": 10**12,
            "seek_groups": [100],
            "seek_positions": [0, 10**9, 10**11],
            "ramp_steps": 10**3,
            "sweep": {"groups": 1000, "step_size": 1024, "segments": 32, "steps": (100, 10**4)},
            "rate_n": 1 << 16,
            "rate_groups": [100, 10**4],
            "litdata_sizes": [5200, 3150, 2100],
            "litdata_resume": [10**3, 10**4],
            "litdata_rate_n": 1 << 12,
            "litdata_getitem_n": 256,
            "hf_sizes": [5200, 3150, 2100],
            "hf_resume": [10**3],
            "hf_iter_n": 2000,
            "wrs_sizes": [10**5],
            "legacy": {"n": 2 * 10**4, "groups": 200, "step_size": 1024, "epochs": 10, "resume_epoch": 4},
        }
    return {
        "repeats": 3,
        "rate_repeats": 5,
        "construct_totals": [10**9, 10**10, 10**12],
        "construct_groups": [100, 10**4],
        "seek_total": 10**12,
        "seek_groups": [100, 10**4],
        "seek_positions": [0, 10**9, 10**11],
        "ramp_steps": 10**4,
        "sweep": {"groups": 10**4, "step_size": 1024, "segments": 128, "steps": (400, 10**4)},
        "rate_n": 1 << 20,
        "rate_groups": [100, 10**4],
        "litdata_sizes": [520_000, 315_000, 210_000],
        "litdata_resume": [10**5, 10**6],
        "litdata_rate_n": 1 << 18,
        "litdata_getitem_n": 4096,
        "hf_sizes": [520_000, 315_000, 210_000],
        "hf_resume": [10**4, 3 * 10**4],
        "hf_iter_n": 20_000,
        "wrs_sizes": [10**6, 10**7],
        "legacy": {"n": 10**6, "groups": 10**4, "step_size": 4096, "epochs": 10, "resume_epoch": 4},
    }


# ---------------------------------------------------------------------------------------------- construct
def schedule_kwargs(kind: str, total: int) -> tuple[Any, dict[str, Any]]:
    """The temperature and step arguments of one schedule kind, over one pass of ``total`` positions."""
    from lightning_balance import Cooldown

    if kind == "T=5":
        return 5.0, {}
    if kind == "Cooldown":
        # A global batch of 1024 samples, the switch half way through one pass over the data.
        return Cooldown(5.0, 1.0, 0.5), {"step_size": 1024, "total_steps": max(1, total // 1024)}
    raise ValueError(kind)


def section_construct(cfg: dict[str, Any]) -> dict[str, Any]:
    from lightning_balance import Mixture

    rows = []
    cases: dict[str, Callable[[], float]] = {}
    setups: dict[str, tuple[Any, Any, dict[str, Any]]] = {}
    for total in cfg["construct_totals"]:
        for k in cfg["construct_groups"]:
            sizes = long_tail_sizes(total, k)
            for kind in ("T=5", "Cooldown"):
                temperature, kwargs = schedule_kwargs(kind, total)
                key = f"{total}|{k}|{kind}"
                setups[key] = (sizes, temperature, kwargs)
                cases[key] = lambda s=sizes, t=temperature, kw=kwargs: timed(lambda: Mixture(s, t, seed=SEED, **kw))
    times = interleaved(cases, cfg["repeats"])
    for key, seconds in times.items():
        total_s, k_s, kind = key.split("|")
        sizes, temperature, kwargs = setups[key]
        build = lambda s=sizes, t=temperature, kw=kwargs: Mixture(s, t, seed=SEED, **kw)  # noqa: E731
        rows.append(
            {
                "total": int(total_s),
                "groups": int(k_s),
                "schedule": kind,
                **_cell(seconds),
                "traced_mb": traced_peak(build),
                "rss_mb": rss_peak_delta(build),
                # What a materialised index of one int32 per example would hold, for scale (not measured).
                "int32_index_gb": int(total_s) * 4 / 1e9,
            }
        )
    return {"rows": rows}


# ---------------------------------------------------------------------------------------------- seek
def seek_mixture(kind: str, k: int, cfg: dict[str, Any]) -> Callable[[], Any]:
    from lightning_balance import Cooldown, LinearRamp, Mixture

    sizes = long_tail_sizes(cfg["seek_total"], k)
    span = 2 * max(cfg["seek_positions"])  # the schedules run over 2 x 10^11 positions: 10^11 is half way
    if kind == "T=5":
        return lambda: Mixture(sizes, 5.0, seed=SEED)
    if kind == "Cooldown":
        return lambda: Mixture(sizes, Cooldown(5.0, 1.0, 0.5), seed=SEED, step_size=1024, total_steps=span // 1024)
    steps = cfg["ramp_steps"]
    return lambda: Mixture(sizes, LinearRamp(5.0, 1.0), seed=SEED, step_size=span // steps, total_steps=steps)


def section_seek(cfg: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for k in cfg["seek_groups"]:
        for kind in ("T=5", "Cooldown", "LinearRamp"):
            make = seek_mixture(kind, k, cfg)
            probe = make()
            for position in cfg["seek_positions"]:
                segment = int(probe._locate(position)[0]) if hasattr(probe, "_locate") else None
                cold: list[float] = []
                warm: list[float] = []
                for _ in range(cfg["repeats"]):
                    mix = make()  # a fresh mixture: what a resumed process starts from
                    seek = lambda m=mix, p=position: (m.counts(p), m.indices(p, p + 1))  # noqa: E731
                    gc.collect()
                    cold.append(timed(seek))
                    warm.append(timed(seek))
                rows.append(
                    {
                        "groups": k,
                        "schedule": kind,
                        "position": position,
                        "segments_before": segment,
                        "cold_median_s": median(cold),
                        "cold_s": cold,
                        "warm_median_s": median(warm),
                        "warm_s": warm,
                        "segments": len(probe.segments),
                    }
                )
    return {"rows": rows, "sweep": section_seek_sweep(cfg)}


def section_seek_sweep(cfg: dict[str, Any]) -> dict[str, Any]:
    """Read the first ``segments`` steps of a ramp in one ``indices`` call, for two ramp lengths.

    The read covers the same positions and the same number of segments (one per step) either way, so it should
    cost the same; the mixture keeps a segment's starting state only every ``stride`` segments (its state
    budget), and the measured difference is the cost of the stride.
    """
    from lightning_balance import LinearRamp, Mixture
    from lightning_balance import mixture as mixture_module

    sweep = cfg["sweep"]
    sizes = long_tail_sizes(10**12, sweep["groups"])
    length = sweep["segments"] * sweep["step_size"]
    cases = {}
    strides = {}
    for steps in sweep["steps"]:
        make = lambda st=steps: Mixture(  # noqa: E731
            sizes, LinearRamp(5.0, 1.0), seed=SEED, step_size=sweep["step_size"], total_steps=st
        )
        strides[steps] = make()._state_stride

        def case(mk: Callable[[], Any] = make) -> float:
            mix = mk()
            return timed(lambda: mix.indices(0, length))

        cases[str(steps)] = case
    times = interleaved(cases, cfg["repeats"])
    return {
        "groups": sweep["groups"],
        "step_size": sweep["step_size"],
        "positions": length,
        "segments_read": sweep["segments"],
        "state_budget": mixture_module._STATE_BUDGET,
        "rows": [
            {"total_steps": steps, "stride": strides[steps], **_cell(times[str(steps)])} for steps in sweep["steps"]
        ],
    }


# ---------------------------------------------------------------------------------------------- throughput
def section_throughput(cfg: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch

    from lightning_balance import Mixture
    from lightning_balance.permutation import derive_key, permute

    n = cfg["rate_n"]
    cases: dict[str, Callable[[], float]] = {}
    labels: dict[str, str] = {}
    for k in cfg["rate_groups"]:
        for total in (10**9, 10**12):
            mix = Mixture(long_tail_sizes(total, k), 5.0, seed=SEED)
            mix.indices(0, 16)  # the segment's shares once, outside the timing
            name = f"indices K={k} N={total:.0e}"
            cases[name] = lambda m=mix: timed(lambda: m.indices(0, n))
            labels[name] = f"Mixture.indices, K = {k:g}, {total:.0e} examples"
        name = f"groups K={k}"
        cases[name] = lambda m=mix: timed(lambda: m.groups(0, n))
        labels[name] = f"Mixture.groups (group stage alone), K = {k:g}"
    arange = np.arange(n, dtype=np.uint64)
    key = derive_key(SEED, 1)
    cases["permute n=2^20"] = lambda: timed(lambda: permute(arange, n, key))
    labels["permute n=2^20"] = f"Feistel permute alone, n = {n:,} (one key)"
    wide = 2**40 + 1
    cases["permute n=2^40+1"] = lambda: timed(lambda: permute(arange, wide, key))
    labels["permute n=2^40+1"] = "Feistel permute alone, n = 2^40 + 1 (cycle walking)"
    rng = np.random.default_rng(SEED)
    cases["np.random.permutation"] = lambda: timed(lambda: rng.permutation(n))
    labels["np.random.permutation"] = f"np.random.Generator.permutation({n:,}) (materialised)"
    cases["np.random.permutation (legacy)"] = lambda: timed(lambda: np.random.permutation(n))
    labels["np.random.permutation (legacy)"] = f"np.random.permutation({n:,}) (materialised)"
    generator = torch.Generator().manual_seed(SEED)
    cases["torch.randperm"] = lambda: timed(lambda: torch.randperm(n, generator=generator))
    labels["torch.randperm"] = f"torch.randperm({n:,})"
    for fn in cases.values():  # warm every path once
        fn()
    times = interleaved(cases, cfg["rate_repeats"])
    rows = [
        {"name": name, "label": labels[name], "n": n, **_cell(s), "rate_per_s": n / median(s)}
        for name, s in times.items()
    ]
    return {"n": n, "rows": rows, "breakdown": throughput_breakdown(cfg)}


def throughput_breakdown(cfg: dict[str, Any]) -> dict[str, Any]:
    """Where ``indices`` spends its time at K = 10^4 (cProfile, one call): the tree descent vs the permutation."""
    import cProfile
    import pstats

    from lightning_balance import Mixture

    k = max(cfg["rate_groups"])
    mix = Mixture(long_tail_sizes(10**9, k), 5.0, seed=SEED)
    mix.indices(0, 16)
    profile = cProfile.Profile()
    profile.enable()
    mix.indices(0, cfg["rate_n"])
    profile.disable()
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    parts: dict[str, float] = {}
    for (filename, _, func), (_, _, tottime, cumtime, _) in stats.items():
        if filename.endswith("mixture.py") and func in ("_block_draws", "indices", "_draws"):
            parts[f"mixture.{func} (cumulative)"] = cumtime
        if filename.endswith("permutation.py") and func in ("permute", "_feistel", "_bit_width", "mix64"):
            parts[f"permutation.{func} ({'cumulative' if func == 'permute' else 'own'})"] = (
                cumtime if func == "permute" else tottime
            )
    return {"groups": k, "n": cfg["rate_n"], "seconds": dict(sorted(parts.items()))}


# ---------------------------------------------------------------------------------------------- litdata
def _litdata_block(args: tuple[int, int]) -> Iterator[int]:
    """One ``optimize`` input: the items ``lo .. hi - 1`` (their global index, an int)."""
    lo, hi = args
    yield from range(lo, hi)


def build_litdata(root: Path, sizes: Sequence[int]) -> list[str]:
    from litdata import optimize

    dirs = []
    offset = 0
    for g, n in enumerate(sizes):
        out = root / f"group{g}"
        inputs = [(offset + lo, offset + min(lo + 10_000, n)) for lo in range(0, n, 10_000)]
        with quiet_fds(root / "optimize.log"):
            optimize(
                fn=_litdata_block,
                inputs=inputs,
                output_dir=str(out),
                chunk_bytes="1MB",
                num_workers=1,
                mode="overwrite",
                start_method="fork",
            )
        dirs.append(str(out))
        offset += n
    return dirs


def section_litdata(cfg: dict[str, Any]) -> dict[str, Any]:
    if version("litdata") is None:
        return {"skipped": "litdata is not installed"}
    import numpy as np
    from litdata import CombinedStreamingDataset, StreamingDataLoader, StreamingDataset
    from torch.utils.data import DataLoader, Dataset

    from lightning_balance import Mixture, MixtureSampler

    sizes = cfg["litdata_sizes"]
    total = sum(sizes)
    weights = [s / total for s in sizes]
    notes = []
    root = Path(tempfile.mkdtemp(prefix="mixture-benchmark-litdata-"))
    start = time.perf_counter()
    dirs = build_litdata(root, sizes)
    build_s = time.perf_counter() - start

    def combined() -> Any:
        return CombinedStreamingDataset(
            [StreamingDataset(d) for d in dirs], seed=SEED, weights=weights, iterate_over_all=False
        )

    try:
        CombinedStreamingDataset([StreamingDataset(d) for d in dirs], weights=weights)
    except ValueError as err:
        notes.append(
            "CombinedStreamingDataset(datasets, weights=...) with the default iterate_over_all=True raises"
            f" ValueError ({str(err.args[0]).strip()}); weights need iterate_over_all=False, and the combined"
            " stream then stops as soon as any dataset is exhausted."
        )

    def loader() -> Any:
        return StreamingDataLoader(combined(), batch_size=BATCH, num_workers=0)

    # One long pass: the states at the resume points and the batch that follows each.
    targets = sorted(cfg["litdata_resume"])
    states: dict[int, dict[str, Any]] = {}
    following: dict[int, list[int]] = {}
    main = loader()
    seen = 0
    awaiting: Optional[int] = None
    start = time.perf_counter()
    for batch in main:
        items = batch.tolist()
        if awaiting is not None:
            following[awaiting] = items
            awaiting = None
        seen += len(items)
        if targets and seen >= targets[0]:
            states[seen] = copy.deepcopy(main.state_dict())
            awaiting = seen
            targets.pop(0)
        if not targets and awaiting is None:
            break
    if targets or awaiting is not None:
        raise RuntimeError(f"LitData's combined stream ended after {seen} samples, before every resume point")
    seen_done = seen
    long_pass_s = time.perf_counter() - start
    notes.append(
        "Resume goes through StreamingDataLoader.state_dict()/load_state_dict(); the combined dataset then draws"
        " and discards one rng.choices per sample already seen before its first batch (combined.py,"
        " _CombinedDatasetIterator.__init__). The dataloader refuses a resume with another world size,"
        " num_workers or batch size."
    )

    mixture = Mixture(sizes, 1.0, seed=SEED)  # T = 1: p proportional to the sizes, LitData's weights here
    data = np.arange(total, dtype=np.int64)

    class InMemory(Dataset):  # type: ignore[type-arg]
        def __len__(self) -> int:
            return total

        def __getitem__(self, i: int) -> int:
            return int(data[i])

    streams = [StreamingDataset(d) for d in dirs]
    offsets = np.concatenate([[0], np.cumsum(sizes)])

    class OnChunks(Dataset):  # type: ignore[type-arg]
        """The same LitData chunks read by index (StreamingDataset.__getitem__)."""

        def __len__(self) -> int:
            return total

        def __getitem__(self, i: int) -> int:
            g = int(np.searchsorted(offsets, i, side="right")) - 1
            return int(streams[g][int(i - offsets[g])])

    n_rate = cfg["litdata_rate_n"]

    def litdata_rate() -> float:
        it = iter(loader())
        count = 0
        start = time.perf_counter()
        while count < n_rate:
            count += len(next(it))
        return (time.perf_counter() - start) * n_rate / count

    def ours_loader(dataset: Any, n: int) -> float:
        sampler = MixtureSampler(Mixture(sizes, 1.0, seed=SEED), num_samples=n)
        dl = DataLoader(dataset, batch_size=BATCH, sampler=sampler, num_workers=0)
        start = time.perf_counter()
        count = sum(len(b) for b in dl)
        return (time.perf_counter() - start) * n / count

    def ours_indices() -> float:
        sampler = MixtureSampler(Mixture(sizes, 1.0, seed=SEED), num_samples=n_rate)
        return timed(lambda: list(sampler))

    n_get = cfg["litdata_getitem_n"]
    rate_cases = {
        "LitData StreamingDataLoader(CombinedStreamingDataset)": litdata_rate,
        "MixtureSampler indices (list(sampler))": ours_indices,
        "MixtureSampler + DataLoader, in-memory map-style items": lambda: ours_loader(InMemory(), n_rate),
        "MixtureSampler + DataLoader, the same LitData chunks by index": lambda: ours_loader(OnChunks(), n_get),
    }
    counts = {name: (n_get if "chunks" in name else n_rate) for name in rate_cases}
    rate_times = interleaved(rate_cases, cfg["repeats"])
    rates = [
        {"name": name, "n": counts[name], **_cell(s), "rate_per_s": counts[name] / median(s)}
        for name, s in rate_times.items()
    ]

    def litdata_resume(seen_at: Optional[int]) -> float:
        fresh = loader()
        start = time.perf_counter()
        if seen_at is not None:
            fresh.load_state_dict(copy.deepcopy(states[seen_at]))
        first = next(iter(fresh))
        elapsed = time.perf_counter() - start
        if seen_at is not None and first.tolist() != following[seen_at]:
            raise AssertionError(f"LitData's resumed batch at {seen_at} differs from the uninterrupted run")
        return elapsed

    def ours_resume(position: int) -> float:
        mix = Mixture(sizes, 1.0, seed=SEED)
        sampler = MixtureSampler(mix, num_samples=10**9)
        start = time.perf_counter()
        sampler.set_position(position)
        it = iter(sampler)
        first = [next(it) for _ in range(BATCH)]
        elapsed = time.perf_counter() - start
        if first != mixture.indices(position, position + BATCH).tolist():
            raise AssertionError("MixtureSampler's resumed batch differs from the stream")
        return elapsed

    def ours_seek(position: int) -> float:
        mix = Mixture(sizes, 1.0, seed=SEED)
        return timed(lambda: mix.indices(position, position + BATCH))

    resume_cases: dict[str, Callable[[], float]] = {
        "LitData|0": lambda: litdata_resume(None),
        "ours|0": lambda: ours_resume(0),
    }
    for s in states:
        resume_cases[f"LitData|{s}"] = lambda s=s: litdata_resume(s)
        resume_cases[f"ours|{s}"] = lambda s=s: ours_resume(s)
        resume_cases[f"ours-seek|{s}"] = lambda s=s: ours_seek(s)
    resume_times = interleaved(resume_cases, cfg["repeats"])
    resume = []
    for key, seconds in resume_times.items():
        who, at = key.split("|")
        resume.append({"who": who, "seen": int(at), **_cell(seconds)})
    with contextlib.suppress(OSError):
        import shutil

        shutil.rmtree(root)
    return {
        "sizes": sizes,
        "weights": weights,
        "batch_size": BATCH,
        "build_s": build_s,
        "build": "litdata.optimize, num_workers=1, start_method='fork', chunk_bytes='1MB', one int per item",
        "long_pass": {"samples": seen_done, "seconds": long_pass_s},
        "rates": rates,
        "resume": resume,
        "resume_checked": True,
        "sampler_chunk": _sampler_chunk(),
        "notes": notes,
    }


def _sampler_chunk() -> Optional[int]:
    from lightning_balance import sampler as sampler_module

    return getattr(sampler_module, "_YIELD_CHUNK", None)


def _sampler_first_chunk() -> Optional[int]:
    from lightning_balance import sampler as sampler_module

    return getattr(sampler_module, "_FIRST_CHUNK", None)


# ---------------------------------------------------------------------------------------------- HF datasets
def section_hf(cfg: dict[str, Any]) -> dict[str, Any]:
    if version("datasets") is None:
        return {"skipped": "datasets is not installed"}
    import datasets
    import numpy as np
    from datasets import Dataset, interleave_datasets

    from lightning_balance import Mixture

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    sizes = cfg["hf_sizes"]
    total = sum(sizes)
    probs = [s / total for s in sizes]
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    parts = [Dataset.from_dict({"x": np.arange(offsets[g], offsets[g + 1])}) for g in range(len(sizes))]
    column = np.arange(total, dtype=np.int64)
    notes = []

    def hf_map() -> Any:
        return interleave_datasets(parts, probabilities=probs, seed=SEED, stopping_strategy="first_exhausted")

    mixed = hf_map()
    length = len(mixed)
    indices_mb = mixed._indices.nbytes / 2**20 if getattr(mixed, "_indices", None) is not None else None

    build_cases = {
        "HF interleave_datasets (map-style: the whole index)": lambda: timed(hf_map),
        "Mixture.indices (same length)": lambda: timed(lambda: Mixture(sizes, 1.0, seed=SEED).indices(0, length)),
    }
    build_times = interleaved(build_cases, cfg["repeats"])

    n_iter = min(length, 1 << 18)

    def hf_iter_map() -> float:
        start = time.perf_counter()
        count = 0
        for batch in mixed.iter(batch_size=BATCH):
            count += len(batch["x"])
            if count >= n_iter:
                break
        return (time.perf_counter() - start) * n_iter / count

    def ours_iter() -> float:
        mix = Mixture(sizes, 1.0, seed=SEED)
        start = time.perf_counter()
        count = 0
        for lo in range(0, n_iter, BATCH):
            batch = {"x": column[mix.indices(lo, min(lo + BATCH, n_iter)).numpy()].tolist()}
            count += len(batch["x"])
        return time.perf_counter() - start

    def iterable() -> Any:
        return interleave_datasets(
            [p.to_iterable_dataset() for p in parts],
            probabilities=probs,
            seed=SEED,
            stopping_strategy="first_exhausted",
        )

    n_stream = cfg["hf_iter_n"]

    def hf_iter_stream() -> float:
        stream = iterable()
        start = time.perf_counter()
        count = 0
        for _ in stream:
            count += 1
            if count >= n_stream:
                break
        return (time.perf_counter() - start) * n_stream / count

    iter_cases = {
        "HF map-style .iter(batch_size=256)": hf_iter_map,
        "Mixture.indices + column lookup, batches of 256": ours_iter,
        "HF iterable interleave, examples": hf_iter_stream,
    }
    iter_times = interleaved(iter_cases, cfg["repeats"])
    iter_n = {name: (n_stream if "iterable" in name else n_iter) for name in iter_cases}

    # Resume of the iterable interleave: its state_dict at each point, checked against the uninterrupted run.
    points = sorted(cfg["hf_resume"])
    stream = iterable()
    states: dict[int, Any] = {}
    following: dict[int, int] = {}
    for i, example in enumerate(stream):
        if i in states:
            following[i] = int(example["x"])
        if i + 1 in points:
            states[i + 1] = copy.deepcopy(stream.state_dict())
        if i >= points[-1] + 1:
            break

    def hf_resume(at: int) -> float:
        fresh = iterable()
        start = time.perf_counter()
        fresh.load_state_dict(copy.deepcopy(states[at]))
        first = int(next(iter(fresh))["x"])
        elapsed = time.perf_counter() - start
        if first != following[at]:
            raise AssertionError(f"datasets' resumed example at {at} differs from the uninterrupted run")
        return elapsed

    def ours_resume(at: int) -> float:
        mix = Mixture(sizes, 1.0, seed=SEED)
        return timed(lambda: mix.indices(at, at + 1))

    resume_cases: dict[str, Callable[[], float]] = {}
    for at in points:
        resume_cases[f"HF|{at}"] = lambda at=at: hf_resume(at)
        resume_cases[f"ours|{at}"] = lambda at=at: ours_resume(at)
    resume_times = interleaved(resume_cases, cfg["repeats"])
    notes.append(
        "Map-style interleave_datasets builds the whole interleaved index up front (.select over the concatenated"
        f" datasets: {length:,} rows, {indices_mb or 0:.1f} MB of indices here); any row is then reachable by"
        " position, but a new seed or new probabilities rebuild it, and the index grows with the run."
    )
    notes.append(
        "The iterable interleave has no position to seek to: it resumes only from a state_dict saved by the same"
        " pipeline (the generator's state at the last block of 1000 draws plus every source's shard offset), which"
        " it restores without replaying the stream; the resumed example matched the uninterrupted run at every"
        " point measured. With a shuffle buffer the resume is not exact (datasets #7901)."
    )
    return {
        "sizes": sizes,
        "probabilities": probs,
        "length": length,
        "indices_mb": indices_mb,
        "build": [
            {"name": name, "n": length, **_cell(s), "rate_per_s": length / median(s)} for name, s in build_times.items()
        ],
        "iterate": [
            {"name": name, "n": iter_n[name], **_cell(s), "rate_per_s": iter_n[name] / median(s)}
            for name, s in iter_times.items()
        ],
        "resume": [
            {"who": key.split("|")[0], "seen": int(key.split("|")[1]), **_cell(s)} for key, s in resume_times.items()
        ],
        "notes": notes,
    }


# ---------------------------------------------------------------------------------------------- WRS
def section_wrs(cfg: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    import torch
    from torch.utils.data import WeightedRandomSampler

    from lightning_balance import TemperatureSampler, temperature_probs

    sys.path.insert(0, str(HERE))
    import legacy_temperature_sampler as legacy

    rows = []
    k = 100
    for n in cfg["wrs_sizes"]:
        groups = np.repeat(np.arange(k, dtype=np.int16), long_tail_sizes(n, k))
        np.random.default_rng(SEED).shuffle(groups)

        def wrs_build(g: Any = groups, n: int = n) -> Any:
            counts = np.bincount(g, minlength=k)
            per_group = temperature_probs(torch.from_numpy(counts), 5.0).numpy() / counts
            return WeightedRandomSampler(
                per_group[g], num_samples=n, replacement=True, generator=torch.Generator().manual_seed(SEED)
            )

        def ours_build(g: Any = groups) -> Any:
            return TemperatureSampler(g, 5.0, seed=SEED)

        def legacy_build(g: Any = groups) -> Any:
            return legacy.TemperatureSampler(g, 5.0, seed=SEED)

        wrs, ours, old = wrs_build(), ours_build(), legacy_build()

        def wrs_plan(s: Any = wrs) -> Any:
            return torch.multinomial(s.weights, s.num_samples, s.replacement, generator=s.generator)

        cases = {
            "WRS construct": lambda f=wrs_build: timed(f),
            "ours construct": lambda f=ours_build: timed(f),
            "WRS plan": lambda f=wrs_plan: timed(f),
            "ours plan": lambda s=ours: timed(lambda: s.epoch_plan(0)),
            "legacy construct": lambda f=legacy_build: timed(f),
            "legacy plan": lambda s=old: timed(lambda: s.epoch_plan(0)),
        }
        times = interleaved(cases, cfg["repeats"])
        rows.append(
            {
                "n": n,
                **{name: _cell(s) for name, s in times.items()},
                "wrs_weights_mb": wrs.weights.numel() * wrs.weights.element_size() / 2**20,
                "ours_index_mb": ours.index.order.numel() * ours.index.order.element_size() / 2**20,
            }
        )
    try:
        torch.multinomial(torch.ones(2**24 + 1, dtype=torch.float64), 1, True)
        limit = "torch.multinomial accepted 2^24 + 1 categories"
    except RuntimeError as err:
        limit = f"{type(err).__name__}: {err}"
    return {"groups": k, "temperature": 5.0, "rows": rows, "beyond_2_24": limit}


# ---------------------------------------------------------------------------------------------- legacy
def section_legacy(cfg: dict[str, Any]) -> dict[str, Any]:
    import numpy as np

    sys.path.insert(0, str(HERE))
    import legacy_temperature_sampler as legacy

    from lightning_balance import LinearRamp, TemperatureSampler

    p = cfg["legacy"]
    n, k = p["n"], p["groups"]
    groups = np.repeat(np.arange(k, dtype=np.int16), long_tail_sizes(n, k))
    np.random.default_rng(SEED).shuffle(groups)
    kwargs = {"seed": SEED, "step_size": p["step_size"], "total_samples": p["epochs"] * n}
    consumed = 1000
    resume_at = p["resume_epoch"] * n + consumed

    def old() -> Any:
        return legacy.TemperatureSampler(groups, LinearRamp(5.0, 1.0), **kwargs)

    def new() -> Any:
        return TemperatureSampler(groups, LinearRamp(5.0, 1.0), **kwargs)

    def old_resume() -> float:
        sampler = old()
        start = time.perf_counter()
        sampler.load_state_dict(
            {"epoch": p["resume_epoch"], "consumed": consumed, "seed": SEED, "num_samples": n, "num_examples": n}
        )
        next(iter(sampler))
        return time.perf_counter() - start

    def new_resume() -> float:
        sampler = new()
        start = time.perf_counter()
        sampler.set_position(resume_at)
        next(iter(sampler))
        return time.perf_counter() - start

    def plan(make: Callable[[], Any]) -> float:
        sampler = make()
        return timed(lambda: sampler.epoch_plan(0))

    cases = {
        "legacy plan": lambda: plan(old),
        "ours plan": lambda: plan(new),
        "legacy resume": old_resume,
        "ours resume": new_resume,
    }
    times = interleaved(cases, cfg["repeats"])
    segments = len(new().mixture.segments)
    return {
        **p,
        "total_samples": p["epochs"] * n,
        "total_steps": math.ceil(p["epochs"] * n / p["step_size"]),
        "mixture_segments": segments,
        "resume_position": resume_at,
        **{name: _cell(s) for name, s in times.items()},
    }


# ---------------------------------------------------------------------------------------------- driver
RUNNERS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "construct": section_construct,
    "seek": section_seek,
    "throughput": section_throughput,
    "litdata": section_litdata,
    "hf": section_hf,
    "wrs": section_wrs,
    "legacy": section_legacy,
}


def run(sections: Sequence[str], quick: bool, command: str) -> dict[str, Any]:
    import torch

    torch.set_num_threads(1)
    import lightning_balance  # noqa: F401

    for section, module in (("litdata", "litdata"), ("hf", "datasets")):
        if section in sections and version(module) is not None:
            importlib.import_module(module)
    # Everything imported so far stays out of the collector's scans: a full collection between two timings
    # then costs milliseconds instead of a scan of torch's, lightning's and the engines' objects.
    gc.collect()
    gc.freeze()
    cfg = config(quick)
    data: dict[str, Any] = {
        "benchmark": "stateless mixture",
        "command": command,
        "quick": quick,
        "config": {k: v for k, v in cfg.items()},
        "machine": machine_info(),
        "load_average_before": load_average(),
        "sections": {},
    }
    start_all = time.perf_counter()
    for name in sections:
        load_before = load_average()
        start = time.perf_counter()
        print(f"[{name}] ...", flush=True)
        result = RUNNERS[name](cfg)
        result["wall_s"] = time.perf_counter() - start
        result["load_average"] = {"before": load_before, "after": load_average()}
        data["sections"][name] = result
        print(f"[{name}] {result['wall_s']:.1f} s, load {load_before} -> {load_average()}", flush=True)
    data["load_average_after"] = load_average()
    data["total_wall_s"] = time.perf_counter() - start_all
    return data


# ---------------------------------------------------------------------------------------------- report
def fmt_s(seconds: Optional[float]) -> str:
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def fmt_ratio(ratio: Optional[float]) -> str:
    if ratio is None or not math.isfinite(ratio):
        return "-"
    if ratio >= 100:
        return f"{ratio:,.0f}x"
    return f"{ratio:.1f}x" if ratio >= 1 else f"{ratio:.2f}x"


def fmt_rate(rate: float) -> str:
    return f"{rate / 1e6:.2f} M/s" if rate >= 1e5 else f"{rate / 1e3:.1f} k/s"


def goal_ratio(seconds: float, goal: float) -> str:
    """How far under (goal / time) or over (time / goal) a time limit a measurement is."""
    if seconds < goal:
        return f"{fmt_ratio(goal / seconds)} under"
    return f"{fmt_ratio(seconds / goal)} over"


def power(n: int) -> str:
    e = math.log10(n)
    return f"10^{e:.0f}" if e.is_integer() else f"{n:,}"


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def render_markdown(data: dict[str, Any]) -> str:
    m = data["machine"]
    sec = data["sections"]
    out = [
        "# Mixture benchmark: scale, seek, throughput and resume",
        "",
        f"Generated by `{data['command']}` on {m['date']} (commit {m['git_commit']}"
        + (
            f", with uncommitted changes to {', '.join(m['uncommitted_sources'])}"
            if m.get("uncommitted_sources")
            else ""
        )
        + ")"
        + (" — a `--quick` smoke run, not the recorded sizes." if data.get("quick") else "."),
        "Every time is the median of the repeats listed in `mixture.json` (at least 3), the alternatives of a"
        " table measured side by side in one process with their order rotating between repeats; torch and"
        " numpy run one thread. Ratios are *other / ours* (above 1: ours is faster) unless a column says"
        " otherwise.",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable); RAM {m['ram_gib']} GiB",
        f"- {m['platform']}; Python {m['python']}, torch {m['torch']}, numpy {m['numpy']}, litdata"
        f" {m['litdata']}, datasets {m['datasets']}, lightning-balance {m['lightning_balance']}",
        f"- Load average (1/5/15 min) before the run: {data['load_average_before']}, after:"
        f" {data['load_average_after']}; per section below. The machine is shared: absolute times carry the"
        " other work, ratios taken side by side much less.",
        f"- Total wall time: {data['total_wall_s']:.0f} s",
        "",
    ]
    goals: list[str] = []
    body: list[str] = []
    if "construct" in sec:
        body += render_construct(sec["construct"], goals)
    if "seek" in sec:
        body += render_seek(sec["seek"], goals)
    if "throughput" in sec:
        body += render_throughput(sec["throughput"], goals)
    if "litdata" in sec:
        body += render_litdata(sec["litdata"], goals)
    if "hf" in sec:
        body += render_hf(sec["hf"])
    if "wrs" in sec:
        body += render_wrs(sec["wrs"])
    if "legacy" in sec:
        body += render_legacy(sec["legacy"])
    out += ["## Goals", "", *goals, "", *body]
    return "\n".join(out)


def _load_line(section: dict[str, Any]) -> str:
    load = section.get("load_average", {})
    return (
        f"Load average {load.get('before', '?')} → {load.get('after', '?')};"
        f" section wall time {section.get('wall_s', 0):.0f} s."
    )


def render_construct(s: dict[str, Any], goals: list[str]) -> list[str]:
    out = [
        "## Construction",
        "",
        "`Mixture(sizes, T)` with virtual long-tailed sizes (n_i ∝ (1/100)^(i/(K-1)), summing to N). *traced* is"
        " the tracemalloc peak (Python objects and numpy buffers), *RSS* the kernel's peak resident-set increase"
        " during the call (page granularity; 0 when the call fits in memory the process already holds)."
        " Cooldown(5, 1, 0.5) runs over one pass of N positions with 1024 samples per step. The last column is"
        " what one int32 per example, the least a materialised index holds, would take (computed).",
        "",
        "| N | K | schedule | time | vs 1 s goal | traced | RSS | int32 index |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in s["rows"]:
        out.append(
            f"| {power(r['total'])} | {r['groups']:,} | {r['schedule']} | {fmt_s(r['median_s'])} |"
            f" {goal_ratio(r['median_s'], GOAL_CONSTRUCT_S)} | {r['traced_mb']:.2f} MB |"
            f" {'-' if r['rss_mb'] is None else format(r['rss_mb'], '.1f') + ' MB'}"
            f" | {r['int32_index_gb']:,.0f} GB |"
        )
    out += ["", _load_line(s), ""]
    big = [
        r
        for r in s["rows"]
        if r["total"] == max(x["total"] for x in s["rows"]) and r["groups"] == max(x["groups"] for x in s["rows"])
    ]
    for r in big:
        mem = max(r["traced_mb"], r["rss_mb"] or 0.0)
        ok = r["median_s"] < GOAL_CONSTRUCT_S and mem < GOAL_CONSTRUCT_MB
        goals.append(
            f"- Construction at {power(r['total'])} examples x {r['groups']:,} groups ({r['schedule']}) under 1 s"
            f" and 100 MB: {fmt_s(r['median_s'])}, {mem:.1f} MB: {verdict(ok)}."
        )
    return out


def render_seek(s: dict[str, Any], goals: list[str]) -> list[str]:
    out = [
        "## Seek",
        "",
        "`counts(p)` + `indices(p, p + 1)`. *cold*: on a freshly built mixture, what a resumed process does first;"
        " *warm*: the same call again on that mixture. N = 10^12 examples. Cooldown and LinearRamp run over"
        " 2 x 10^11 positions (Cooldown: 1024 samples per step, the switch at 10^11; LinearRamp(5, 1): one"
        " segment per optimizer step, so *segments before* is the number of earlier segments whose state a cold"
        " seek computes). The last column is cold time / the time at position 0.",
        "",
        "| K | schedule | position | segments before | cold | warm | vs 10 ms goal (cold) | cold vs position 0 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    zero = {(r["groups"], r["schedule"]): r["cold_median_s"] for r in s["rows"] if r["position"] == 0}
    for r in s["rows"]:
        rel = r["cold_median_s"] / zero[(r["groups"], r["schedule"])]
        out.append(
            f"| {r['groups']:,} | {r['schedule']} | {power(r['position']) if r['position'] else '0'} |"
            f" {r['segments_before']:,} | {fmt_s(r['cold_median_s'])} | {fmt_s(r['warm_median_s'])} |"
            f" {goal_ratio(r['cold_median_s'], GOAL_SEEK_S)}"
            f" | {fmt_ratio(rel)} |"
        )
    ramp = [r for r in s["rows"] if r["schedule"] == "LinearRamp" and r["segments_before"]]
    if ramp:
        per = {r["groups"]: r["cold_median_s"] / r["segments_before"] for r in ramp if r["segments_before"] > 100}
        if per:
            out += [
                "",
                "A cold seek into the LinearRamp walks every earlier segment once: "
                + ", ".join(f"{fmt_s(v)} per segment at K = {k:,}" for k, v in per.items())
                + ". A ramp over 10^5 steps, sought near its end, would take about"
                + ", ".join(f" {fmt_s(v * 1e5)} at K = {k:,}" for k, v in per.items())
                + ". After that first walk the mixture keeps segment states and a warm seek is fast again.",
            ]
    sw = s["sweep"]
    out += [
        "",
        f"**Sequential read across segments.** `indices(0, {sw['positions']:,})` on a fresh LinearRamp mixture"
        f" with K = {sw['groups']:,}, {sw['step_size']} samples per step: {sw['segments_read']} segments either"
        " way, only the ramp's length (total_steps) differs, and with it the *stride*, how many segments apart"
        f" the mixture keeps a starting state (`ceil(segments x K / {sw['state_budget']:,})`).",
        "",
        "| total_steps | stride | time | per segment | vs stride 1 |",
        "|---|---|---|---|---|",
    ]
    base = sw["rows"][0]["median_s"]
    for r in sw["rows"]:
        out.append(
            f"| {r['total_steps']:,} | {r['stride']} | {fmt_s(r['median_s'])} |"
            f" {fmt_s(r['median_s'] / sw['segments_read'])} | {fmt_ratio(r['median_s'] / base)} slower |"
        )
    out += ["", _load_line(s), ""]
    for k in sorted({r["groups"] for r in s["rows"]}):
        for kind in ("T=5", "Cooldown"):
            rows = [r for r in s["rows"] if r["groups"] == k and r["schedule"] == kind]
            worst = max(r["cold_median_s"] for r in rows)
            goals.append(
                f"- Seek under 10 ms at positions 0 to 10^11, K = {k:,}, {kind}: worst cold"
                f" {fmt_s(worst)}: {verdict(worst < GOAL_SEEK_S)}."
            )
        rows = [r for r in s["rows"] if r["groups"] == k and r["schedule"] == "LinearRamp"]
        worst = max(rows, key=lambda r: r["cold_median_s"])
        goals.append(
            f"- Seek under 10 ms, K = {k:,}, LinearRamp over {rows[0]['segments']:,} segments: cold at"
            f" {power(worst['position'])} {fmt_s(worst['cold_median_s'])} ({worst['segments_before']:,} earlier"
            f" segments walked), warm {fmt_s(worst['warm_median_s'])}: {verdict(worst['cold_median_s'] < GOAL_SEEK_S)}"
            f" for the first seek, {verdict(worst['warm_median_s'] < GOAL_SEEK_S)} once the states are known."
        )
    return out


def render_throughput(s: dict[str, Any], goals: list[str]) -> list[str]:
    rows = s["rows"]
    ref = next(r for r in rows if r["name"] == "np.random.permutation")
    out = [
        "## Index throughput (one core)",
        "",
        f"{s['n']:,} indices per call. Ratio: this rate / the rate of `np.random.Generator.permutation` of the"
        " same size (materialised, compiled).",
        "",
        "| generator | time | rate | vs np permutation |",
        "|---|---|---|---|",
    ]
    for r in rows:
        out.append(
            f"| {r['label']} | {fmt_s(r['median_s'])} | {fmt_rate(r['rate_per_s'])} |"
            f" {fmt_ratio(r['rate_per_s'] / ref['rate_per_s'])} |"
        )
    b = s["breakdown"]
    out += [
        "",
        f"Where `Mixture.indices` spends its time (cProfile of one call, K = {b['groups']:,}, {b['n']:,} positions;"
        " profiling inflates the totals): "
        + ", ".join(f"{name} {fmt_s(v)}" for name, v in b["seconds"].items())
        + ". `_block_draws` is the group stage (the tree descent, one gather-and-compare pass per tree level over"
        " the positions still descending); `permute` is the Feistel stage with one key and size per position.",
        "",
        _load_line(s),
        "",
    ]
    for r in rows:
        if r["name"].startswith("indices"):
            goals.append(
                f"- At least 5 M indices/s per core, {r['label']}: {fmt_rate(r['rate_per_s'])}"
                f" ({r['rate_per_s'] / GOAL_RATE:.2f}x the goal): {verdict(r['rate_per_s'] >= GOAL_RATE)}."
            )
    return out


def render_litdata(s: dict[str, Any], goals: list[str]) -> list[str]:
    if "skipped" in s:
        goals.append(f"- Resume at least 1000x faster than LitData at 10^6: not measured ({s['skipped']}).")
        return ["## LitData", "", f"Not measured: {s['skipped']}.", ""]
    lit = next(r for r in s["rates"] if r["name"].startswith("LitData"))
    out = [
        "## LitData CombinedStreamingDataset",
        "",
        f"{len(s['sizes'])} local datasets of {', '.join(f'{n:,}' for n in s['sizes'])} items (one int each) written"
        f" by `litdata.optimize` ({s['build']}; {s['build_s']:.0f} s to write), combined with `weights` ="
        f" the size shares ({', '.join(f'{w:.3f}' for w in s['weights'])}), read with"
        f" `StreamingDataLoader(batch_size={s['batch_size']}, num_workers=0)`. Ours: `Mixture(sizes, T=1)`"
        " (the same shares) through `MixtureSampler`.",
        "",
        "**Samples per second** (ratio: this rate / LitData's):",
        "",
        "| reader | samples | time | rate | vs LitData |",
        "|---|---|---|---|---|",
    ]
    for r in s["rates"]:
        out.append(
            f"| {r['name']} | {r['n']:,} | {fmt_s(r['median_s'])} | {fmt_rate(r['rate_per_s'])} |"
            f" {fmt_ratio(r['rate_per_s'] / lit['rate_per_s'])} |"
        )
    out += [
        "",
        "**Resume**: from a saved state to the first batch of 256. LitData: `load_state_dict` on a fresh"
        " `StreamingDataLoader` + `next(iter(loader))`; ours: `set_position` on a fresh `MixtureSampler` + 256"
        " indices from its iterator; *seek only*: `Mixture.indices(p, p + 256)` on a fresh mixture. Both"
        " resumed batches were checked equal to the uninterrupted run's. Row 0 is a fresh start, for the first"
        " batch's cost without a resume.",
        "",
        "| samples seen | LitData | ours (set_position + first batch) | LitData / ours | ours, seek only |"
        " LitData / seek only |",
        "|---|---|---|---|---|---|",
    ]
    by = {(r["who"], r["seen"]): r["median_s"] for r in s["resume"]}
    for seen in sorted({r["seen"] for r in s["resume"]}):
        lit_s, ours_s, seek_s = by.get(("LitData", seen)), by.get(("ours", seen)), by.get(("ours-seek", seen))
        out.append(
            f"| {seen:,} | {fmt_s(lit_s)} | {fmt_s(ours_s)} | {fmt_ratio(lit_s / ours_s if lit_s and ours_s else None)}"
            f" | {fmt_s(seek_s)} | {fmt_ratio(lit_s / seek_s if lit_s and seek_s else None)} |"
        )
    replay = [
        (seen, by[("LitData", seen)] - by[("LitData", 0)])
        for seen in sorted({r["seen"] for r in s["resume"]})
        if seen and ("LitData", seen) in by and ("LitData", 0) in by
    ]
    if replay:
        seen, extra = replay[-1]
        out += [
            "",
            f"LitData's replay: {extra:.2f} s more than a fresh start at {seen:,} samples seen, about"
            f" {seen / max(extra, 1e-9) / 1e6:.2f} M replayed draws/s; it grows linearly with the samples seen.",
        ]
    chunk = s.get("sampler_chunk")
    if chunk:
        out += [
            "",
            f"`MixtureSampler.__iter__` computes its positions in chunks that start at"
            f" {_sampler_first_chunk() or chunk:,} per process and double up to {chunk:,}, so the"
            " first batch costs about one seek; the seek-only column is `Mixture.indices` alone.",
        ]
    out += ["", *[f"- {n}" for n in s["notes"]], "", _load_line(s), ""]
    top = max(r["seen"] for r in s["resume"])
    lit_s, ours_s = by.get(("LitData", top)), by.get(("ours", top))
    if lit_s and ours_s:
        ratio = lit_s / ours_s
        seek = by.get(("ours-seek", top))
        goals.append(
            f"- Resume at least 1000x faster than LitData at {top:,} samples seen: LitData {fmt_s(lit_s)}, ours"
            f" {fmt_s(ours_s)} (set_position + first batch), {fmt_ratio(ratio)}: {verdict(ratio >= GOAL_RESUME_RATIO)}"
            + (f"; the seek alone ({fmt_s(seek)}) is {fmt_ratio(lit_s / seek)}." if seek else ".")
        )
    return out


def render_hf(s: dict[str, Any]) -> list[str]:
    if "skipped" in s:
        return ["## Hugging Face datasets", "", f"Not measured: {s['skipped']}.", ""]
    out = [
        "## Hugging Face `datasets.interleave_datasets`",
        "",
        f"{len(s['sizes'])} in-memory datasets of {', '.join(f'{n:,}' for n in s['sizes'])} rows (one int column),"
        f" `probabilities` = the size shares, `stopping_strategy='first_exhausted'` ({s['length']:,} rows). Ours:"
        " `Mixture(sizes, T=1)`. Ratio: ours' rate / theirs (the first row of each table is theirs).",
        "",
        "| step | rows | time | rate | ours / theirs |",
        "|---|---|---|---|---|",
    ]
    for table in ("build", "iterate"):
        rows = s[table]
        theirs = rows[0]["rate_per_s"]
        ours_rate = next(r["rate_per_s"] for r in rows if "Mixture" in r["name"])
        for r in rows:
            ratio = ours_rate / r["rate_per_s"] if "Mixture" not in r["name"] else None
            out.append(
                f"| {r['name']} | {r['n']:,} | {fmt_s(r['median_s'])} | {fmt_rate(r['rate_per_s'])} |"
                f" {fmt_ratio(ratio) if ratio else '-'} |"
            )
        del theirs
    out += [
        "",
        "**Resume** of the iterable interleave from its `state_dict` (a fresh pipeline, `load_state_dict`, the"
        " first example, checked against the uninterrupted run) vs ours (`indices(p, p + 1)` on a fresh mixture):",
        "",
        "| examples seen | datasets | ours | datasets / ours |",
        "|---|---|---|---|",
    ]
    by = {(r["who"], r["seen"]): r["median_s"] for r in s["resume"]}
    for seen in sorted({r["seen"] for r in s["resume"]}):
        hf_s, ours_s = by[("HF", seen)], by[("ours", seen)]
        out.append(f"| {seen:,} | {fmt_s(hf_s)} | {fmt_s(ours_s)} | {fmt_ratio(hf_s / ours_s)} |")
    out += ["", *[f"- {n}" for n in s["notes"]], "", _load_line(s), ""]
    return out


def render_wrs(s: dict[str, Any]) -> list[str]:
    out = [
        "## torch WeightedRandomSampler",
        "",
        f"{s['groups']} long-tailed groups, T = {s['temperature']:g}: `WeightedRandomSampler` with one float64 weight"
        " p_g(T)/n_g per example against `TemperatureSampler` (a `GroupIndex` of the int16 group ids, then the"
        " mixture), and the 0.1 epoch-plan sampler (same input, constant T, no schedule). *plan*: one epoch's N"
        " indices (`torch.multinomial` as WeightedRandomSampler's `__iter__` calls it; `epoch_plan(0)`)."
        " Ratios: their time / ours.",
        "",
        "| N | construct WRS | construct 0.1 | construct ours | WRS / ours | plan WRS | plan 0.1 | plan ours |"
        " WRS / ours | 0.1 / ours | per-example memory WRS / ours |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in s["rows"]:
        cw, co = r["WRS construct"]["median_s"], r["ours construct"]["median_s"]
        pw, po = r["WRS plan"]["median_s"], r["ours plan"]["median_s"]
        cl = r.get("legacy construct", {}).get("median_s")
        pl = r.get("legacy plan", {}).get("median_s")
        out.append(
            f"| {power(r['n'])} | {fmt_s(cw)} | {fmt_s(cl)} | {fmt_s(co)} | {fmt_ratio(cw / co)} | {fmt_s(pw)} |"
            f" {fmt_s(pl)} | {fmt_s(po)} | {fmt_ratio(pw / po)} | {fmt_ratio(pl / po if pl else None)} |"
            f" {r['wrs_weights_mb']:.0f} MB / {r['ours_index_mb']:.0f} MB |"
        )
    out += ["", f"Beyond 2^24 examples: `{s['beyond_2_24']}`.", "", _load_line(s), ""]
    return out


def render_legacy(s: dict[str, Any]) -> list[str]:
    lp, op = s["legacy plan"]["median_s"], s["ours plan"]["median_s"]
    lr, orr = s["legacy resume"]["median_s"], s["ours resume"]["median_s"]
    return [
        "## The 0.1 epoch-plan TemperatureSampler",
        "",
        f"N = {power(s['n'])} examples in {s['groups']:,} long-tailed groups, `LinearRamp(5, 1)` over"
        f" {s['epochs']} epochs ({s['total_samples']:,} samples, {s['step_size']} per step: {s['total_steps']:,}"
        f" steps, {s['mixture_segments']:,} constant-temperature segments in the mixture). *plan*: `epoch_plan(0)`"
        f" on a fresh sampler. *resume*: a fresh sampler told the checkpoint position (epoch {s['resume_epoch']},"
        " 1,000 samples in: `load_state_dict` for the legacy sampler, which redraws the group totals of every"
        " earlier epoch and then plans the whole epoch; `set_position` for ours) up to the first index. Ratio:"
        " legacy / ours.",
        "",
        "| step | legacy | ours | legacy / ours |",
        "|---|---|---|---|",
        f"| plan, one epoch | {fmt_s(lp)} | {fmt_s(op)} | {fmt_ratio(lp / op)} |",
        f"| resume in epoch {s['resume_epoch']} | {fmt_s(lr)} | {fmt_s(orr)} | {fmt_ratio(lr / orr)} |",
        "",
        _load_line(s),
        "",
    ]


def render_plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sec = data["sections"]
    bars_rate: list[tuple[str, float, str]] = []
    if "throughput" in sec:
        for r in sec["throughput"]["rows"]:
            color = "C0" if r["name"].startswith(("indices", "groups", "permute")) else "C7"
            bars_rate.append((r["label"], r["rate_per_s"], color))
    lit = sec.get("litdata", {})
    for r in lit.get("rates", []):
        bars_rate.append((r["name"], r["rate_per_s"], "C3" if r["name"].startswith("LitData") else "C0"))
    hf = sec.get("hf", {})
    for r in hf.get("iterate", []):
        bars_rate.append((r["name"], r["rate_per_s"], "C2" if r["name"].startswith("HF") else "C0"))
    bars_resume: list[tuple[str, float, str]] = []
    for r in lit.get("resume", []):
        if r["seen"]:
            label = {"LitData": "LitData load_state_dict", "ours": "ours set_position", "ours-seek": "ours seek"}
            bars_resume.append(
                (f"{label[r['who']]} + batch @ {r['seen']:,}", r["median_s"], "C3" if r["who"] == "LitData" else "C0")
            )
    for r in hf.get("resume", []):
        bars_resume.append(
            (
                f"{'datasets' if r['who'] == 'HF' else 'ours'} resume @ {r['seen']:,}",
                r["median_s"],
                "C2" if r["who"] == "HF" else "C0",
            )
        )
    if "legacy" in sec:
        s = sec["legacy"]
        bars_resume.append((f"0.1 sampler resume, epoch {s['resume_epoch']}", s["legacy resume"]["median_s"], "C1"))
        bars_resume.append((f"ours resume, epoch {s['resume_epoch']} (LinearRamp)", s["ours resume"]["median_s"], "C0"))
    fig, (ax_r, ax_t) = plt.subplots(1, 2, figsize=(14, 0.32 * max(len(bars_rate), len(bars_resume)) + 2.2))
    for ax, bars, xlabel, title in (
        (ax_r, bars_rate, "items per second, one core (log)", "throughput (median)"),
        (ax_t, bars_resume, "seconds to the first batch after a resume (log)", "resume (median)"),
    ):
        if not bars:
            ax.set_visible(False)
            continue
        labels, values, colors = zip(*bars, strict=True)
        y = range(len(bars))
        ax.barh(list(y), values, color=colors)
        ax.set_yticks(list(y))
        ax.set_yticklabels(labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=10)
        ax.grid(True, axis="x", which="both", alpha=0.3)
        for yi, v in zip(y, values, strict=True):
            ax.text(v, yi, " " + (fmt_rate(v) if ax is ax_r else fmt_s(v)), va="center", fontsize=6.5)
    if bars_rate:
        ax_r.axvline(GOAL_RATE, color="grey", linestyle=":", linewidth=1)
        ax_r.text(GOAL_RATE, -0.9, "5 M/s goal", fontsize=7, color="grey", ha="center")
        low, high = min(v for _, v, _ in bars_rate), max(v for _, v, _ in bars_rate)
        ax_r.set_xlim(low / 2, high * 8)
    if bars_resume:
        low, high = min(v for _, v, _ in bars_resume), max(v for _, v, _ in bars_resume)
        ax_t.set_xlim(low / 2, high * 8)
    from matplotlib.patches import Patch

    legend = [
        Patch(color="C0", label="lightning-balance"),
        Patch(color="C7", label="compiled permutations (materialised)"),
        Patch(color="C3", label="LitData CombinedStreamingDataset"),
        Patch(color="C2", label="HF datasets interleave_datasets"),
        Patch(color="C1", label="0.1 epoch-plan sampler"),
    ]
    fig.legend(handles=legend, loc="lower center", ncol=5, fontsize=8, frameon=False)
    m = data["machine"]
    fig.suptitle(f"{m['cpu']}, {m['usable_cpus']} CPUs, one thread; medians; {m['date']}", fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_outputs(data: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "mixture.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (out / "mixture.md").write_text(render_markdown(data))
    render_plot(data, out / "mixture.png")


# ---------------------------------------------------------------------------------------------- CLI
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (small sizes) to a temporary folder")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--out", type=Path, default=None, help="results folder (default: benchmarks/results)")
    parser.add_argument("--render-only", action="store_true", help="rewrite mixture.md and mixture.png from the JSON")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    # One BLAS/OpenMP thread, set before numpy and torch are first imported (they are imported lazily).
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    args = parse_args(argv)
    out: Path = args.out or (Path(tempfile.mkdtemp(prefix="mixture-benchmark-")) if args.quick else DEFAULT_OUT)
    if args.render_only:
        write_outputs(json.loads((out / "mixture.json").read_text()), out)
        print(f"Rewrote {out / 'mixture.md'} and {out / 'mixture.png'}")
        return
    command = "python benchmarks/mixture_benchmark.py" + ("".join(f" {a}" for a in (argv or sys.argv[1:])))
    data = run(args.sections, args.quick, command)
    write_outputs(data, out)
    print(f"Wrote {out / 'mixture.json'}, {out / 'mixture.md'} and {out / 'mixture.png'}")


if __name__ == "__main__":
    main()
