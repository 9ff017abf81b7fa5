"""Timing training steps against each other on a shared machine.

:func:`time_step_variants` times several implementations of a training step against each
other on a shared machine: warm-up, then rounds that rotate the order of the variants, so
that a slow spell of the machine hits all of them; medians over rounds and the median of
the per-round ratios (the steadier figure, since the variants of one round ran seconds
apart). What the numbers were measured on is :func:`bench.environment.environment`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


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
