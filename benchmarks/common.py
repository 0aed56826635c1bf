"""Shared helpers for benchmarks: a scratch embedded Postgres, timing statistics, machine description."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from benchmarks.scratch import default_data_dir
from context_assistant.core import Config, load_config


@dataclass(frozen=True)
class Stats:
    """Median with min/max (and p95 for latency series)."""

    median: float
    minimum: float
    maximum: float
    p95: float
    n: int

    @classmethod
    def of(cls, values: list[float]) -> Stats:
        ordered = sorted(values)
        p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
        return cls(statistics.median(ordered), ordered[0], ordered[-1], p95, len(ordered))

    def fmt(self, unit: str = "ms", scale: float = 1000.0) -> str:
        return (
            f"{self.median * scale:.2f} {unit} (min {self.minimum * scale:.2f}, max {self.maximum * scale:.2f}, "
            f"p95 {self.p95 * scale:.2f}, n={self.n})"
        )


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def repeat(fn: Callable[[], object], times: int) -> Stats:
    return Stats.of([timed(fn) for _ in range(times)])


def machine() -> str:
    cores = os.cpu_count()
    try:
        with open("/proc/meminfo") as meminfo:
            mem_kb = next(int(line.split()[1]) for line in meminfo if line.startswith("MemTotal"))
        mem = f"{mem_kb / 1024 / 1024:.0f} GiB RAM"
    except (OSError, StopIteration):
        mem = "RAM unknown"
    return f"{platform.system()} {platform.machine()}, {cores} cores, {mem}, Python {platform.python_version()}"


def cpu_reference() -> str:
    """The CPU's model and how long one core takes for a fixed pure-Python loop (best of 5): the same VM type
    can land on hosts of different speed, and the peer-free lines (turn, web) need that to compare days."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    best = min(timed(lambda: sum(range(10_000_000))) for _ in range(5))
    return f"{model}; sum(range(10**7)) {best * 1000:.0f} ms"


TRACE_EXPORTER_MODULE = "context_assistant.core.trace_export"


def running_trace_exporters(folders: Sequence[Path], proc: Path = Path("/proc")) -> list[int]:
    """Pids of trace exporters writing under one of ``folders`` (their settings name the store). One outlives
    the process it serves by design (it drains that process's traces, at low priority), so a benchmark started
    right after a traced one shares the cores with it."""
    wanted = [str(folder).encode() for folder in folders]
    pids = []
    for entry in proc.glob("[0-9]*"):
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if TRACE_EXPORTER_MODULE.encode() in argv and any(w in arg for arg in argv for w in wanted):
            pids.append(int(entry.name))
    return pids


def wait_for_trace_exporters(
    *folders: Path,
    timeout: float = 900.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> float:
    """Wait until no trace exporter is still draining traces into ``folders`` (at most ``timeout`` s); the
    seconds waited."""
    started = clock()
    while running_trace_exporters(folders) and clock() - started < timeout:
        sleep(0.5)
    return clock() - started


@contextmanager
def scratch_config(name: str, **overrides: object) -> Iterator[Config]:
    """A Config on a fresh embedded Postgres database in a scratch data directory (kept outside /root)."""
    base = default_data_dir()
    base.mkdir(parents=True, exist_ok=True)
    values: dict[str, object] = {"data_dir": str(base), "database.name": name, "tracing.enabled": False}
    values.update(overrides)
    yield load_config(None, env={}, overrides=values)
