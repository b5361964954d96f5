"""Helpers for the benchmarks: optional imports, interleaved timing, robust statistics, machine info, tables.

Nothing here knows about flows; :mod:`speed` builds the models and hands this module plain callables.
"""

from __future__ import annotations

import datetime
import gc
import importlib
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

# ------------------------------------------------------------------------------------------------ optional imports


def optional_import(name: str) -> tuple[ModuleType | None, str]:
    """Import ``name`` if it is installed: returns ``(module, "ok")``, or ``(None, reason)`` without raising."""
    try:
        return importlib.import_module(name), "ok"
    except ModuleNotFoundError as err:
        if err.name is not None and name.split(".")[0] == err.name.split(".")[0]:
            return None, "not installed"
        return None, f"import failed: {err}"
    except Exception as err:  # a broken install must not stop the other libraries' benchmarks
        return None, f"import failed: {type(err).__name__}: {err}"


def package_version(dist_name: str) -> str | None:
    """The installed version of the distribution ``dist_name``, or ``None`` when it is not installed."""
    try:
        return metadata.version(dist_name)
    except metadata.PackageNotFoundError:
        return None


# ------------------------------------------------------------------------------------------------ timing


def device_sync(device: Any) -> Callable[[], None]:
    """A function that waits for queued work on ``device`` (a no-op on the CPU), for honest wall-clock timings."""
    if device.type == "cuda":
        import torch

        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_call(fn: Callable[[], object], sync: Callable[[], None], inner: int = 1) -> float:
    """Seconds per call of ``fn``, averaged over ``inner`` back-to-back calls.

    The device is synchronised before and after, and Python's garbage collector is paused during the measurement
    (as :mod:`timeit` does), so a collection triggered by one library is not billed to another.
    """
    gc_was_enabled = gc.isenabled()
    sync()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        elapsed = time.perf_counter() - start
    finally:
        if gc_was_enabled:
            gc.enable()
    return elapsed / inner


def calibrate_inner(seconds_per_call: float, min_time: float, max_inner: int = 100) -> int:
    """Calls per timing sample so one sample lasts at least ``min_time`` seconds (1 for slow calls)."""
    if min_time <= 0 or seconds_per_call <= 0:
        return 1
    return int(min(max_inner, max(1, math.ceil(min_time / seconds_per_call))))


@dataclass
class Case:
    """One library's contender in a benchmark: a zero-argument callable doing one unit of work."""

    name: str
    fn: Callable[[], object]
    first_call_s: float = float("nan")
    inner: int = 1
    times_s: list[float] = field(default_factory=list)


def prepare(case: Case, sync: Callable[[], None], warmup: int, min_time: float) -> None:
    """Time the first call (fresh model: lazy initialisation, allocator growth, optimizer state), then warm up and
    choose the number of calls per timing sample."""
    case.first_call_s = time_call(case.fn, sync)
    last = case.first_call_s
    for _ in range(warmup):
        last = time_call(case.fn, sync)
    case.inner = calibrate_inner(last, min_time)


def run_interleaved(cases: Sequence[Case], sync: Callable[[], None], repeats: int) -> None:
    """Fill each case's ``times_s`` with ``repeats`` samples, taken in interleaved rounds.

    Round ``r`` times every case once, starting from case ``r mod n`` (A,B,C then B,C,A then C,A,B, ...): a burst
    of machine noise lands on all libraries alike, and no library always runs right after the same neighbour.
    """
    n = len(cases)
    for r in range(repeats):
        for k in range(n):
            case = cases[(r + k) % n]
            case.times_s.append(time_call(case.fn, sync, case.inner))


# ------------------------------------------------------------------------------------------------ statistics


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile of ``values`` by linear interpolation (``q=0.5`` is the median); NaN for no values."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median and quartiles of ``values``."""
    return {"median": quantile(values, 0.5), "q25": quantile(values, 0.25), "q75": quantile(values, 0.75)}


def per_round_ratios(ours: Sequence[float], peer: Sequence[float]) -> list[float]:
    """``ours[r] / peer[r]`` for every round ``r`` (both timed within the same round, so under the same load)."""
    return [a / b for a, b in zip(ours, peer, strict=True)]


# ------------------------------------------------------------------------------------------------ machine info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit(repo: Path) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def machine_info(device: Any = "cpu", packages: Sequence[str] = ("pyroflows", "torch", "pyro-ppl", "zuko", "nflows",
                                                                   "numpy")) -> dict:
    """What RESULTS.md needs to say where the figures come from: hardware, load, thread count, versions, date.

    ``device`` is a torch device (the torch benchmarks) or a string such as ``"cpu"`` (the JAX ones); ``packages``
    are the distributions whose versions are recorded.
    """
    try:
        usable_cores = len(os.sched_getaffinity(0))
    except AttributeError:
        usable_cores = os.cpu_count()
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    torch_threads, gpu = None, None
    if "torch" in packages:
        import torch

        torch_threads = torch.get_num_threads()
        if getattr(device, "type", None) == "cuda":
            gpu = torch.cuda.get_device_name(device)
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores,
        "torch_threads": torch_threads,
        "load_average_1_5_15": load,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "device": str(device),
        "gpu": gpu,
        "git_commit": _git_commit(Path(__file__).resolve().parent.parent),
        "versions": {name: package_version(name) for name in packages},
    }


# ------------------------------------------------------------------------------------------------ targets


@dataclass(frozen=True)
class Benchmark:
    """One workload: ``key`` names it on the command line, ``kind`` picks the model, ``op`` the unit of work."""

    key: str
    title: str
    kind: str
    op: str


def evaluate_targets(results: dict[str, dict], targets: Sequence[tuple[str, str, float]], ours: str
                     ) -> list[dict]:
    """PASS/MISS for each ``(benchmark key, peer, largest acceptable ours/peer ratio)`` from the run's results (the
    median of per-round ratios), or why it could not be judged."""
    out = []
    for key, peer, goal in targets:
        row = {"benchmark": key, "peer": peer, "target": goal, "measured": None, "result": None}
        res = results.get(key)
        if res is None:
            row["result"] = "not run"
        elif peer not in res["ratios_ours_over_peer"]:
            why = res["libraries"].get(peer, {}).get("status", "?")
            mine = res["libraries"].get(ours, {}).get("status", "?")
            row["result"] = f"n/a ({ours}: {mine})" if mine != "ok" else f"n/a ({peer}: {why})"
        else:
            row["measured"] = res["ratios_ours_over_peer"][peer]["median"]
            row["result"] = "PASS" if row["measured"] <= goal else "MISS"
        out.append(row)
    return out


def print_targets(targets: list[dict], benchmarks: Sequence[Benchmark]) -> None:
    """The table of :func:`evaluate_targets`."""
    print("\n== Targets from the project issue (ours/peer, median of per-round ratios)")
    rows = []
    for t in targets:
        title = next(b.title for b in benchmarks if b.key == t["benchmark"])
        measured = "-" if t["measured"] is None else f"{t['measured']:.2f}x"
        rows.append([title, t["peer"], f"<= {t['target']:.2f}x", measured, t["result"]])
    print(format_table(["benchmark", "peer", "target", "measured", "result"], rows, align="llrrl"))


# ------------------------------------------------------------------------------------------------ tables


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], align: str | None = None) -> str:
    """A plain-text table; ``align`` has one ``"l"`` or ``"r"`` per column (default: first left, others right)."""
    align = align or "l" + "r" * (len(headers) - 1)
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        cells = (str(c).ljust(w) if a == "l" else str(c).rjust(w) for c, w, a in zip(cells, widths, align))
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(headers), rule, *(line(r) for r in rows)])


def fmt_ms(seconds: float) -> str:
    """Seconds as milliseconds with a precision that suits the magnitude."""
    if seconds != seconds:  # NaN
        return "-"
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.1f}"


def fmt_ratio(stats: dict[str, float] | None) -> str:
    """``0.62x [0.58-0.66]``: median per-round ratio and its quartiles."""
    if not stats:
        return "-"
    return f"{stats['median']:.2f}x [{stats['q25']:.2f}-{stats['q75']:.2f}]"


__all__ = [
    "Benchmark", "Case", "calibrate_inner", "device_sync", "evaluate_targets", "fmt_ms", "fmt_ratio", "format_table",
    "machine_info", "optional_import", "package_version", "per_round_ratios", "prepare", "print_targets", "quantile",
    "run_interleaved", "summarize", "time_call",
]
