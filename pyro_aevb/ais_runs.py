"""AIS and BDMC on a run directory: ``pyro-aevb evaluate RUN_DIR --method ais`` and
``pyro-aevb bdmc RUN_DIR``, their numbers and figures.

``evaluate --method ais`` adds estimator-named keys (``test_log_likelihood_ais``, ...,
see :class:`pyro_aevb.ais.AISEvaluation`) and an ``ais_comparison`` table to the run's
``metrics.json``, leaving the importance-sampled keys as they were, and draws
``ais_vs_iwae.png``: IWAE for a list of ``K`` and AIS for a list of ``T`` on the same
test points, against the likelihood evaluations each spends per data point.
``bdmc`` writes ``bdmc.json`` and ``bdmc.png``: on data simulated from the model, the
forward (lower) and reverse (upper) AIS bounds for each ``T`` next to IWAE.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

#: default lists for the figures: a few minutes on a CPU for the default VAE
DEFAULT_COMPARE_PARTICLES = (1, 10, 100, 1000)
DEFAULT_COMPARE_STEPS = (10, 100)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got '{text}'"
        ) from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got '{text}'")
    return values


def _add_common(p: argparse.ArgumentParser, points_help: str) -> None:
    p.add_argument("--ais-steps", type=int, default=100, help="AIS annealing steps T (100)")
    p.add_argument("--chains", type=int, default=16, help="AIS chains per data point C (16)")
    p.add_argument("--leapfrog", type=int, default=10, help="leapfrog steps per HMC move (10)")
    p.add_argument(
        "--ais-initial",
        choices=["guide", "prior"],
        default="guide",
        help="start the chains from the guide q(z|x) (default) or the prior p(z)",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads (default 1: torch's own count, one per core, stalls on "
        "a CPU shared with other processes)",
    )
    p.add_argument("--points", type=int, default=100, help=points_help)
    p.add_argument(
        "--compare-particles",
        type=_int_list,
        default=list(DEFAULT_COMPARE_PARTICLES),
        help="IWAE K values for the figure (default 1,10,100,1000)",
    )
    p.add_argument(
        "--compare-steps",
        type=_int_list,
        default=list(DEFAULT_COMPARE_STEPS),
        help="further AIS T values for the figure (default 10,100)",
    )
    p.add_argument("--no-figure", action="store_true", help="skip the figure and its runs")


def add_ais_arguments(e: argparse.ArgumentParser) -> None:
    """Options of ``evaluate`` for ``--method ais``."""
    e.add_argument(
        "--method",
        choices=["importance", "ais"],
        default="importance",
        help="importance sampling (default) or annealed importance sampling",
    )
    _add_common(e, "--method ais: the first N test points (default 100)")


def add_bdmc_parser(sub) -> None:
    b = sub.add_parser(
        "bdmc", help="bracket log p(x) on data simulated from a run's model (bdmc.json)"
    )
    b.add_argument("run_dir")
    b.add_argument("--device", help="override the run's device")
    _add_common(b, "simulated data points (default 100)")


def _settings(args) -> dict:
    for name in ("ais_steps", "chains", "leapfrog", "points"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise ValueError("--threads must be at least 1")
    return dict(
        num_chains=args.chains,
        num_leapfrog=args.leapfrog,
        initial=args.ais_initial,
        num_threads=args.threads,
    )


def _evaluations_per_point(num_steps: int, num_chains: int, num_leapfrog: int) -> int:
    """Joint-density evaluations per data point: the start and L per transition, per chain."""
    return num_chains * (1 + (num_steps - 1) * num_leapfrog)


def _estimate_seconds(run_pilot, steps_needed: float) -> float:
    """Time a pilot of a few annealing steps; the seconds per step times ``steps_needed``."""
    pilot_steps = 3
    t0 = time.perf_counter()
    run_pilot(pilot_steps)
    return (time.perf_counter() - t0) / pilot_steps * steps_needed


def _say(text: str) -> None:
    print(text, flush=True)


def _load(args):
    from .evaluation import prepare_fields
    from .runs import load_run

    run = load_run(args.run_dir, device=args.device)
    device = next(run.model.parameters()).device
    fields = prepare_fields(run.test, run.config["transform"], device)
    n = next(iter(fields.values())).shape[0]
    if args.points > n:
        raise ValueError(f"--points {args.points} exceeds the run's {n} test points")
    return run, {k: v[: args.points] for k, v in fields.items()}


def _merge_json(path: Path, update: dict) -> dict:
    from .training import save_json

    previous = json.loads(path.read_text()) if path.exists() else {}
    previous.update(update)
    save_json(previous, path)
    return previous


def evaluate_ais(args) -> dict:
    """``pyro-aevb evaluate RUN_DIR --method ais``; returns the merged metrics."""
    from .ais import ais_evaluation, ais_log_likelihood, default_batch_size
    from .evaluation import importance_log_likelihood

    settings = _settings(args)
    run, fields = _load(args)
    seed = run.config.get("seed", 0)
    model, guide = run.model, run.guide
    steps = [] if args.no_figure else sorted(set(args.compare_steps) - {args.ais_steps})
    chunk = {
        k: v[: default_batch_size(args.chains, _summary(model, guide, fields))]
        for k, v in fields.items()
    }
    chunks = math.ceil(args.points / next(iter(chunk.values())).shape[0])
    seconds = _estimate_seconds(
        lambda t: ais_log_likelihood(model, guide, chunk, num_steps=t, seed=seed, **settings),
        chunks * (args.ais_steps + sum(steps)),
    )
    _say(
        f"AIS on {args.points} points, T = {args.ais_steps}, C = {args.chains}, "
        f"L = {args.leapfrog}"
        + (f", and T = {steps} for the figure" if steps else "")
        + f": about {_duration(seconds)} (timed on a pilot)"
    )
    result = ais_evaluation(
        model, guide, fields, seed=seed, num_steps=args.ais_steps, progress=None, **settings
    )
    metrics = result.metrics()
    comparison = {"ais": [_ais_row(result.ais)], "iwae": []}
    if not args.no_figure:
        for t in steps:
            est = ais_log_likelihood(
                model, guide, fields, num_steps=t, seed=seed, progress=None, **settings
            )
            comparison["ais"].append(_ais_row(est))
        for k in args.compare_particles:
            t0 = time.perf_counter()
            est = importance_log_likelihood(model, guide, fields, k, pareto=False, seed=seed + 1)
            comparison["iwae"].append(
                _row(est.log_likelihood, None, time.perf_counter() - t0, particles=k, evaluations=k)
            )
        comparison["ais"].sort(key=lambda r: r["steps"])
        from .ais_plots import figure_ais_vs_iwae

        figure_ais_vs_iwae(
            comparison, result.log_evidence, args.points, Path(args.run_dir) / "ais_vs_iwae.png"
        )
    metrics["ais_comparison"] = comparison
    return _merge_json(Path(args.run_dir) / "metrics.json", metrics)


def _summary(model, guide, fields):
    from .contract import check_pair

    return check_pair(
        model, guide, {k: v[:1] for k, v in fields.items()}, allow_model_enumeration=True
    )


def _row(ll, se, seconds, **extra) -> dict:
    n = ll.numel()
    out = dict(extra)
    out["log_likelihood"] = float(ll.mean())
    out["se_over_points"] = float(ll.std() / math.sqrt(n)) if n > 1 else math.nan
    if se is not None:
        out["mc_se"] = float(se.pow(2).sum().sqrt() / n)
    out["seconds"] = seconds
    return out


def _ais_row(est) -> dict:
    return _row(
        est.log_likelihood,
        est.se,
        est.seconds,
        steps=est.num_steps,
        evaluations=_evaluations_per_point(est.num_steps, est.num_chains, est.num_leapfrog),
        acceptance=float(est.acceptance.mean()),
    )


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def run_bdmc(args) -> dict:
    """``pyro-aevb bdmc RUN_DIR``: writes ``bdmc.json`` (and ``bdmc.png``); returns it."""
    from .ais import bdmc, default_batch_size
    from .evaluation import importance_log_likelihood
    from .training import save_json

    settings = _settings(args)
    run, template = _load(args)
    seed = run.config.get("seed", 0)
    model, guide = run.model, run.guide
    steps = [] if args.no_figure else sorted(set(args.compare_steps) - {args.ais_steps})
    size = default_batch_size(args.chains, _summary(model, guide, template))
    pilot = {k: v[:size] for k, v in template.items()}
    chunks = math.ceil(args.points / next(iter(pilot.values())).shape[0])
    seconds = _estimate_seconds(
        lambda t: bdmc(model, guide, pilot, num_steps=t, seed=seed, **settings),
        chunks * (args.ais_steps + sum(steps)),
    )
    _say(
        f"BDMC on {args.points} simulated points, T = {args.ais_steps}, C = {args.chains}, "
        f"L = {args.leapfrog}"
        + (f", and T = {steps} for the figure" if steps else "")
        + f": about {_duration(seconds)} (timed on a pilot)"
    )
    result = bdmc(
        model, guide, template, num_steps=args.ais_steps, seed=seed, progress=None, **settings
    )
    out = result.metrics()
    rows = [_bdmc_row(result)]
    iwae = []
    if not args.no_figure:
        for t in steps:
            rows.append(
                # the figure's other T values: a crossed bracket is drawn and named in the
                # summary (check=False), the requested T alone is refused when crossed
                _bdmc_row(
                    bdmc(
                        model,
                        guide,
                        template,
                        num_steps=t,
                        seed=seed,
                        progress=None,
                        check=False,
                        **settings,
                    )
                )
            )
        for k in args.compare_particles:
            t0 = time.perf_counter()
            est = importance_log_likelihood(model, guide, result.data, k, pareto=False, seed=seed)
            iwae.append(
                _row(est.log_likelihood, None, time.perf_counter() - t0, particles=k, evaluations=k)
            )
        rows.sort(key=lambda r: r["steps"])
        from .ais_plots import figure_bdmc

        figure_bdmc(rows, iwae, result.log_evidence, args.points, Path(args.run_dir) / "bdmc.png")
    out["bdmc_by_steps"] = rows
    out["iwae_on_simulated"] = iwae
    save_json(out, Path(args.run_dir) / "bdmc.json")
    return out


def _bdmc_row(result) -> dict:
    return {
        "steps": result.num_steps,
        "evaluations": _evaluations_per_point(
            result.num_steps, result.num_chains, result.num_leapfrog
        ),
        "lower": float(result.lower.mean()),
        "upper": float(result.upper.mean()),
        "gap": float(result.gap.mean()),
        "gap_max": float(result.gap.max()),
        "crossed_se": result.crossed_se,
        "seconds": result.seconds,
    }


def ais_summary(metrics: dict) -> str:
    lines = [
        f"test log-likelihood  {metrics['test_log_likelihood_ais']:9.2f} +- "
        f"{metrics['test_log_likelihood_ais_se']:.2f} nats (AIS, T = {metrics['ais_steps']}, "
        f"C = {metrics['ais_chains']}, {metrics['ais_num_test_points']} points; Monte Carlo "
        f"s.e. {metrics['test_log_likelihood_ais_mc_se']:.3f})",
        f"HMC acceptance       {metrics['ais_acceptance_mean']:9.2f}",
        f"ESS mean (chains)    {metrics['ais_ess_mean']:9.1f}",
    ]
    for row in metrics.get("ais_comparison", {}).get("iwae", []):
        lines.append(
            f"IWAE K = {row['particles']:<6}      {row['log_likelihood']:9.2f} nats (same points)"
        )
    if "ais_points_log_evidence" in metrics:
        lines.append(
            f"exact log-evidence   {metrics['ais_points_log_evidence']:9.3f} nats (same points)"
        )
    return "\n".join(lines)


def bdmc_summary(out: dict) -> str:
    lines = [
        f"BDMC on {out['bdmc_points']} simulated points (T = {out['bdmc_steps']}, "
        f"C = {out['bdmc_chains']}):",
        f"  lower (forward AIS)  {out['bdmc_lower']:9.3f} nats",
        f"  upper (reverse AIS)  {out['bdmc_upper']:9.3f} nats",
        f"  gap                  {out['bdmc_gap']:9.3f} +- {out['bdmc_gap_se']:.3f} nats "
        f"(max {out['bdmc_gap_max']:.3f})",
    ]
    if "bdmc_log_evidence" in out:
        lines.append(f"  exact log p(x)       {out['bdmc_log_evidence']:9.3f} nats")
    lines += _crossed_lines(out)
    return "\n".join(lines)


def _crossed_lines(out: dict) -> list[str]:
    """A WARNING line for a bracket crossed beyond its standard error (the requested T,
    then each T of the figure), with the next step."""
    from .ais import crossed_advice

    lines = []
    crossed = out.get("bdmc_crossed_se", 0.0)
    if crossed > 1:
        gap = out["bdmc_gap"]
        lines.append("WARNING: " + crossed_advice(gap, -gap / crossed, out["bdmc_steps"]))
    for row in out.get("bdmc_by_steps", []):
        if row["steps"] != out["bdmc_steps"] and row.get("crossed_se", 0.0) > 1:
            lines.append(
                f"WARNING: at T = {row['steps']} (the figure) the bounds crossed by "
                f"{row['crossed_se']:.1f} standard errors (gap {row['gap']:.3f} nats): that T "
                f"is too few for this model; the figure shows it as computed."
            )
    return lines


def run_command(args) -> str:
    """Run ``evaluate --method ais`` or ``bdmc``; the summary to print."""
    if args.command == "bdmc":
        out = run_bdmc(args)
        print(f"wrote {Path(args.run_dir) / 'bdmc.json'}", file=sys.stdout)
        return bdmc_summary(out)
    metrics = evaluate_ais(args)
    print(f"run directory: {args.run_dir}", file=sys.stdout)
    return ais_summary(metrics)
