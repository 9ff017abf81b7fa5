"""Examples per second of data-parallel ``fit``: 1 process, 1 process through Fabric's DDP,
and 2 processes (gloo on CPU), at global batches 100 and 1000.

    python -m bench.ddp_scaling                 # CPU, writes bench/results/ddp_scaling.{json,md}
    python -m bench.ddp_scaling --device cuda   # 1 GPU without and with Fabric (and 2 GPUs
                                                # where there are 2); not measured so far

A VAE (784-200-20) on the bundled MNIST subset (4000 points), dynamic binarization, Adam.
The rate is ``steps * batch / train_seconds`` of rank 0, the seconds spent in training steps
(for several processes: including the waits for the gradient all-reduce); the start of the
processes is reported apart (``fit_seconds``: the whole call). Variants run in rounds whose
order rotates, so that a slow spell of the shared machine hits all of them; medians over
rounds. The load average before and after is recorded: on a 2-core machine shared with other
work, 2 processes can hardly be faster than 1 (which already uses both cores through
PyTorch's threads); the point is correctness and the overhead.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import pyro
import torch
from pyro_aevb.guides import DiagonalNormalGuide
from pyro_aevb.models import VAE

from pyro_aevb import fit
from pyro_aevb.data import load_mnist_subset

from .timing import environment

RESULTS = Path(__file__).resolve().parent / "results"


def _variants(device: str) -> dict[str, dict]:
    if device == "cpu":
        return {
            "1 process": {},
            "1 process, Fabric DDP": {"devices": 1, "strategy": "ddp_fork"},
            "2 processes": {"devices": 2},
        }
    variants = {
        "1 GPU": {"device": device},
        "1 GPU, Fabric DDP": {"devices": 1, "strategy": "ddp_fork", "accelerator": "cuda"},
    }
    if torch.cuda.device_count() >= 2:
        variants["2 GPUs"] = {"devices": 2, "accelerator": "cuda"}
    return variants


def _run(train, batch: int, epochs: int, options: dict) -> dict:
    pyro.clear_param_store()
    torch.manual_seed(0)
    model, guide = VAE(784, 20, (200,)), DiagonalNormalGuide(784, 20, (200,))
    t0 = time.perf_counter()
    result = fit(
        model,
        guide,
        train,
        transform="dynamic",
        epochs=epochs,
        batch_size=batch,
        lr=1e-3,
        seed=0,
        progress=False,
        **options,
    )
    seconds = time.perf_counter() - t0
    steps = result.history[-1]["step"]
    return {
        "examples_per_s": steps * batch / result.train_seconds,
        "train_seconds": result.train_seconds,
        "fit_seconds": seconds,
        "train_elbo": result.history[-1]["train_elbo"],
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu, or cuda for the GPU variants")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--epochs", type=int, default=1, help="epochs of 4000 points per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="output stem (default bench/results/ddp_scaling[_DEVICE])")
    args = parser.parse_args(argv)
    # one thread per process in every variant (forked processes run on one thread, see
    # pyro_aevb.training.distributed): 1 process uses one core, 2 processes two
    torch.set_num_threads(1)
    train = load_mnist_subset()[0].flat()
    variants = _variants(args.device)
    for options in variants.values():  # untimed: first calls pay for imports and caches
        _run(train, min(args.batch_sizes), 1, options)
    load_before = os.getloadavg()
    rows = []
    for batch in args.batch_sizes:
        epochs = args.epochs * (2 if batch >= 1000 else 1)  # a few steps at the large batch
        per_round = {name: [] for name in variants}
        names = list(variants)
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                per_round[name].append(_run(train, batch, epochs, variants[name]))
        base = statistics.median(m["examples_per_s"] for m in per_round[names[0]])
        for name, runs in per_round.items():
            rate = statistics.median(m["examples_per_s"] for m in runs)
            rows.append(
                {
                    "batch_size": batch,
                    "variant": name,
                    "examples_per_s_median": rate,
                    "examples_per_s_per_round": [m["examples_per_s"] for m in runs],
                    f"ratio_over_{names[0].replace(' ', '_')}": rate / base,
                    "fit_seconds_median": statistics.median(m["fit_seconds"] for m in runs),
                    "train_elbo_last": [m["train_elbo"] for m in runs],
                }
            )
    report = {
        "environment": environment(torch.get_num_threads()),
        "settings": {
            "data": "mnist-subset, 4000 train points, dynamic binarization",
            "pair": "VAE 784-200-20 Bernoulli, DiagonalNormalGuide",
            "rounds": args.rounds,
            "epochs_per_run": args.epochs,
            "device": args.device,
            "threads": "one torch thread per process in every variant",
        },
        "load_average_1_5_15_before": load_before,
        "load_average_1_5_15_after": os.getloadavg(),
        "rows": rows,
    }
    stem = args.out or str(RESULTS / ("ddp_scaling" + ("" if args.device == "cpu" else "_gpu")))
    Path(stem).parent.mkdir(parents=True, exist_ok=True)
    Path(stem + ".json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# Data-parallel fit: examples/s ({args.device})",
        "",
        f"{report['settings']['pair']} on {report['settings']['data']}; medians of "
        f"{args.rounds} interleaved rounds; rank 0's seconds in training steps.",
        f"Machine: {report['environment']['cpu_model']}, {os.cpu_count()} cores, load average "
        f"{load_before[0]:.1f} before and {report['load_average_1_5_15_after'][0]:.1f} after "
        "(shared with other work).",
        "",
        "| batch | variant | examples/s | vs first | whole fit call (s) |",
        "|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        ratio = next(v for k, v in row.items() if k.startswith("ratio_over_"))
        lines.append(
            f"| {row['batch_size']} | {row['variant']} | {row['examples_per_s_median']:.0f} | "
            f"{ratio:.2f} | {row['fit_seconds_median']:.2f} |"
        )
    lines += [
        "",
        "Each variant's last train ELBO is in the JSON: 1 process with and without Fabric agree "
        "to the last digit (rank 0 keeps the seed's noise); 2 processes draw other noise.",
    ]
    if args.device == "cpu":
        lines.append(
            "The GPU variants (1 GPU with and without Fabric, 2 GPUs where present) run with "
            "`--device cuda` and write ddp_scaling_gpu.{json,md}."
        )
    lines += ["", "Produced by:", "", "```", "python -m bench.ddp_scaling", "```"]
    Path(stem + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
