"""How far below log p(x) does importance sampling sit on our models? IWAE against AIS and
the BDMC bracket (issue 14, "Measure").

For the default VAE (``pyro-aevb fit vae`` defaults: 784-500-500-20, 100 epochs on the
bundled MNIST subset) and the default GMVAE (``pyro-aevb fit gmvae``, its cluster
enumerated, which AIS sums out), on the same binarized test points:

* IWAE: the importance-sampled estimate ``log (1/K) sum_k p(x, z_k) / q(z_k | x)`` with
  the trained guide, for each ``K`` of ``--particles``
  (:func:`pyro_aevb.evaluation.importance_log_likelihood`);
* AIS: :func:`pyro_aevb.ais_log_likelihood` from the guide, ``C`` chains of ``T``
  annealing steps with ``L`` leapfrog steps per HMC move, for each ``T`` of ``--steps``;
* for each IWAE ``K``, the paired difference AIS(largest T) - IWAE(K) over the points
  with its standard error (the two estimates of one point share the point, so the paired
  s.e. is far below the spread of log p(x) over points);
* BDMC (:func:`pyro_aevb.bdmc`) on ``--bdmc-points`` points simulated from each model:
  forward AIS (lower) and reverse AIS from the exact posterior sample (upper), the gap
  with its s.e. over points and the largest per-point gap, for each ``T`` of
  ``--bdmc-steps``.

Every estimate comes with its seconds on this machine. The trained runs are cached in
``bench/work/`` (git-ignored; trained on first use with ``pyro_aevb.runs.train_run`` and
the pair's defaults, resumed if interrupted). The defaults are the issue's full sizes
(1000 test points, C = 16, L = 10, T up to 10 000, 200 simulated points); the flags reduce
them. Results go to ``bench/results/ais{suffix}.json`` and ``.md`` and the figure
``ais_vs_iwae{suffix}.png``.

Run from the repository root: ``python -m bench.ais`` (full) or, e.g.,
``python -m bench.ais --points 100 --chains 4 --leapfrog 2 --steps 100,1000``.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch

from .environment import environment

BENCH = Path(__file__).resolve().parent
WORK = BENCH / "work"
RESULTS = BENCH / "results"
MODELS = ("vae", "gmvae")


def _ints(text: str) -> list[int]:
    values = [int(v) for v in text.split(",") if v.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got '{text}'")
    return values


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="vae,gmvae", help="comma-separated: vae, gmvae")
    p.add_argument("--points", type=int, default=1000, help="test points (1000)")
    p.add_argument("--chains", type=int, default=16, help="AIS chains per point C (16)")
    p.add_argument("--leapfrog", type=int, default=10, help="leapfrog steps per move L (10)")
    p.add_argument("--steps", type=_ints, default=[100, 1000, 3000, 10000], help="AIS T values")
    p.add_argument(
        "--particles", type=_ints, default=[1, 10, 100, 1000, 5000], help="IWAE K values"
    )
    p.add_argument("--bdmc-points", type=int, default=200, help="simulated points (200)")
    p.add_argument("--bdmc-steps", type=_ints, default=[100, 1000, 10000], help="BDMC T values")
    for flag in ("points", "steps", "bdmc-points", "bdmc-steps", "chains"):
        p.add_argument(
            f"--gmvae-{flag}",
            type=_ints if flag.endswith("steps") else int,
            help=f"the GMVAE's --{flag} (default: the same as the VAE's)",
        )
    p.add_argument("--vae-epochs", type=int, default=100, help="VAE training epochs (100)")
    p.add_argument(
        "--gmvae-epochs", type=int, help="GMVAE training epochs (default: the pair's, 100)"
    )
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--suffix", default="", help="results file name suffix, e.g. _reduced")
    p.add_argument(
        "--combine",
        nargs="+",
        metavar="JSON",
        help="measure nothing: merge the models of these results files (one run per model, "
        "e.g. run side by side) into ais{suffix}.json, .md and the figure",
    )
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = set(args.models) - set(MODELS)
    if unknown:
        p.error(f"unknown model(s) {sorted(unknown)}; choose from {list(MODELS)}")
    return args


def model_settings(args, name: str) -> dict:
    """The sizes for model ``name``: the ``--gmvae-*`` flags override for the GMVAE."""
    out = {
        "points": args.points,
        "chains": args.chains,
        "leapfrog": args.leapfrog,
        "steps": list(args.steps),
        "particles": list(args.particles),
        "bdmc_points": args.bdmc_points,
        "bdmc_steps": list(args.bdmc_steps),
        "epochs": args.vae_epochs,
    }
    if name == "gmvae":
        for key in ("points", "steps", "bdmc_points", "bdmc_steps", "chains", "epochs"):
            value = getattr(args, f"gmvae_{key}")
            if key == "epochs" and value is None:
                from pyro_aevb.pairs import get_pair

                value = get_pair("gmvae").training["epochs"]
            if value is not None:
                out[key] = list(value) if isinstance(value, list) else value
    return out


def _epochs_done(run_dir: Path) -> int:
    """The last epoch in the run's history.csv (0 when there is none)."""
    import csv

    path = run_dir / "history.csv"
    if not path.exists():
        return 0
    with path.open() as f:
        rows = list(csv.DictReader(f))
    return int(rows[-1]["epoch"]) if rows else 0


def trained_run(name: str, epochs: int, seed: int):
    """The run of pair ``name`` trained with its defaults for ``epochs`` epochs, cached in
    ``bench/work/{name}-{epochs}``: trained (or resumed) unless its history already holds
    the last epoch. A run whose training finished but whose closing evaluation (the
    importance-sampled test log-likelihood, which this benchmark does not use) was cut
    short is used as it is: its checkpoint holds the last epoch's parameters."""
    from pyro_aevb.runs import load_run, resolve_config, train_run

    run_dir = WORK / f"{name}-{epochs}"
    if _epochs_done(run_dir) < epochs:
        WORK.mkdir(exist_ok=True)
        (WORK / ".gitignore").write_text("*\n")
        config = resolve_config(name, {"epochs": epochs, "seed": seed})
        print(f"training {name} for {epochs} epochs into {run_dir}", flush=True)
        train_run(config, run_dir, resume=(run_dir / "config.json").exists(), progress=False)
    return load_run(run_dir), run_dir


def _mean_se(t: torch.Tensor) -> tuple[float, float]:
    n = t.numel()
    return float(t.mean()), (float(t.std() / math.sqrt(n)) if n > 1 else math.nan)


def measure_model(name: str, s: dict, seed: int, threads: int) -> dict:
    from pyro_aevb import ais_log_likelihood, bdmc
    from pyro_aevb.ais import intra_op_threads
    from pyro_aevb.evaluation import importance_log_likelihood, prepare_fields

    run, run_dir = trained_run(name, s["epochs"], seed)
    model, guide = run.model, run.guide
    device = next(model.parameters()).device
    test = prepare_fields(run.test, run.config["transform"], device)
    n = next(iter(test.values())).shape[0]
    if s["points"] > n:
        raise ValueError(f"--points {s['points']} exceeds the {n} test points of {name}")
    fields = {k: v[: s["points"]] for k, v in test.items()}
    out = {"run_dir": str(run_dir.relative_to(BENCH.parent)), "settings": s, "iwae": [], "ais": []}
    per_point = {}
    ais_opts = dict(num_chains=s["chains"], num_leapfrog=s["leapfrog"], num_threads=threads)

    for k in s["particles"]:
        t0 = time.perf_counter()
        with intra_op_threads(threads):
            est = importance_log_likelihood(model, guide, fields, k, pareto=False, seed=seed + 1)
        seconds = time.perf_counter() - t0
        mean, se = _mean_se(est.log_likelihood)
        per_point[("iwae", k)] = est.log_likelihood
        out["iwae"].append(
            {"particles": k, "log_likelihood": mean, "se_over_points": se, "seconds": seconds}
        )
        print(f"{name} IWAE K={k}: {mean:.3f} ({seconds:.1f} s)", flush=True)

    for t in s["steps"]:
        est = ais_log_likelihood(model, guide, fields, num_steps=t, seed=seed, **ais_opts)
        mean, se = _mean_se(est.log_likelihood)
        per_point[("ais", t)] = est.log_likelihood
        out["ais"].append(
            {
                "steps": t,
                "log_likelihood": mean,
                "se_over_points": se,
                "mc_se": float(est.se.pow(2).sum().sqrt() / est.se.numel()),
                "acceptance": float(est.acceptance.mean()),
                "ess_mean": float(est.ess.mean()),
                "evaluations_per_point": s["chains"] * (1 + (t - 1) * s["leapfrog"]),
                "seconds": est.seconds,
            }
        )
        print(f"{name} AIS T={t}: {mean:.3f} ({est.seconds:.1f} s)", flush=True)

    best = per_point[("ais", max(s["steps"]))]
    out["ais_minus_iwae"] = []
    for k in s["particles"]:
        diff, diff_se = _mean_se(best - per_point[("iwae", k)])
        out["ais_minus_iwae"].append(
            {"particles": k, "ais_steps": max(s["steps"]), "difference": diff, "se": diff_se}
        )

    out["bdmc"] = []
    for t in s["bdmc_steps"]:
        res = bdmc(
            model, guide, test, num_points=s["bdmc_points"], num_steps=t, seed=seed, **ais_opts
        )
        gap, gap_se = _mean_se(res.gap)
        out["bdmc"].append(
            {
                "steps": t,
                "points": s["bdmc_points"],
                "lower": float(res.lower.mean()),
                "upper": float(res.upper.mean()),
                "gap": gap,
                "gap_se": gap_se,
                "gap_max": float(res.gap.max()),
                "forward_acceptance": float(res.forward_acceptance.mean()),
                "reverse_acceptance": float(res.reverse_acceptance.mean()),
                "evaluations_per_point": 2 * s["chains"] * (1 + (t - 1) * s["leapfrog"]),
                "seconds": res.seconds,
            }
        )
        print(f"{name} BDMC T={t}: gap {gap:.3f} +- {gap_se:.3f} ({res.seconds:.1f} s)", flush=True)
    return out


def markdown(result: dict) -> str:
    lines = [
        "# IWAE against AIS and the BDMC bracket (`python -m bench.ais`)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {result['environment']['cpu_model']}, {result['environment']['cpu_count']} "
        f"cores (shared with other sessions), torch {result['environment']['torch']}, "
        f"{result['environment']['torch_threads']} intra-op thread(s); "
        f"total {result['total_seconds'] / 60:.1f} min. Nats per data point.",
    ]
    for name, r in result["models"].items():
        s = r["settings"]
        lines += [
            "",
            f"## {name} (`{r['run_dir']}`, {s['epochs']} epochs)",
            "",
            f"{s['points']} test points; AIS from the guide with C = {s['chains']} chains, "
            f"L = {s['leapfrog']} leapfrog steps per HMC move.",
            "",
            "| estimator | log p(x) | s.e. over points | Monte Carlo s.e. | seconds |",
            "|---|---|---|---|---|",
        ]
        for row in r["iwae"]:
            lines.append(
                f"| IWAE K = {row['particles']} | {row['log_likelihood']:.3f} | "
                f"{row['se_over_points']:.2f} | – | {row['seconds']:.1f} |"
            )
        for row in r["ais"]:
            lines.append(
                f"| AIS T = {row['steps']} (acceptance {row['acceptance']:.2f}) | "
                f"{row['log_likelihood']:.3f} | {row['se_over_points']:.2f} | "
                f"{row['mc_se']:.3f} | {row['seconds']:.1f} |"
            )
        lines += ["", "| paired difference | nats | s.e. |", "|---|---|---|"]
        for row in r["ais_minus_iwae"]:
            lines.append(
                f"| AIS T = {row['ais_steps']} − IWAE K = {row['particles']} | "
                f"{row['difference']:.3f} | {row['se']:.3f} |"
            )
        lines += [
            "",
            "| BDMC (simulated points) | lower | upper | gap ± s.e. | largest gap | seconds |",
            "|---|---|---|---|---|---|",
        ]
        for row in r["bdmc"]:
            lines.append(
                f"| T = {row['steps']}, {row['points']} points | {row['lower']:.3f} | "
                f"{row['upper']:.3f} | {row['gap']:.3f} ± {row['gap_se']:.3f} | "
                f"{row['gap_max']:.3f} | {row['seconds']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["models"])
    fig, axes = plt.subplots(2, len(names), figsize=(5.5 * len(names), 7.5), squeeze=False)
    for col, name in enumerate(names):
        r = result["models"][name]
        ax = axes[0, col]
        for key, label, tag in (("iwae", "IWAE", "particles"), ("ais", "AIS", "steps")):
            xs = [row["seconds"] for row in r[key]]
            ys = [row["log_likelihood"] for row in r[key]]
            ax.plot(xs, ys, "o-", label=label)
            for row, x, y in zip(r[key], xs, ys, strict=True):
                text = f"{'K' if key == 'iwae' else 'T'}={row[tag]}"
                ax.annotate(text, (x, y), textcoords="offset points", xytext=(3, -10), fontsize=7)
        ax.set_xscale("log")
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_xlabel("seconds")
        ax.set_ylabel("mean log p(x) estimate (nats)")
        ax.set_title(f"{name}: {r['settings']['points']} test points")
        ax.legend()
        ax = axes[1, col]
        rows = r["bdmc"]
        xs = [row["seconds"] for row in rows]
        ax.plot(xs, [row["lower"] for row in rows], "o-", label="forward AIS (lower)")
        ax.plot(xs, [row["upper"] for row in rows], "s-", label="reverse AIS (upper)")
        ax.fill_between(
            xs, [row["lower"] for row in rows], [row["upper"] for row in rows], alpha=0.2
        )
        for row, x in zip(rows, xs, strict=True):
            ax.annotate(
                f"T={row['steps']}",
                (x, row["upper"]),
                textcoords="offset points",
                xytext=(3, 4),
                fontsize=7,
            )
        ax.set_xscale("log")
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_xlabel("seconds (forward + reverse)")
        ax.set_ylabel("mean log p(x) bound (nats)")
        ax.set_title(f"{name}: BDMC on {r['settings']['bdmc_points']} simulated points")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def combine(paths: list[str]) -> dict:
    """One result from several runs of this script, each measuring other models."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    result = {
        "command": " ; ".join(p["command"] for p in parts),
        "environment": parts[0]["environment"],
        "models": {},
        # the runs may have overlapped in time: the longest is the wall time
        "total_seconds": max(p["total_seconds"] for p in parts),
        "combined_from": [str(p) for p in paths],
    }
    for part in parts:
        for name, r in part["models"].items():
            if name in result["models"]:
                raise ValueError(f"model '{name}' is in more than one of {paths}")
            result["models"][name] = r
    return result


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.combine:
        result = combine(args.combine)
    else:
        torch.set_num_threads(args.threads)
        t0 = time.perf_counter()
        command = "python -m bench.ais " + shlex.join(sys.argv[1:] if argv is None else argv)
        result = {
            "command": command.strip(),
            "environment": environment(args.threads),
            "models": {},
        }
        for name in args.models:
            result["models"][name] = measure_model(
                name, model_settings(args, name), args.seed, args.threads
            )
        result["total_seconds"] = time.perf_counter() - t0
    RESULTS.mkdir(exist_ok=True)
    stem = f"ais{args.suffix}"
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(result))
    figure(result, RESULTS / f"ais_vs_iwae{args.suffix}.png")
    print(f"wrote {RESULTS / stem}.json, .md and ais_vs_iwae{args.suffix}.png")
    return result


if __name__ == "__main__":
    main()
