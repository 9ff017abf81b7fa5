"""The quick start's training step under torch's default intra-op threads, 1 and 2 threads,
with and without another CPU-bound process on the machine (issue 21, item 7).

Each measurement is a fresh worker process (so that "default" is torch's own count at
start-up, with ``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` removed from its environment):
the default VAE 784-500-500-20 (``pyro_aevb.pairs.VAE_PAIR``) on one dynamically binarized
batch of 100 MNIST-subset digits, the library's step set up as ``fit`` sets it up
(:func:`bench.library_step.library_step_runner`), ``--warmup`` untimed steps, then
``--steps`` timed ones; the worker prints its ms per step. Variants run interleaved in
rounds whose order rotates, so a slow spell of the shared machine hits all of them; the
report is the median over ``--rounds`` rounds per variant and load.

The load is one ``python -c 'while True: pass'`` process at the same niceness as the
workers, started before the loaded rounds and killed after them.

    python -m bench.threads                    # writes bench/results/threads.{json,md}
    python -m bench.threads --rounds 3 --steps 30
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

VARIANTS = {"default": None, "1": 1, "2": 2}


def worker(threads: int | None, warmup: int, steps: int) -> float:
    """ms per training step of the quick start's pair with ``threads`` (None: torch's)."""
    import torch

    from bench.library_step import library_step_runner
    from bench.step_speed import build_pair
    from pyro_aevb.data import load_mnist_subset
    from pyro_aevb.pairs import VAE_PAIR

    if threads is not None:
        torch.set_num_threads(threads)
    train, _ = load_mnist_subset()
    train = train.flat()
    g = torch.Generator().manual_seed(0)
    x = torch.bernoulli(train.x[:100], generator=g)
    model, guide = build_pair(VAE_PAIR, train)
    run, _ = library_step_runner(model, guide, {"x": x}, len(train), "elbo")
    run(warmup)
    t0 = time.perf_counter()
    run(steps)
    return 1000 * (time.perf_counter() - t0) / steps


def _measure(variant: str, warmup: int, steps: int) -> tuple[float, int]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    threads = VARIANTS[variant]
    code = (
        "import sys, torch; from bench.threads import worker; "
        f"ms = worker({threads!r}, {warmup}, {steps}); print(ms, torch.get_num_threads())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    ms, used = out.stdout.split()[-2:]
    return float(ms), int(used)


def _table(rows: list[dict], names: list[str]) -> list[str]:
    table = ["| load | default | 1 thread | 2 threads |", "|---|---|---|---|"]
    for load in ("idle", "loaded"):
        cells = []
        for name in names:
            times = [r["ms"] for r in rows if (r["load"], r["variant"]) == (load, name)]
            if not times:
                cells.append("-")
                continue
            each = ", ".join(f"{t:.0f}" for t in times)
            cells.append(f"{statistics.median(times):.1f} ({each})")
        loads = [r["loadavg"] for r in rows if r["load"] == load]
        span = f" (load average {min(loads):.1f}-{max(loads):.1f})" if loads else ""
        table.append(f"| {load}{span} | " + " | ".join(cells) + " |")
    return table


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--loads", nargs="+", default=["idle", "loaded"], choices=["idle", "loaded"])
    p.add_argument("--out", default="bench/results/threads")
    args = p.parse_args(argv)
    path = Path(args.out + ".json")
    # resumable: the measurements already in STEM.json are kept and not repeated
    results = json.loads(path.read_text()) if path.exists() else {"rounds": []}
    results.setdefault("settings", []).append(vars(args))
    done = {(r["load"], r["round"], r["variant"]) for r in results["rounds"]}
    names = list(VARIANTS)
    for load in args.loads:
        hog = None
        if load == "loaded":
            hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(1.0)
        try:
            for r in range(args.rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                for name in order:
                    if (load, r, name) in done:
                        continue
                    ms, used = _measure(name, args.warmup, args.steps)
                    row = {"load": load, "round": r, "variant": name, "threads": used, "ms": ms}
                    row.update(loadavg=os.getloadavg()[0], steps=args.steps)
                    results["rounds"].append(row)
                    print(json.dumps(row), flush=True)
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_text(json.dumps(results, indent=1))
        finally:
            if hog is not None:
                hog.kill()
                hog.wait()
    table = _table(results["rounds"], names)
    results["table"] = table
    path.write_text(json.dumps(results, indent=1))
    Path(args.out + ".md").write_text(
        "ms per training step of the quick start's pair (batch 100), median over rounds "
        "(each round's value in brackets); 'loaded': with one extra CPU-bound process\n\n"
        + "\n".join(table)
        + "\n"
    )
    print("\n".join(table))


if __name__ == "__main__":
    main()
