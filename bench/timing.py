"""Shared timing and provenance helpers of the benchmarks.

:func:`time_step_variants` times several implementations of a training step against each
other on a shared machine: warm-up, then rounds that rotate the order of the variants, so
that a slow spell of the machine hits all of them; medians over rounds and the median of
the per-round ratios (the steadier figure, since the variants of one round ran seconds
apart). :func:`environment` and :func:`machine_info` record what the numbers were measured on.
"""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyro
import torch

import pyro_aevb


def time_step_variants(
    runners: dict[str, Callable[[int], None]],
    warmup: int,
    rounds: int,
    steps: int,
    baseline: str = "plain",
    synchronize: Callable[[], None] | None = None,
) -> dict:
    """Time ``runners`` (name -> ``run(n)`` taking ``n`` training steps; ``baseline`` among
    them) in ``rounds`` rounds of ``steps`` steps each after ``warmup`` untimed steps, the
    order rotating between rounds; ms per step, medians and the ratios to ``baseline``.

    :param synchronize: called before each clock reading (``torch.cuda.synchronize`` on a
        GPU, whose kernels run asynchronously: without it the clock would time the queueing).
    """
    sync = synchronize or (lambda: None)
    names = list(runners)
    for run in runners.values():
        run(warmup)
    sync()
    per_round: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        # rotate the order so that no variant always runs first (or last) in a round
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            sync()
            t0 = time.perf_counter()
            runners[name](steps)
            sync()
            per_round[name].append(1e3 * (time.perf_counter() - t0) / steps)
    median = {name: statistics.median(ms) for name, ms in per_round.items()}
    # Ratios within a round compare steps timed seconds apart, so a slow spell of the
    # (shared, virtualized) machine cancels out; their median is the steadier ratio.
    paired = {
        name: statistics.median(a / b for a, b in zip(ms, per_round[baseline], strict=True))
        for name, ms in per_round.items()
        if name != baseline
    }
    result = {
        "ms_per_step_median": median,
        # the least disturbed round, a cross-check when other processes share the cores
        "ms_per_step_min": {name: min(ms) for name, ms in per_round.items()},
        "ms_per_step_per_round": per_round,
    }
    for name in names:
        if name != baseline:
            result[f"ratio_{name}_over_{baseline}"] = median[name] / median[baseline]
    result[f"ratio_over_{baseline}_median_of_rounds"] = paired
    return result


def git_state() -> dict:
    """The library's commit and whether its working tree differs from it (read-only git)."""
    root = Path(__file__).resolve().parent.parent

    def git(*cmd):
        try:
            return subprocess.run(
                ["git", *cmd], cwd=root, capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    status = git("status", "--porcelain", "--", "pyro_aevb", "models", "guides")
    return {"commit": git("rev-parse", "HEAD"), "library_tree_dirty": bool(status)}


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(threads: int) -> dict:
    """Date, platform, versions and the git commit of the library, for a results file."""
    return {
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": threads,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "numpy": np.__version__,
        "pyro_aevb": pyro_aevb.__version__,
        **git_state(),
    }
