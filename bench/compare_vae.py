"""Quality and speed of pyro-aevb's default VAE against the same VAE in plain PyTorch.

For every seed, both implementations are trained with the library's default
settings (``VAE_PAIR.training``: epochs, batch size, learning rate, dynamic
binarization) on the bundled MNIST subset and evaluated on the same binarized
test set with ``K`` importance samples:

* ours: ``pyro_aevb.fit`` then ``pyro_aevb.evaluate``;
* plain: ``bench/plain_vae.py`` (its own training loop and estimator).

The quality bar: averaged over the seeds, ours is no worse than plain by more
than ``QUALITY_TOLERANCE_NATS`` in test log-likelihood.

Speed: the CPU time of one training step on the same binarized batch, for the
step ``pyro_aevb.fit`` takes (``pyro_aevb.TrainingStep``), for a stock ``pyro.infer.SVI``
step (same objective and optimizer, to tell the library's own overhead from
Pyro's) and for the plain step. Steps are timed in rounds that rotate the order
of the implementations; the median over rounds is reported.

Run ``python -m bench.compare_vae --quick`` from the repository root for a smoke run
(under a minute) and ``python -m bench.compare_vae`` for the full benchmark (about 10
minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import pyro
import pyro.optim
import torch

import pyro_aevb
from bench.environment import environment
from bench.library_step import library_step_runner
from bench.plain_vae import (
    build_plain_vae,
    make_train_step,
    plain_importance_log_likelihood,
    train_plain,
)
from bench.report import (
    command_line,
    environment_line,
    load_average,
    produced_by,
    warm_up_optimizers,
    write_results,
)
from bench.timing import time_step_variants
from pyro_aevb.data import get_transform, load_mnist_subset, transform_test_set
from pyro_aevb.evaluation import prepare_fields
from pyro_aevb.objectives import make_objective
from pyro_aevb.pairs import VAE_PAIR
from pyro_aevb.plate import full_data_size

#: ours may trail plain by at most this much mean test log-likelihood (nats per data point)
QUALITY_TOLERANCE_NATS = 0.5
TRANSFORM = VAE_PAIR.training["transform"]
#: settings of ``--quick``: enough to exercise every code path, not to measure anything
QUICK = {
    "seeds": [0],
    "epochs": 2,
    "particles": 50,
    "warmup": 3,
    "timing_steps": 10,
    "rounds": 2,
}
#: per-step time variants, in the order of the first timing round


def parse_args(argv=None) -> argparse.Namespace:
    defaults = VAE_PAIR.training
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=defaults["epochs"])
    parser.add_argument(
        "--particles",
        type=int,
        default=defaults["log_likelihood_particles"],
        help="importance samples K per test point",
    )
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps per variant")
    parser.add_argument("--timing-steps", type=int, default=200, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=10, help="timing rounds (median taken)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    parser.add_argument(
        "--out",
        default=None,
        help="output stem; writes STEM.json and STEM.md (default bench/results/vae_vs_pytorch, "
        "or bench/results/vae_vs_pytorch_quick with --quick so a smoke run never "
        "overwrites the full results)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        # --quick overrides only what the user left at its default
        for name, value in QUICK.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    if args.out is None:
        args.out = "bench/results/vae_vs_pytorch" + ("_quick" if args.quick else "")
    return args


def build_ours(train, seed: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The library's default pair (``VAE`` model, ``DiagonalNormalGuide`` guide), built
    by ``VAE_PAIR.build`` for ``train`` and initialized from ``torch.manual_seed(seed)``."""
    options = dict(VAE_PAIR.options)
    # The pair's likelihood defaults to the one its transform suits (Bernoulli here).
    options["likelihood"] = options["likelihood"] or get_transform(TRANSFORM).likelihood
    torch.manual_seed(seed)
    return VAE_PAIR.build(train, **options)


def build_plain(x_dim: int, seed: int):
    """The plain ``(encoder, decoder)`` with the default pair's sizes, seeded as ours."""
    torch.manual_seed(seed)
    return build_plain_vae(x_dim, VAE_PAIR.options["z_dim"], VAE_PAIR.options["hidden"])


def same_initial_weights(train, seed: int) -> bool:
    """Whether ours and plain start from identical weights under the same seed."""
    model, guide = build_ours(train, seed)
    encoder, decoder = build_plain(train.num_features, seed)
    ours = [*model.parameters(), *guide.parameters()]
    plain = [*decoder.parameters(), *encoder.parameters()]
    return len(ours) == len(plain) and all(
        a.shape == b.shape and torch.equal(a, b) for a, b in zip(ours, plain, strict=True)
    )


def run_seed(seed: int, train, test, test_x_binary: torch.Tensor, args) -> dict:
    """Train and evaluate both implementations for one seed; all numbers in nats per point."""
    settings = VAE_PAIR.training
    hidden = VAE_PAIR.options["hidden"]

    model, guide = build_ours(train, seed)
    fit_result = pyro_aevb.fit(
        model,
        guide,
        train,
        test,
        transform=TRANSFORM,
        objective=settings["objective"],
        num_particles=settings["num_particles"],
        epochs=args.epochs,
        batch_size=settings["batch_size"],
        lr=settings["lr"],
        seed=seed,
        progress=False,
    )
    t0 = time.perf_counter()
    evaluation = pyro_aevb.evaluate(
        model, guide, test, transform=TRANSFORM, num_particles=args.particles
    )
    ours_eval_seconds = time.perf_counter() - t0
    metrics = evaluation.metrics()
    ours = {
        "test_log_likelihood": metrics["test_log_likelihood"],
        "test_log_likelihood_se": metrics["test_log_likelihood_se"],
        # the ELBO from the same K draws as the log-likelihood: the estimator plain reports
        "test_elbo": float(evaluation.importance.elbo.mean()),
        # what pyro_aevb.evaluate reports as test_elbo: one fresh draw per point
        "test_elbo_1_sample": metrics["test_elbo"],
        "ess_mean": metrics["ess_mean"],
        "pareto_k_mean": metrics.get("pareto_k_mean"),
        "final_train_loss": -fit_result.history[-1]["train_elbo"] if fit_result.history else None,
        "train_seconds": fit_result.train_seconds,
        "eval_seconds": ours_eval_seconds,
    }

    plain_result = train_plain(
        train.x,
        epochs=args.epochs,
        batch_size=settings["batch_size"],
        lr=settings["lr"],
        seed=seed,
        z_dim=VAE_PAIR.options["z_dim"],
        hidden=hidden,
    )
    t0 = time.perf_counter()
    estimate = plain_importance_log_likelihood(
        plain_result.encoder, plain_result.decoder, test_x_binary, K=args.particles
    )
    plain_eval_seconds = time.perf_counter() - t0
    n_test = estimate.log_likelihood.numel()
    plain = {
        "test_log_likelihood": float(estimate.log_likelihood.mean()),
        "test_log_likelihood_se": float(estimate.log_likelihood.std() / math.sqrt(n_test)),
        "test_elbo": float(estimate.elbo.mean()),
        "final_train_loss": plain_result.train_loss[-1] if plain_result.train_loss else None,
        "train_seconds": plain_result.train_seconds,
        "eval_seconds": plain_eval_seconds,
    }
    return {
        "seed": seed,
        "ours": ours,
        "plain": plain,
        "diff_test_log_likelihood": ours["test_log_likelihood"] - plain["test_log_likelihood"],
        "diff_test_elbo": ours["test_elbo"] - plain["test_elbo"],
    }


def time_steps(train, args) -> dict:
    """Per-step training time (ms) of ours, a stock Pyro SVI step and plain, same batch."""
    settings = VAE_PAIR.training
    batch_size, lr = settings["batch_size"], settings["lr"]
    n_train, x_dim = train.x.shape
    generator = torch.Generator().manual_seed(0)
    x_batch = torch.bernoulli(train.x[:batch_size], generator=generator)
    store = pyro.get_param_store()

    # ours: the step pyro_aevb.fit takes, set up as fit sets it up (bench/library_step.py)
    ours_model, ours_guide = build_ours(train, 0)
    ours_steps, _ = library_step_runner(
        ours_model,
        ours_guide,
        {"x": x_batch},
        n_train,
        settings["objective"],
        settings["num_particles"],
        lr=lr,
    )

    # stock Pyro: SVI.step with the same objective and optimizer, no finiteness check
    svi_model, svi_guide = build_ours(train, 0)
    svi = pyro.infer.SVI(
        svi_model,
        svi_guide,
        pyro.optim.Adam({"lr": lr}),
        make_objective(settings["objective"], settings["num_particles"]),
    )
    svi_scope: dict = {"params": {}, "constraints": {}}

    def svi_steps(n: int) -> None:
        with store.scope(svi_scope), full_data_size(n_train):
            for _ in range(n):
                svi.step(x=x_batch)

    # plain PyTorch
    encoder, decoder = build_plain(x_dim, 0)
    plain_optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=lr)
    plain_step = make_train_step(encoder, decoder, plain_optimizer)

    def plain_steps(n: int) -> None:
        for _ in range(n):
            plain_step(x_batch)

    runners = {"ours": ours_steps, "pyro_svi": svi_steps, "plain": plain_steps}
    return {
        **time_step_variants(runners, args.warmup, args.rounds, args.timing_steps),
        "ours_step": "pyro_aevb.TrainingStep as fit builds it (check_pair on the batch, "
        "objective.differentiable_loss scaled by 1/N, one torch Adam over the pair's "
        "parameters, the non-finite guard; validation on for the first step only), inside a "
        "param-store scope",
        "pyro_svi_step": "pyro.infer.SVI.step with the same Trace_ELBO and pyro.optim.Adam",
        "plain_step": "zero_grad, forward, -mean ELBO, backward, torch.optim.Adam.step",
        "batch_size": batch_size,
        "full_data_size": n_train,
        "warmup_steps": args.warmup,
        "timed_steps_per_round": args.timing_steps,
        "rounds": args.rounds,
    }


def summarize(per_seed: list[dict]) -> dict:
    def mean(key, role=None):
        values = [s[role][key] if role else s[key] for s in per_seed]
        return sum(values) / len(values)

    diffs = [s["diff_test_log_likelihood"] for s in per_seed]
    mean_diff = sum(diffs) / len(diffs)
    return {
        "ours_test_log_likelihood": mean("test_log_likelihood", "ours"),
        "plain_test_log_likelihood": mean("test_log_likelihood", "plain"),
        "diff_test_log_likelihood": mean_diff,
        "diff_test_log_likelihood_sd_over_seeds": statistics.stdev(diffs)
        if len(diffs) > 1
        else None,
        # how far the mean difference itself would move with other seeds: runs that share
        # data and initialization still spread by a few tenths of a nat with the noise
        "diff_test_log_likelihood_se": statistics.stdev(diffs) / math.sqrt(len(diffs))
        if len(diffs) > 1
        else None,
        "ours_test_elbo": mean("test_elbo", "ours"),
        "plain_test_elbo": mean("test_elbo", "plain"),
        "diff_test_elbo": mean("diff_test_elbo"),
        "ours_train_seconds": mean("train_seconds", "ours"),
        "plain_train_seconds": mean("train_seconds", "plain"),
        "quality_tolerance_nats": QUALITY_TOLERANCE_NATS,
        "quality_pass": mean_diff >= -QUALITY_TOLERANCE_NATS,
    }


def markdown_report(results: dict) -> str:
    s, t, env, cfg = (results[k] for k in ("summary", "timing", "environment", "settings"))
    load = results["load_average_1min"]
    verdict = "PASS" if s["quality_pass"] else "FAIL"
    lines = [
        "# pyro-aevb VAE vs plain PyTorch",
        "",
        f"MNIST subset (4000 train / 1000 test), dynamic binarization, {cfg['epochs']} epochs, "
        f"batch {cfg['batch_size']}, Adam lr {cfg['lr']}, test log-likelihood with "
        f"K = {cfg['particles']} importance samples; nats per data point (higher is better).",
        "",
        "| seed | LL ours | LL plain | diff (ours - plain) | ELBO ours | ELBO plain |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["per_seed"]:
        o, p = r["ours"], r["plain"]
        lines.append(
            f"| {r['seed']} | {o['test_log_likelihood']:.2f} | {p['test_log_likelihood']:.2f} "
            f"| {r['diff_test_log_likelihood']:+.2f} "
            f"| {o['test_elbo']:.2f} | {p['test_elbo']:.2f} |"
        )
    lines += [
        f"| **mean** | **{s['ours_test_log_likelihood']:.2f}** "
        f"| **{s['plain_test_log_likelihood']:.2f}** | **{s['diff_test_log_likelihood']:+.2f}** "
        f"| {s['ours_test_elbo']:.2f} | {s['plain_test_elbo']:.2f} |",
        "",
        f"Quality bar (mean LL diff >= -{s['quality_tolerance_nats']} nats): **{verdict}**"
        + (
            f" (standard error of the mean diff over seeds: "
            f"{s['diff_test_log_likelihood_se']:.2f} nats)"
            if s["diff_test_log_likelihood_se"] is not None
            else ""
        ),
        "",
        f"Training wall time per run (mean over seeds): ours {s['ours_train_seconds']:.1f} s "
        f"(excluding fit's per-epoch test ELBO), plain {s['plain_train_seconds']:.1f} s.",
        "",
        f"Training step, same batch of {t['batch_size']}, CPU, {env['torch_threads']} threads "
        f"(median of {t['rounds']} rounds x {t['timed_steps_per_round']} steps):",
        "",
        "| step | ms/step | ratio to plain | ratio to plain, median of per-round ratios |",
        "|---|---:|---:|---:|",
    ]
    ms, paired = t["ms_per_step_median"], t["ratio_over_plain_median_of_rounds"]
    for name, label in (
        ("ours", "ours (`pyro_aevb.TrainingStep`, as `fit` builds it)"),
        ("pyro_svi", "stock `pyro.infer.SVI.step`"),
        ("plain", "plain PyTorch"),
    ):
        lines.append(
            f"| {label} | {ms[name]:.2f} | {ms[name] / ms['plain']:.2f} "
            f"| {paired.get(name, 1.0):.2f} |"
        )
    lines += [
        "",
        environment_line(env, load["start"], load["end"]),
        "",
        *produced_by(results["command"]),
    ]
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    command = command_line("compare_vae", argv)
    load_before = load_average()
    warm_up_optimizers()

    train, test = load_mnist_subset()
    train, test = train.flat(), test.flat()
    # The test set binarized once with the library's fixed test seed, for plain; ours
    # binarizes inside evaluate(). Check that both see the same bits.
    test_x_binary = transform_test_set(test.x, get_transform(TRANSFORM), test.levels)
    if not torch.equal(prepare_fields(test, TRANSFORM)["x"], test_x_binary):
        raise RuntimeError("pyro_aevb.evaluate would binarize the test set differently")
    same_init = same_initial_weights(train, args.seeds[0])

    per_seed = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        result = run_seed(seed, train, test, test_x_binary, args)
        per_seed.append(result)
        print(
            f"seed {seed}: LL ours {result['ours']['test_log_likelihood']:.3f}, "
            f"plain {result['plain']['test_log_likelihood']:.3f}, "
            f"diff {result['diff_test_log_likelihood']:+.3f} "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    timing = time_steps(train, args)
    summary = summarize(per_seed)
    settings = VAE_PAIR.training
    results = {
        "command": command,
        "settings": {
            "seeds": args.seeds,
            "epochs": args.epochs,
            "batch_size": settings["batch_size"],
            "lr": settings["lr"],
            "transform": TRANSFORM,
            "objective": settings["objective"],
            "particles": args.particles,
            "architecture": dict(VAE_PAIR.options, hidden=list(VAE_PAIR.options["hidden"])),
            "quick": args.quick,
            "num_train": len(train),
            "num_test": len(test),
            "same_initial_weights": same_init,
        },
        "per_seed": per_seed,
        "summary": summary,
        "timing": timing,
        "environment": environment(args.threads),
        # other processes on the machine slow every timing; the 1-minute load averages
        # before and after the run tell whether it had the cores to itself
        "load_average_1min": {"start": load_before[0], "end": load_average()[0]},
    }
    results["wall_seconds"] = time.perf_counter() - started

    json_path, md_path = write_results(results, args.out, markdown_report(results))

    ms = timing["ms_per_step_median"]
    print(
        f"mean LL ours {summary['ours_test_log_likelihood']:.3f}, "
        f"plain {summary['plain_test_log_likelihood']:.3f}, "
        f"diff {summary['diff_test_log_likelihood']:+.3f} nats: "
        f"{'PASS' if summary['quality_pass'] else 'FAIL'} "
        f"(tolerance {QUALITY_TOLERANCE_NATS} nats)"
    )
    print(
        f"ms/step ours {ms['ours']:.2f}, pyro SVI {ms['pyro_svi']:.2f}, plain {ms['plain']:.2f}, "
        f"ratio ours/plain {timing['ratio_ours_over_plain']:.2f} "
        f"(median of per-round ratios {timing['ratio_over_plain_median_of_rounds']['ours']:.2f})"
    )
    print(f"wrote {json_path} and {md_path} ({results['wall_seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
