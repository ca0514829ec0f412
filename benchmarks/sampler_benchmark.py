"""Epoch-plan time and peak memory of ``TemperatureSampler`` against ``WeightedRandomSampler``.

The data set is described only by its group ids: ``N`` examples in 100 groups with a long-tailed profile
:math:`n_i \\propto (1/IF)^{i/99}`, ``IF = 100``, shuffled so every group's examples are scattered over the
index range as in a real data set. The ids are stored as ``int16`` (100 groups fit), the compact input a user
would hand to the sampler.

Both samplers do temperature sampling at ``T = 5``:

* ``TemperatureSampler(groups, 5.0)``;
* ``WeightedRandomSampler`` as a user would set it up for the same distribution: one float64 weight per
  example, :math:`w_j = p_{g(j)}(T) / n_{g(j)}`, ``replacement=True``, ``num_samples=N``.

Measured, each (sampler, N) in a fresh Python process so that neither allocator state nor memory high-water
marks leak between measurements:

* ``construct``: building the sampler from the group ids (for ``WeightedRandomSampler`` this includes the
  group counts and the per-example weights, which a user has to compute);
* ``plan``: materialising one epoch's global index tensor: ``sampler.epoch_plan(0)`` for ours,
  ``torch.multinomial(weights, N, True)`` for ``WeightedRandomSampler`` (exactly the call its ``__iter__``
  makes);
* ``iter``: what a user gets, ``list(iter(sampler))`` for both.

Each (sampler, N) runs in two fresh processes, the samplers alternating, and time is the best of all their
repeats (every repeat is kept in the JSON), in wall time and in CPU time. Memory is the peak resident set
size (RSS) during the step minus the RSS just before it; the absolute peak is recorded too. On Linux the
peak is exact: the kernel's high-water mark is reset before each step (``/proc/self/clear_refs``); elsewhere
a thread polls the RSS every millisecond, which can miss short spikes.

torch runs one intra-op thread unless ``--threads`` says otherwise: ``torch.multinomial`` is single-threaded
anyway, while ``TemperatureSampler`` issues many small parallel kernels that stall whenever another process
holds one of the cores, which would make its figures track the machine's load rather than the sampler.

Run ``python benchmarks/sampler_benchmark.py`` for the full benchmark (about 5 minutes on 2 cores), or
``--quick`` for a smoke run at 10^5 that writes to a temporary folder.
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import gc
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "results"
DEFAULT_SIZES = (10**5, 10**6, 10**7, 10**8)
NUM_GROUPS = 100
IMBALANCE = 100.0
TEMPERATURE = 5.0
SEED = 0
# torch.multinomial refuses more categories than this, so WeightedRandomSampler cannot go beyond it.
MULTINOMIAL_LIMIT = 2**24

OURS = "TemperatureSampler"
WRS = "WeightedRandomSampler"
METHODS = (WRS, OURS)
STEPS = ("construct", "plan", "iter")

TORCHSAMPLER_NOTE = (
    "not measured: torchsampler is not installed here. It requires torchvision, which has no build for the"
    " CPU-only torch 2.13 used here; installing it would replace torch with a multi-GB CUDA build."
    " Its ImbalancedDatasetSampler samples with torch.multinomial over one weight per example, like"
    " WeightedRandomSampler, so it shares the 2^24 limit (torchsampler #58)."
)


# ---------------------------------------------------------------------------------------------- memory
def _proc_kib(path: str, field: str) -> Optional[int]:
    """A ``kB`` field of a Linux ``/proc`` file, or ``None`` where there is no such file or field."""
    try:
        with open(path) as proc_file:
            for line in proc_file:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _proc_status_kib(field: str) -> Optional[int]:
    return _proc_kib("/proc/self/status", field)


def _current_rss() -> int:
    """Resident set size of this process, in bytes."""
    kib = _proc_status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil  # only needed off Linux

    return int(psutil.Process().memory_info().rss)


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS; ``False`` where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # "5" resets VmHWM (Linux >= 4.0), it does not touch the page tables
        return _proc_status_kib("VmHWM") is not None
    except OSError:
        return False


class PeakRSS:
    """Context manager recording the RSS just before a block (``baseline``) and the peak RSS during it.

    ``getrusage().ru_maxrss`` alone is a process-lifetime high-water mark, so it would report the largest
    earlier step; resetting the kernel's mark (or polling, as a fallback) isolates each step.
    """

    def __init__(self, poll_seconds: float = 0.001) -> None:
        self.poll_seconds = poll_seconds
        self.baseline = 0
        self.peak = 0
        self.exact = False
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._polled = 0

    def __enter__(self) -> PeakRSS:
        gc.collect()  # free the previous step's garbage now rather than inside this one
        self.baseline = _current_rss()
        self.exact = _reset_peak_rss()
        if not self.exact:
            self._polled = self.baseline
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self._polled = max(self._polled, _current_rss())

    def __exit__(self, *exc: object) -> None:
        if self.exact:
            self.peak = (_proc_status_kib("VmHWM") or 0) * 1024
        else:
            self._stop.set()
            assert self._thread is not None
            self._thread.join()
            self.peak = max(self._polled, _current_rss())

    @property
    def delta(self) -> int:
        # The kernel updates its RSS counters in batches, so a step that allocates nothing can read a few
        # pages below its baseline; that is "no increase".
        return max(0, self.peak - self.baseline)


# ---------------------------------------------------------------------------------------------- data
def long_tail_sizes(n: int, num_groups: int = NUM_GROUPS, imbalance: float = IMBALANCE) -> list[int]:
    """Group sizes :math:`n_i \\propto (1/IF)^{i/(G-1)}` summing exactly to ``n`` (largest-remainder rounding)."""
    import numpy as np

    exact = (1.0 / imbalance) ** (np.arange(num_groups) / (num_groups - 1))
    exact = exact / exact.sum() * n
    sizes = np.floor(exact).astype(np.int64)
    short = n - int(sizes.sum())
    sizes[np.argsort(sizes - exact)[:short]] += 1  # the largest fractional parts get the missing examples
    if sizes.min() < 1:
        raise ValueError(f"N={n} is too small for {num_groups} groups with imbalance {imbalance}: a group is empty.")
    return [int(s) for s in sizes]


def make_groups(n: int, seed: int = SEED) -> Any:
    """``int16`` group ids of ``n`` examples, shuffled so each group's indices are scattered."""
    import numpy as np

    groups = np.repeat(np.arange(NUM_GROUPS, dtype=np.int16), long_tail_sizes(n))
    np.random.default_rng(seed).shuffle(groups)
    return groups


# ---------------------------------------------------------------------------------------------- worker
def _timed_steps(method: str, groups: Any, n: int, seed: int) -> tuple[Callable[[], Any], dict[str, Any]]:
    """Return ``construct`` (a callable building the sampler) and the plan/iter step factories."""
    import numpy as np
    import torch
    from torch.utils.data import WeightedRandomSampler

    from lightning_balance import TemperatureSampler, temperature_probs

    if method == OURS:

        def construct() -> Any:
            return TemperatureSampler(groups, TEMPERATURE, seed=seed)

        def plan(sampler: Any) -> Any:
            return sampler.epoch_plan(0)

    elif method == WRS:

        def construct() -> Any:
            # What a user writes for temperature sampling with WeightedRandomSampler: one float64 weight per
            # example, p_g(T) / n_g, so that group g is drawn with probability p_g(T).
            counts = np.bincount(groups, minlength=NUM_GROUPS)
            per_group = temperature_probs(torch.from_numpy(counts), TEMPERATURE).numpy() / counts
            weights = per_group[groups]
            generator = torch.Generator().manual_seed(seed)
            return WeightedRandomSampler(weights, num_samples=n, replacement=True, generator=generator)

        def plan(sampler: Any) -> Any:
            # The exact call WeightedRandomSampler.__iter__ makes before converting to Python ints.
            return torch.multinomial(
                sampler.weights, sampler.num_samples, sampler.replacement, generator=sampler.generator
            )

    else:
        raise ValueError(f"Unknown method {method!r}; expected one of {METHODS}.")

    def iterate(sampler: Any) -> Any:
        return list(iter(sampler))

    return construct, {"plan": plan, "iter": iterate}


def _measure(fn: Callable[[], Any], repeats: int, keep: bool = False) -> tuple[dict[str, Any], Any]:
    """Run ``fn`` ``repeats`` times and return its timings and memory, and (if ``keep``) the last result.

    Results are dropped as soon as a run is timed, so they count neither in the next run's baseline nor
    in the next step's.
    """
    seconds: list[float] = []
    cpu_seconds: list[float] = []
    deltas: list[int] = []
    peaks: list[int] = []
    baselines: list[int] = []
    exact = True
    result: Any = None
    for _ in range(repeats):
        result = None
        try:
            with PeakRSS() as mem:
                start, cpu_start = time.perf_counter(), time.process_time()
                result = fn()
                seconds.append(time.perf_counter() - start)
                cpu_seconds.append(time.process_time() - cpu_start)
        except RuntimeError as error:  # torch.multinomial beyond 2^24 categories, for one
            return {"error": f"{type(error).__name__}: {error}"}, None
        if not keep:
            result = None
        deltas.append(mem.delta)
        peaks.append(mem.peak)
        baselines.append(mem.baseline)
        exact = exact and mem.exact
    worst = deltas.index(max(deltas))  # usually the first (cold) run
    # CPU time (all this process's threads) is less sensitive than wall time to other processes competing
    # for the cores, but it adds up every intra-op thread.
    record = {
        **_summarise(seconds, cpu_seconds),
        "first_s": seconds[0],
        "peak_delta_mb": deltas[worst] / 2**20,
        "baseline_mb": baselines[worst] / 2**20,
        "peak_abs_mb": max(peaks) / 2**20,
        "peak_exact": exact,
    }
    return record, result


def run_worker(method: str, n: int, repeats: int, seed: int, threads: int = 0) -> dict[str, Any]:
    """Measure one (sampler, N) in this process and return the figures (``threads=0``: torch's default)."""
    import torch

    if threads > 0:
        torch.set_num_threads(threads)

    start = time.perf_counter()
    groups = make_groups(n, seed)
    construct, steps = _timed_steps(method, groups, n, seed)
    record: dict[str, Any] = {
        "method": method,
        "n": n,
        "repeats": repeats,
        "setup_s": time.perf_counter() - start,
        "input": f"{groups.dtype} group ids, {groups.nbytes / 2**20:.0f} MB",
        "torch_threads": torch.get_num_threads(),
        "rss_start_mb": _current_rss() / 2**20,
        "load_average_start": _load(),  # other work on the machine inflates wall times
    }
    # Construction is measured once: it is a one-off cost and repeating it would keep two copies alive.
    record["construct"], sampler = _measure(construct, 1, keep=True)
    for name, step in steps.items():
        if sampler is None:
            record[name] = {"error": "construction failed"}
            continue
        record[name] = _measure(functools.partial(step, sampler), repeats)[0]
    return record


# ---------------------------------------------------------------------------------------------- driver
def default_repeats(n: int) -> int:
    """Repeats of each step in one process (per round): fewer at 10^8, where one repeat takes seconds."""
    return 3 if n <= 10**7 else 1


def _summarise(seconds: list[float], cpu_seconds: list[float]) -> dict[str, Any]:
    return {
        "seconds": seconds,
        "best_s": min(seconds),
        "median_s": statistics.median(seconds),
        "cpu_s": cpu_seconds,
        "best_cpu_s": min(cpu_seconds),
    }


def merge_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One record per (sampler, N) from its rounds: every repeat's time, the largest memory peak."""
    first = rounds[0]
    merged: dict[str, Any] = {k: v for k, v in first.items() if k not in STEPS and k != "error"}
    merged["rounds"] = len(rounds)
    errors = [r["error"] for r in rounds if "error" in r]
    if errors:
        merged["error"] = errors[0]
        return merged
    merged["repeats"] = sum(r["repeats"] for r in rounds)
    merged["load_average_start"] = [r["load_average_start"] for r in rounds]
    for step in STEPS:
        cells = [r[step] for r in rounds]
        failed = [c["error"] for c in cells if "error" in c]
        if failed:
            merged[step] = {"error": failed[0]}
            continue
        worst = max(cells, key=lambda c: c["peak_delta_mb"])
        merged[step] = {
            **_summarise([x for c in cells for x in c["seconds"]], [x for c in cells for x in c["cpu_s"]]),
            "first_s": cells[0]["first_s"],
            "peak_delta_mb": worst["peak_delta_mb"],
            "baseline_mb": worst["baseline_mb"],
            "peak_abs_mb": max(c["peak_abs_mb"] for c in cells),
            "peak_exact": all(c["peak_exact"] for c in cells),
        }
    return merged


def run_in_subprocess(method: str, n: int, repeats: int, seed: int, threads: int, timeout: float) -> dict[str, Any]:
    """Measure one (sampler, N) in a fresh interpreter; a crash or timeout is recorded, not raised."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        method,
        str(n),
        "--repeats",
        str(repeats),
        "--seed",
        str(seed),
        "--threads",
        str(threads),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"method": method, "n": n, "error": f"timed out after {timeout:.0f} s"}
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-3:]
        return {"method": method, "n": n, "error": f"worker exited with {proc.returncode}: {' | '.join(tail)}"}
    record: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return record


def _fmt_s(step: dict[str, Any]) -> str:
    return "failed" if "error" in step else f"{step['best_s']:.3f} s"


def _fmt_mb(step: dict[str, Any]) -> str:
    return "-" if "error" in step else f"{step['peak_delta_mb']:.0f} MB"


def progress_line(i: int, total: int, record: dict[str, Any], wall: float) -> str:
    """One line per measurement, so a long run shows where it is."""
    head = f"[{i}/{total}] {record['method']:<21} N={record['n']:>11,}"
    if "error" in record:
        return f"{head}: ERROR {record['error']}"
    parts = [f"{s} {_fmt_s(record[s])} (+{_fmt_mb(record[s])})" for s in STEPS]
    return f"{head}: " + ", ".join(parts) + f"  [{wall:.1f} s]"


def machine_info() -> dict[str, Any]:
    """The machine and software the figures were taken on."""
    import numpy as np
    import torch

    import lightning_balance

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
        "lightning_balance": lightning_balance.__version__,
        "git_commit": commit,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def _load() -> str:
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def run_benchmark(
    sizes: Sequence[int], repeats: Optional[int], rounds: int, seed: int, threads: int, timeout: float
) -> dict[str, Any]:
    """Every (sampler, N, round) in its own subprocess.

    At each N the samplers alternate (A B, then B A, ...), so a change in the load of the machine during the
    run falls on both of them rather than on whichever ran second.
    """
    jobs = [
        (method, n)
        for n in sizes
        for r in range(rounds)
        for method in (METHODS if r % 2 == 0 else tuple(reversed(METHODS)))
    ]
    raw: list[dict[str, Any]] = []
    load_before = _load()
    start_all = time.perf_counter()
    for i, (method, n) in enumerate(jobs, 1):
        start = time.perf_counter()
        record = run_in_subprocess(method, n, repeats or default_repeats(n), seed, threads, timeout)
        wall = time.perf_counter() - start
        record["wall_s"] = wall
        raw.append(record)
        print(progress_line(i, len(jobs), record, wall), flush=True)
    results = [
        merge_rounds([r for r in raw if r["method"] == method and r["n"] == n]) for n in sizes for method in METHODS
    ]
    return {
        "benchmark": "sampler epoch plan",
        "setup": {
            "num_groups": NUM_GROUPS,
            "imbalance_factor": IMBALANCE,
            "temperature": TEMPERATURE,
            "group_sizes": "n_i proportional to (1/IF)^(i/99), largest-remainder rounding to sum N",
            "input_dtype": "int16 group ids, shuffled",
            "seed": seed,
            "torch_threads": threads or "default",
            "timing": (
                "best of k repeats of each step; each (sampler, N) runs in `rounds` fresh processes, the two"
                " samplers alternating; k (all rounds together) in each result's 'repeats'"
            ),
            "memory": "peak RSS during the step minus RSS just before it; each (sampler, N) in a fresh process",
        },
        "machine": machine_info(),
        "load_average_before": load_before,
        "load_average_after": _load(),
        "total_wall_s": time.perf_counter() - start_all,
        "torchsampler": TORCHSAMPLER_NOTE
        if importlib.util.find_spec("torchsampler") is None
        else "installed, but not measured by this script",
        "results": results,
        "raw": raw,
    }


# ---------------------------------------------------------------------------------------------- report
def _by(data: dict[str, Any], method: str, n: int) -> Optional[dict[str, Any]]:
    return next((r for r in data["results"] if r["method"] == method and r["n"] == n), None)


def _step(record: Optional[dict[str, Any]], step: str) -> dict[str, Any]:
    if record is None:
        return {"error": "not run"}
    if "error" in record:
        return {"error": record["error"]}
    cell: dict[str, Any] = record.get(step, {"error": "not run"})
    return cell


def _ratio(wrs: dict[str, Any], ours: dict[str, Any]) -> Optional[float]:
    if "error" in wrs or "error" in ours:
        return None
    return float(wrs["best_s"]) / float(ours["best_s"])


def _fmt_ratio(ratio: Optional[float]) -> str:
    if ratio is None:
        return "-"
    return f"{ratio:.1f}x" if ratio >= 1 else f"{ratio:.2f}x"


def _n_label(n: int) -> str:
    exponent = math.log10(n)
    return f"10^{exponent:.0f}" if exponent.is_integer() else f"{n:,}"


def targets(data: dict[str, Any]) -> list[str]:
    """The issue's targets, checked against the figures (only those whose sizes were run)."""
    lines = []
    wrs7, ours7 = _by(data, WRS, 10**7), _by(data, OURS, 10**7)
    if wrs7 and ours7:
        for step, what in (("plan", "epoch plan"), ("iter", "list(iter(sampler))")):
            wrs, ours = _step(wrs7, step), _step(ours7, step)
            ratio = _ratio(wrs, ours)
            if ratio is not None:
                verdict = "met" if ratio >= 3 else "NOT met"
                cpu_ratio = wrs["best_cpu_s"] / ours["best_cpu_s"]
                lines.append(
                    f"- At least 3x faster than WeightedRandomSampler at 10^7 ({what}): {ratio:.1f}x in wall time"
                    f" ({cpu_ratio:.1f}x in CPU time): {verdict}."
                )
    ours8 = _by(data, OURS, 10**8)
    if ours8:
        plan = _step(ours8, "plan")
        if "error" in plan:
            lines.append(f"- Epoch plan at 10^8: failed ({plan['error']}).")
        else:
            verdict = "met" if plan["best_s"] < 10 else "NOT met"
            lines.append(
                f"- Epoch plan at 10^8 under 10 s: best {plan['best_s']:.1f} s, first (cold) run"
                f" {plan['first_s']:.1f} s: {verdict}."
            )
            verdict = "met" if plan["peak_delta_mb"] < 2048 else "NOT met"
            build = _step(ours8, "construct")
            lines.append(
                f"- Epoch plan at 10^8 under 2 GB: the plan adds {plan['peak_delta_mb']:.0f} MB at peak: {verdict}."
                f" The whole process peaks at {plan['peak_abs_mb']:.0f} MB (interpreter and torch, the"
                f" {ours8['input']} input and the sampler's index included); construction peaks at"
                f" {build.get('peak_abs_mb', float('nan')):.0f} MB."
            )
    return lines


def _threads(data: dict[str, Any]) -> str:
    used = sorted({r["torch_threads"] for r in data["results"] if "torch_threads" in r})
    return ", ".join(str(t) for t in used) or "unknown"


def _rounds(data: dict[str, Any]) -> str:
    used = sorted({r["rounds"] for r in data["results"] if "rounds" in r})
    return ", ".join(str(r) for r in used) or "unknown"


def render_markdown(data: dict[str, Any]) -> str:
    """The results table, the targets and the machine, as Markdown."""
    sizes = sorted({r["n"] for r in data["results"]})
    m = data["machine"]
    out = [
        "# Sampler benchmark: TemperatureSampler vs WeightedRandomSampler",
        "",
        f"Generated by `benchmarks/sampler_benchmark.py` on {m['date']} (commit {m['git_commit']}).",
        f"{NUM_GROUPS} groups, long-tailed sizes n_i ∝ (1/{IMBALANCE:g})^(i/99) summing to N, int16 group ids,"
        f" temperature T = {TEMPERATURE:g}; WeightedRandomSampler gets one float64 weight p_g(T)/n_g per example.",
        "",
        "Times are the best of k repeats (k = "
        + ", ".join(
            f"{r['repeats']} at {_n_label(r['n'])}" for r in data["results"] if r["method"] == OURS and "repeats" in r
        )
        + f"), taken over {_rounds(data)} fresh processes per sampler and N with the two samplers alternating;"
        " every repeat is in `sampler.json`. *plan* is one epoch's index tensor (`epoch_plan(0)` for ours, the"
        " `torch.multinomial` call inside WeightedRandomSampler for it); *iter* is `list(iter(sampler))`, what a"
        " DataLoader consumes. Ratios are WeightedRandomSampler time / TemperatureSampler time.",
        "",
        f"torch intra-op threads: {_threads(data)} (`--threads`). WeightedRandomSampler's `torch.multinomial` is"
        " single-threaded either way. TemperatureSampler runs many small parallel kernels (one or two per group),"
        " and with one thread per core they wait for each other whenever another process holds a core, so on a"
        " shared machine its times with torch's default thread count mostly measure the other processes.",
        "",
        "## Time",
        "",
        "| N | construct ours | construct WRS | plan ours | plan WRS | plan ratio | iter ours | iter WRS"
        " | iter ratio |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    errors: dict[str, str] = {}
    for n in sizes:
        ours, wrs = _by(data, OURS, n), _by(data, WRS, n)
        row = [_n_label(n)]
        for step in STEPS:
            for method, record in ((OURS, ours), (WRS, wrs)):
                cell = _step(record, step)
                if "error" in cell:
                    errors.setdefault(cell["error"], f"{method} at {_n_label(n)}")
                    row.append("fails¹")
                else:
                    row.append(f"{cell['best_s']:.3f} s")
            if step != "construct":
                ratio = _ratio(_step(wrs, step), _step(ours, step))
                row.append(_fmt_ratio(ratio))
        out.append("| " + " | ".join(row) + " |")
    out += [
        "",
        "## CPU time (user + system, all threads of the process; best of k)",
        "",
        "Less distorted than wall time when other processes compete for the cores.",
        "",
        "| N | plan ours | plan WRS | plan ratio | iter ours | iter WRS | iter ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        ours, wrs = _by(data, OURS, n), _by(data, WRS, n)
        row = [_n_label(n)]
        for step in ("plan", "iter"):
            cells = [_step(ours, step), _step(wrs, step)]
            row += ["fails¹" if "error" in c else f"{c['best_cpu_s']:.3f} s" for c in cells]
            ok = not any("error" in c for c in cells)
            row.append(_fmt_ratio(cells[1]["best_cpu_s"] / cells[0]["best_cpu_s"] if ok else None))
        out.append("| " + " | ".join(row) + " |")
    out += [
        "",
        "## Peak memory (increase over the RSS just before the step; absolute process peak in brackets)",
        "",
        "| N | construct ours | construct WRS | plan ours | plan WRS | iter ours | iter WRS |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in sizes:
        ours, wrs = _by(data, OURS, n), _by(data, WRS, n)
        row = [_n_label(n)]
        for step in STEPS:
            for record in (ours, wrs):
                cell = _step(record, step)
                row.append(
                    "fails¹" if "error" in cell else f"{cell['peak_delta_mb']:.0f} MB ({cell['peak_abs_mb']:.0f})"
                )
        out.append("| " + " | ".join(row) + " |")
    out.append("")
    for message, where in errors.items():
        out.append(
            f"¹ {where}: `{message}` (torch.multinomial accepts at most 2^24 = {MULTINOMIAL_LIMIT:,}"
            " categories, i.e. examples)."
            if "2^24" in message
            else f"¹ {where}: `{message}`."
        )
    out += [
        "",
        "## Targets",
        "",
        *(targets(data) or ["- None of the target sizes (10^7, 10^8) was run."]),
        "",
        "## Other samplers",
        "",
        f"- torchsampler (`ImbalancedDatasetSampler`): {data['torchsampler']}",
        "",
        "## Machine",
        "",
        f"- CPU: {m['cpu']}, {m['logical_cpus']} logical CPUs ({m['usable_cpus']} usable),"
        f" torch intra-op threads in the measuring processes: {_threads(data)}",
        f"- RAM: {m['ram_gib']} GiB",
        f"- {m['platform']}, Python {m['python']}, torch {m['torch']}, numpy {m['numpy']},"
        f" lightning-balance {m['lightning_balance']}",
        f"- Load average (1/5/15 min) before the run: {data['load_average_before']}, after:"
        f" {data['load_average_after']}. The machine is shared, so absolute times can be inflated by"
        " other work; ratios are taken side by side.",
        f"- Total wall time: {data['total_wall_s']:.0f} s",
        "",
    ]
    return "\n".join(out)


def render_plot(data: dict[str, Any], path: Path) -> None:
    """Time and peak memory against N, log-log, for both samplers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {
        (OURS, "plan"): ("C0", "-", "o", "TemperatureSampler epoch_plan"),
        (OURS, "iter"): ("C0", "--", "s", "TemperatureSampler list(iter)"),
        (WRS, "plan"): ("C3", "-", "o", "WeightedRandomSampler multinomial"),
        (WRS, "iter"): ("C3", "--", "s", "WeightedRandomSampler list(iter)"),
    }
    for (method, step), (color, line, marker, label) in styles.items():
        points = [
            (r["n"], r[step])
            for r in data["results"]
            if r["method"] == method and "error" not in r and "error" not in r.get(step, {"error": 1})
        ]
        if not points:
            continue
        ns = [n for n, _ in points]
        ax_t.plot(ns, [s["best_s"] for _, s in points], color=color, linestyle=line, marker=marker, label=label)
        ax_m.plot(
            ns,
            [max(s["peak_delta_mb"], 0.1) for _, s in points],
            color=color,
            linestyle=line,
            marker=marker,
            label=label,
        )
    for ax in (ax_t, ax_m):
        ax.axvline(MULTINOMIAL_LIMIT, color="grey", linestyle=":", linewidth=1)
        label = "2^24: WeightedRandomSampler\nfails beyond"
        ax.text(MULTINOMIAL_LIMIT * 1.1, 0.5, label, transform=ax.get_xaxis_transform(), fontsize=7, color="grey")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("examples N")
        ax.grid(True, which="both", alpha=0.3)
    ax_t.set_ylabel("seconds (best of k)")
    ax_t.set_title("one epoch's indices")
    ax_m.set_ylabel("peak RSS increase, MB")
    ax_m.set_title("memory of the step")
    ax_t.legend(fontsize=7)
    fig.suptitle(
        f"{NUM_GROUPS} long-tailed groups (IF {IMBALANCE:g}), T = {TEMPERATURE:g}; {data['machine']['cpu']},"
        f" {data['machine']['usable_cpus']} CPUs",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_outputs(data: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "sampler.json").write_text(json.dumps(data, indent=2) + "\n")
    (out / "sampler.md").write_text(render_markdown(data))
    render_plot(data, out / "sampler.png")


# ---------------------------------------------------------------------------------------------- CLI
def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        type=lambda s: int(float(s)),
        nargs="+",
        default=list(DEFAULT_SIZES),
        help="numbers of examples N (1e7 style accepted)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: N=1e5, 1 round of 1 repeat, to a temporary folder unless --out is given",
    )
    parser.add_argument(
        "--repeats", type=int, default=None, help="repeats per step and round (default: 3 up to 1e7, 1 beyond)"
    )
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument(
        "--rounds", type=int, default=2, help="fresh processes per (sampler, N); the samplers alternate between rounds"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads in the measuring processes (0: torch's default, one per core)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results folder (default: benchmarks/results; a temporary folder with --quick)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per (sampler, N) process")
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="rewrite sampler.md and sampler.png from an existing sampler.json in --out",
    )
    parser.add_argument("--worker", nargs=2, metavar=("METHOD", "N"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    if args.worker:
        method, n = args.worker
        repeats = args.repeats or default_repeats(int(n))
        print(json.dumps(run_worker(method, int(n), repeats, args.seed, args.threads)))
        return
    out: Path = args.out or (Path(tempfile.mkdtemp(prefix="sampler-benchmark-")) if args.quick else DEFAULT_OUT)
    if args.render_only:
        write_outputs(json.loads((out / "sampler.json").read_text()), out)
        print(f"Rewrote {out / 'sampler.md'} and {out / 'sampler.png'}")
        return
    sizes = [10**5] if args.quick else args.sizes
    repeats = 1 if args.quick and args.repeats is None else args.repeats
    rounds = 1 if args.quick else args.rounds
    data = run_benchmark(sizes, repeats, rounds, args.seed, args.threads, args.timeout)
    write_outputs(data, out)
    print(f"Wrote {out / 'sampler.json'}, {out / 'sampler.md'} and {out / 'sampler.png'}")


if __name__ == "__main__":
    main()
