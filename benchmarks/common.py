"""Shared helpers for benchmarks: a scratch embedded Postgres, timing statistics, machine description."""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

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


@contextmanager
def scratch_config(name: str, **overrides: object) -> Iterator[Config]:
    """A Config on a fresh embedded Postgres database in a scratch data directory (kept outside /root)."""
    base = Path(os.environ.get("BENCH_DIR", tempfile.gettempdir())) / "context-assistant-bench"
    base.mkdir(parents=True, exist_ok=True)
    values: dict[str, object] = {"data_dir": str(base), "database.name": name, "tracing.enabled": False}
    values.update(overrides)
    yield load_config(None, env={}, overrides=values)
