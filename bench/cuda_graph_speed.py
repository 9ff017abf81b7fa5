"""Throughput of ``fit`` with CUDA graphs against plain PyTorch loops on the same device.

Issue 15 asks, on a GPU, for ``fit(cuda_graph=True)`` at batch 100 to reach at least twice
the examples per second of the eager plain-PyTorch loop (a user's loop with the default
``torch.optim.Adam``), and for examples/s at batch 100 and 1000. This script times whole
``fit`` runs (``train_seconds`` of epochs 2 on, so capture and warm-up in epoch 1 are left
out, and reported separately) of the default VAE (``elbo``) in five variants, interleaved
over ``--repeats`` rounds in rotating order:

* ``plain``: the plain loop of ``bench/step_speed.py`` (default Adam), ``plain_fused``;
* ``ours``: ``fit`` as it runs by default (the loss and the guard read every step);
* ``ours_deferred``: ``fit(sync_every=50)`` (the guard on the device, one read per 50 steps);
* ``ours_graph``: ``fit(cuda_graph=True)`` (CUDA only).

On the CPU (``--device cpu``) the graph variant is left out; the run then only checks the
script and measures what deferring the reads costs or saves there.

    python -m bench.cuda_graph_speed --device cuda
    python -m bench.cuda_graph_speed --device cpu --quick
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch

import pyro_aevb
from bench import step_speed
from bench.environment import environment


def fit_ours(train, batch_size: int, epochs: int, device: str, **options) -> list[float]:
    """``train_seconds`` of each epoch of the library's ``fit`` (default VAE, ``elbo``)."""
    args = argparse.Namespace(fit_epochs=epochs)
    times = step_speed.fit_ours("elbo", train, args, torch.device(device), batch_size, **options)
    return times.seconds


def fit_plain(train, batch_size: int, epochs: int, device: str, fused: bool) -> list[float]:
    args = argparse.Namespace(fit_epochs=epochs)
    pair = step_speed.CASES["elbo"][0]
    saved = pair.training["batch_size"]
    pair.training["batch_size"] = batch_size
    try:
        times = step_speed.fit_plain("elbo", train, args, torch.device(device), fused)
    finally:
        pair.training["batch_size"] = saved
    return times.seconds


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--points", type=int, default=None, help="first N training points")
    parser.add_argument("--quick", action="store_true", help="2 epochs, 1 repeat, 500 points")
    parser.add_argument("--out", default=None, help="output stem (default bench/results/...)")
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs, args.repeats, args.points = 2, 1, args.points or 500
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (epochs 2 on are the steady state)")
    if args.out is None:
        args.out = "bench/results/cuda_graph_speed_" + args.device.replace(":", "")
        args.out += "_quick" if args.quick else ""
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = pyro_aevb.device.resolve_device(args.device)
    train, _ = pyro_aevb.data.load_mnist_subset()
    train = train.flat()
    if args.points is not None:
        train = train.subset(range(min(args.points, len(train))))
    variants = {
        "plain": lambda b: fit_plain(train, b, args.epochs, str(device), fused=False),
        "plain_fused": lambda b: fit_plain(train, b, args.epochs, str(device), fused=True),
        "ours": lambda b: fit_ours(train, b, args.epochs, str(device)),
        "ours_deferred": lambda b: fit_ours(train, b, args.epochs, str(device), sync_every=50),
    }
    if device.type == "cuda":
        variants["ours_graph"] = lambda b: fit_ours(
            train, b, args.epochs, str(device), cuda_graph=True
        )
    names = list(variants)
    results = []
    for batch_size in args.batch_sizes:
        steps = math.ceil(len(train) / batch_size)
        per_step: dict[str, list[float]] = {n: [] for n in names}
        first_extra: dict[str, list[float]] = {n: [] for n in names}
        for r in range(args.repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                seconds = variants[name](batch_size)
                later = seconds[1:]
                per_step[name].append(sum(later) / (steps * len(later)))
                first_extra[name].append(seconds[0] - statistics.median(later))
        rate = {n: batch_size / statistics.median(v) for n, v in per_step.items()}
        ratio = {
            n: statistics.median(p / a for p, a in zip(per_step["plain"], v, strict=True))
            for n, v in per_step.items()
        }
        row = {
            "batch_size": batch_size,
            "steps_per_epoch": steps,
            "examples_per_second_median": rate,
            "throughput_over_plain_median_of_runs": ratio,
            "first_epoch_extra_seconds_median": {
                n: statistics.median(v) for n, v in first_extra.items()
            },
            "seconds_per_step": per_step,
        }
        results.append(row)
        print(
            f"batch {batch_size}: "
            + ", ".join(f"{n} {rate[n]:,.0f}/s ({ratio[n]:.2f}x plain)" for n in names),
            file=sys.stderr,
        )
    report = {
        "environment": environment(torch.get_num_threads()),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "settings": vars(args),
        "load_average": os.getloadavg(),
        "results": results,
        "command": "python -m bench.cuda_graph_speed " + " ".join(argv or sys.argv[1:]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2))
    lines = [
        f"# fit throughput on {report['device_name'] or device}: CUDA graphs against plain loops",
        "",
        f"{report['environment']['date_utc']}; default VAE, `elbo`, {len(train)} points, "
        f"{args.epochs} epochs (1st left out), {args.repeats} interleaved repeats.",
        "",
        "| batch | " + " | ".join(names) + " |",
        "|---:|" + "---:|" * len(names),
    ]
    for row in results:
        cells = [
            f"{row['examples_per_second_median'][n]:,.0f}/s "
            f"({row['throughput_over_plain_median_of_runs'][n]:.2f}x)"
            for n in names
        ]
        lines.append(f"| {row['batch_size']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "examples per second (median over repeats) and, in brackets, throughput over the "
        "plain loop with default Adam (median of the per-repeat ratios).",
        "",
        "Produced by:",
        "",
        "```",
        report["command"],
        "```",
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(lines))
    return report


if __name__ == "__main__":
    started = time.perf_counter()
    main()
    print(f"done in {time.perf_counter() - started:.0f} s", file=sys.stderr)
