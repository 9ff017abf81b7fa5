"""Quality and speed of pyro-aevb's Gaussian-mixture VAE against the same model and the same
marginalizing estimator in plain PyTorch.

For every seed, both implementations are trained with the library's default GMVAE
settings (``GMVAE_PAIR``: C = 10 clusters, z of 64, hidden layers of 512, batch 100,
Adam 1e-3, dynamic binarization) for the same number of epochs, from identical initial
weights and on the same binarizations and minibatch order:

* ours: ``pyro_aevb.fit(..., objective="enum")`` (``TraceEnum_ELBO`` sums the cluster
  out exactly, one ``z`` draw per cluster), then ``pyro_aevb.evaluate`` and
  ``pyro_aevb.clustering.cluster_metrics``;
* plain: ``bench/plain_gmvae.py`` (its own training loop, estimator and metrics).

Both are evaluated on the same binarized test set: the test ELBO and the importance-sampled
test log-likelihood (``K`` particles, each summing over the ``C`` clusters), and the
clustering accuracy (Hungarian matching), NMI and mean entropy of ``q(y | x)``.

The bars: ours matches or beats plain in test ELBO and clustering accuracy within
noise (mean difference ours - plain over the seeds no lower than ``-NOISE_SE`` standard
errors of that mean), and ours' training step is not slower than plain's (median of the
per-round ratios ours / plain <= 1).

Speed: the time of one training step on the same binarized batch, for the step
``pyro_aevb.fit`` takes (``pyro_aevb.TrainingStep``), for a stock ``pyro.infer.SVI`` step with
``TraceEnum_ELBO(max_plate_nesting=1)`` and for the plain step, timed in rounds that
rotate the order of the three; medians over rounds are reported.

Run ``python -m bench.compare_gmvae --quick`` (from the repository root) for a smoke run and
``python -m bench.compare_gmvae --dataset mnist-subset`` (or ``--dataset fashion-mnist``)
for the benchmark; see ``bench/README.md`` for the settings and their cost.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from pathlib import Path

import pyro
import pyro.optim
import torch

import pyro_aevb
from bench.environment import environment
from bench.library_step import library_step_runner
from bench.plain_gmvae import (
    build_plain_gmvae,
    make_train_step,
    plain_cluster_metrics,
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
from pyro_aevb.clustering import cluster_metrics
from pyro_aevb.data import (
    DEBIAN_FASHION_MNIST,
    get_transform,
    load_dataset,
    transform_test_set,
)
from pyro_aevb.evaluation import prepare_fields
from pyro_aevb.pairs import GMVAE_PAIR
from pyro_aevb.plate import full_data_size

TRANSFORM = GMVAE_PAIR.training["transform"]
#: ours "matches" plain when its mean difference (ours - plain) over the seeds is at
#: least -NOISE_SE standard errors of that mean difference
NOISE_SE = 2.0
#: the quality metrics compared (higher is better for all of them)
COMPARED = ("test_elbo", "test_log_likelihood", "cluster_accuracy", "cluster_nmi")
#: the metrics with a bar (the issue's "accuracy and ELBO")
BARRED = ("test_elbo", "cluster_accuracy")
#: per data set: name for load_dataset, label, default epochs, test points for the
#: ELBO and log-likelihood (None: all), and the stem of the results
DATASETS = {
    "mnist-subset": {
        "label": "MNIST subset (4000 train / 1000 test)",
        "epochs": 20,
        "eval_points": None,
        "stem": "bench/results/gmvae_vs_pytorch_subset",
    },
    "fashion-mnist": {
        "label": "Fashion-MNIST (60000 train / 10000 test)",
        "epochs": 1,
        "eval_points": 1000,
        "stem": "bench/results/gmvae_vs_pytorch_fashion",
    },
}
#: settings of ``--quick``: enough to exercise every code path, not to measure anything
QUICK = {
    "seeds": [0],
    "epochs": 1,
    "particles": 4,
    "eval_points": 200,
    "train_points": 1000,
    "warmup": 2,
    "timing_steps": 3,
    "rounds": 2,
}
#: per-step time variants, in the order of the first timing round


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="mnist-subset")
    parser.add_argument(
        "--data-dir",
        help="folder of the Fashion-MNIST IDX files (default: where pyro_aevb.data looks, "
        f"{DEBIAN_FASHION_MNIST} first)",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=None, help="default: per data set")
    parser.add_argument(
        "--particles",
        type=int,
        default=20,
        help="importance samples K per test point (each sums over the C clusters)",
    )
    parser.add_argument(
        "--eval-points",
        type=int,
        default=None,
        help="test points (a fixed seeded subset) for the ELBO and log-likelihood; the "
        "clustering metrics always use the whole test set (default: per data set)",
    )
    parser.add_argument(
        "--train-points",
        type=int,
        default=None,
        help="train on a fixed seeded subset of this many points (default: all)",
    )
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps per variant")
    parser.add_argument("--timing-steps", type=int, default=20, help="timed steps per round")
    parser.add_argument(
        "--rounds", type=int, default=10, help="timing rounds (median taken); 0 skips timing"
    )
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke run")
    parser.add_argument(
        "--timing-only",
        action="store_true",
        help="only the per-step timing (default output bench/results/gmvae_vs_pytorch_timing_tN "
        "for N threads)",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output stem; writes STEM.json and STEM.md (default per data set, "
        "bench/results/gmvae_vs_pytorch_{subset,fashion}, with _quick appended for --quick)",
    )
    args = parser.parse_args(argv)
    spec = DATASETS[args.dataset]
    if args.quick:
        # --quick overrides only what the user left at its default
        for name, value in QUICK.items():
            if getattr(args, name) == parser.get_default(name):
                setattr(args, name, value)
    if args.epochs is None:
        args.epochs = spec["epochs"]
    if args.eval_points is None:
        args.eval_points = spec["eval_points"]
    if args.timing_only and args.rounds < 1:
        parser.error("--timing-only needs --rounds >= 1")
    if args.out is None:
        stem = (
            f"bench/results/gmvae_vs_pytorch_timing_t{args.threads}"
            if args.timing_only
            else spec["stem"]
        )
        args.out = stem + ("_quick" if args.quick else "")
    return args


def pair_options() -> dict:
    options = dict(GMVAE_PAIR.options)
    options["likelihood"] = options["likelihood"] or get_transform(TRANSFORM).likelihood
    return options


def build_ours(train, seed: int):
    """The library's GMVAE pair built by ``GMVAE_PAIR.build``, initialized from ``seed``."""
    torch.manual_seed(seed)
    return GMVAE_PAIR.build(train, **pair_options())


def build_plain(x_dim: int, seed: int):
    """The plain ``(model, encoder)`` with the pair's sizes, seeded as ours."""
    options = GMVAE_PAIR.options
    torch.manual_seed(seed)
    return build_plain_gmvae(x_dim, options["num_clusters"], options["z_dim"], options["hidden"])


def same_initial_weights(train, seed: int) -> bool:
    """Whether ours and plain start from identical weights under the same seed: the same
    parameter names (model, then guide), shapes and values."""
    model, guide = build_ours(train, seed)
    plain_model, encoder = build_plain(train.num_features, seed)
    ours = [*model.state_dict().items(), *guide.state_dict().items()]
    plain = [*plain_model.state_dict().items(), *encoder.state_dict().items()]
    return len(ours) == len(plain) and all(
        a == b and x.shape == y.shape and torch.equal(x, y)
        for (a, x), (b, y) in zip(ours, plain, strict=True)
    )


def seeded_subset(dataset, n: int | None, seed: int = 0):
    """A fixed subset of ``n`` points (sorted indices of a seeded permutation), or all."""
    if n is None or n >= len(dataset):
        return dataset
    perm = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return dataset.subset(perm[:n].sort().values)


def run_seed(seed: int, train, test, eval_set, binary: dict, args) -> dict:
    """Train and evaluate both implementations for one seed; ELBO and LL in nats per point."""
    settings = GMVAE_PAIR.training
    options = GMVAE_PAIR.options

    model, guide = build_ours(train, seed)
    fit_result = pyro_aevb.fit(
        model,
        guide,
        train,
        None,  # no per-epoch test pass: both train for the same steps and nothing else
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
        model, guide, eval_set, transform=TRANSFORM, num_particles=args.particles
    )
    clustering = cluster_metrics(guide, prepare_fields(test, TRANSFORM))
    ours_eval_seconds = time.perf_counter() - t0
    metrics = evaluation.metrics()
    ours = {
        # the ELBO from the same K draws as the log-likelihood: the estimator plain reports
        "test_elbo": float(evaluation.importance.elbo.mean()),
        # what pyro_aevb.evaluate reports as test_elbo: one fresh draw per point and cluster
        "test_elbo_1_sample": metrics["test_elbo"],
        "test_log_likelihood": metrics["test_log_likelihood"],
        "test_log_likelihood_se": metrics["test_log_likelihood_se"],
        "ess_mean": metrics["ess_mean"],
        **clustering,
        "final_train_loss": -fit_result.history[-1]["train_elbo"] if fit_result.history else None,
        "train_loss_per_epoch": [-row["train_elbo"] for row in fit_result.history],
        "train_seconds": fit_result.train_seconds,
        "seconds_per_epoch": fit_result.train_seconds / max(1, args.epochs),
        "eval_seconds": ours_eval_seconds,
    }

    plain_result = train_plain(
        train.x,
        epochs=args.epochs,
        batch_size=settings["batch_size"],
        lr=settings["lr"],
        seed=seed,
        num_clusters=options["num_clusters"],
        z_dim=options["z_dim"],
        hidden=options["hidden"],
    )
    t0 = time.perf_counter()
    estimate = plain_importance_log_likelihood(
        plain_result.model, plain_result.encoder, binary["eval"], K=args.particles
    )
    plain_clustering = plain_cluster_metrics(plain_result.encoder, binary["test"], test.y)
    plain_eval_seconds = time.perf_counter() - t0
    n_eval = estimate.log_likelihood.numel()
    plain = {
        "test_elbo": float(estimate.elbo.mean()),
        "test_log_likelihood": float(estimate.log_likelihood.mean()),
        "test_log_likelihood_se": float(estimate.log_likelihood.std() / math.sqrt(n_eval)),
        **plain_clustering,
        "final_train_loss": plain_result.train_loss[-1] if plain_result.train_loss else None,
        "train_loss_per_epoch": plain_result.train_loss,
        "train_seconds": plain_result.train_seconds,
        "seconds_per_epoch": plain_result.train_seconds / max(1, args.epochs),
        "eval_seconds": plain_eval_seconds,
    }
    return {
        "seed": seed,
        "ours": ours,
        "plain": plain,
        **{f"diff_{key}": ours[key] - plain[key] for key in COMPARED},
    }


def time_steps(train, args) -> dict:
    """Per-step training time (ms) of ours, a stock Pyro SVI step and plain, same batch."""
    settings = GMVAE_PAIR.training
    batch_size, lr = settings["batch_size"], settings["lr"]
    n_train, x_dim = train.x.shape
    generator = torch.Generator().manual_seed(0)
    x_batch = torch.bernoulli(train.x[:batch_size], generator=generator)
    store = pyro.get_param_store()

    # ours: the step pyro_aevb.fit takes, set up as fit sets it up (bench/library_step.py):
    # the plate count from the contract check, the 1/N scale, the KL-weight messenger
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

    # stock Pyro: SVI.step with TraceEnum_ELBO and the same optimizer, no finiteness check
    svi_model, svi_guide = build_ours(train, 0)
    svi = pyro.infer.SVI(
        svi_model,
        svi_guide,
        pyro.optim.Adam({"lr": lr}),
        pyro.infer.TraceEnum_ELBO(max_plate_nesting=1),
    )
    svi_scope: dict = {"params": {}, "constraints": {}}

    def svi_steps(n: int) -> None:
        with store.scope(svi_scope), full_data_size(n_train):
            for _ in range(n):
                svi.step(x=x_batch)

    # plain PyTorch
    plain_model, encoder = build_plain(x_dim, 0)
    plain_optimizer = torch.optim.Adam([*plain_model.parameters(), *encoder.parameters()], lr=lr)
    plain_step = make_train_step(plain_model, encoder, plain_optimizer)

    def plain_steps(n: int) -> None:
        for _ in range(n):
            plain_step(x_batch)

    runners = {"ours": ours_steps, "pyro_svi": svi_steps, "plain": plain_steps}
    timing = time_step_variants(runners, args.warmup, args.rounds, args.timing_steps)
    per_round, paired = timing["ms_per_step_per_round"], timing["ratio_over_plain_median_of_rounds"]
    return {
        **timing,
        "ours_per_round_ratio_max": max(
            a / b for a, b in zip(per_round["ours"], per_round["plain"], strict=True)
        ),
        "speed_pass": paired["ours"] <= 1.0,
        "ours_step": "pyro_aevb.TrainingStep as fit builds it (check_pair on the batch, "
        "TraceEnum_ELBO.differentiable_loss scaled by 1/N, one torch Adam over the pair's "
        "parameters, the non-finite guard; validation on for the first step only), inside a "
        "param-store scope",
        "pyro_svi_step": "pyro.infer.SVI.step with TraceEnum_ELBO(max_plate_nesting=1) and "
        "pyro.optim.Adam",
        "plain_step": "zero_grad, forward over all C clusters at once, -mean enumerated ELBO, "
        "backward, torch.optim.Adam.step",
        "batch_size": batch_size,
        "full_data_size": n_train,
        "warmup_steps": args.warmup,
        "timed_steps_per_round": args.timing_steps,
        "rounds": args.rounds,
    }


def summarize(per_seed: list[dict]) -> dict:
    n = len(per_seed)
    out: dict = {"num_seeds": n, "noise_se": NOISE_SE}
    for role in ("ours", "plain"):
        for key in (*COMPARED, "cluster_entropy", "seconds_per_epoch", "train_seconds"):
            out[f"{role}_{key}"] = sum(s[role][key] for s in per_seed) / n
    for key in COMPARED:
        diffs = [s[f"diff_{key}"] for s in per_seed]
        mean = sum(diffs) / n
        se = statistics.stdev(diffs) / math.sqrt(n) if n > 1 else None
        out[f"diff_{key}"] = mean
        out[f"diff_{key}_se"] = se
        # "matches or beats within noise": not lower than NOISE_SE standard errors
        out[f"{key}_pass"] = mean >= -NOISE_SE * se if se is not None else mean >= 0
    out["quality_pass"] = all(out[f"{key}_pass"] for key in BARRED)
    return out


def _fmt_diff(mean: float, se: float | None, digits: int) -> str:
    text = f"{mean:+.{digits}f}"
    return text + (f" ± {se:.{digits}f}" if se is not None else "")


def markdown_report(results: dict) -> str:
    env, load = results["environment"], results["load_average_1min"]
    t = results.get("timing")
    lines = ["# pyro-aevb GMVAE vs plain PyTorch", ""]
    if results["per_seed"]:
        lines += quality_lines(results)
    if t is not None:
        lines += timing_lines(t, env)
    lines += [
        environment_line(
            env, load["start"], load["end"], f"; {results['wall_seconds'] / 60:.1f} min in all"
        ),
        "",
        *produced_by(results["command"]),
    ]
    return "\n".join(lines)


def _verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def quality_lines(results: dict) -> list[str]:
    s, cfg = results["summary"], results["settings"]
    verdict = _verdict
    eval_note = (
        f"the ELBO and log-likelihood on a fixed subset of {cfg['num_eval']} test points, "
        "the clustering metrics on the whole test set"
        if cfg["num_eval"] < cfg["num_test"]
        else "all metrics on the whole test set"
    )
    subset_note = f" (training on a subset of {cfg['num_train']})" if cfg["train_subset"] else ""
    lines = [
        f"{cfg['dataset_label']}{subset_note}, "
        f"C = {cfg['architecture']['num_clusters']}, z {cfg['architecture']['z_dim']}, "
        f"hidden {tuple(cfg['architecture']['hidden'])}, dynamic binarization, "
        f"{cfg['epochs']} epochs ({cfg['steps_per_epoch']} steps each), batch "
        f"{cfg['batch_size']}, Adam lr {cfg['lr']}; clusters summed out exactly (ours: "
        f"`TraceEnum_ELBO`). Test ELBO and log-likelihood with K = {cfg['particles']} "
        f"particles (each summing over the clusters), nats per data point; {eval_note}. "
        f"Higher is better everywhere but entropy. Identical initial weights: "
        f"{cfg['same_initial_weights']}.",
        "",
        "| seed | impl | test ELBO | test LL | accuracy | NMI | entropy | s/epoch |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["per_seed"]:
        for role in ("ours", "plain"):
            m = r[role]
            lines.append(
                f"| {r['seed']} | {role} | {m['test_elbo']:.2f} | {m['test_log_likelihood']:.2f} "
                f"| {m['cluster_accuracy']:.3f} | {m['cluster_nmi']:.3f} "
                f"| {m['cluster_entropy']:.3f} | {m['seconds_per_epoch']:.1f} |"
            )
    for role in ("ours", "plain"):
        lines.append(
            f"| **mean** | {role} | {s[f'{role}_test_elbo']:.2f} "
            f"| {s[f'{role}_test_log_likelihood']:.2f} | {s[f'{role}_cluster_accuracy']:.3f} "
            f"| {s[f'{role}_cluster_nmi']:.3f} | {s[f'{role}_cluster_entropy']:.3f} "
            f"| {s[f'{role}_seconds_per_epoch']:.1f} |"
        )
    lines += [
        "",
        f"Ours - plain, mean over {s['num_seeds']} seeds ± its standard error "
        f"(a bar passes when the mean difference is >= -{s['noise_se']:g} s.e.):",
        "",
        "| metric | per seed | mean ± s.e. | bar |",
        "|---|---|---:|---|",
    ]
    digits = {"test_elbo": 2, "test_log_likelihood": 2, "cluster_accuracy": 3, "cluster_nmi": 3}
    for key in COMPARED:
        per_seed = ", ".join(f"{r[f'diff_{key}']:+.{digits[key]}f}" for r in results["per_seed"])
        ok = verdict(s[f"{key}_pass"])
        bar = f"**{ok}**" if key in BARRED else f"({ok}, no bar)"
        diff = _fmt_diff(s[f"diff_{key}"], s[f"diff_{key}_se"], digits[key])
        lines.append(f"| {key} | {per_seed} | {diff} | {bar} |")
    lines += [
        "",
        f"Quality bar (test ELBO and accuracy): **{verdict(s['quality_pass'])}**.",
        "",
        f"Training wall time per epoch (mean over seeds): ours {s['ours_seconds_per_epoch']:.1f} s "
        f"(steps only), plain {s['plain_seconds_per_epoch']:.1f} s.",
        "",
    ]
    return lines


def timing_lines(t: dict, env: dict) -> list[str]:
    lines = [
        f"Training step, same batch of {t['batch_size']}, CPU, {env['torch_threads']} "
        f"threads (median of {t['rounds']} rounds x {t['timed_steps_per_round']} steps, "
        f"after {t['warmup_steps']} warm-up steps each):",
        "",
        "| step | ms/step | ratio to plain | ratio to plain, median of per-round ratios |",
        "|---|---:|---:|---:|",
    ]
    ms, paired = t["ms_per_step_median"], t["ratio_over_plain_median_of_rounds"]
    for name, label in (
        ("ours", "ours (`pyro_aevb.TrainingStep`, `TraceEnum_ELBO`)"),
        ("pyro_svi", "stock `pyro.infer.SVI.step`, `TraceEnum_ELBO`"),
        ("plain", "plain PyTorch"),
    ):
        lines.append(
            f"| {label} | {ms[name]:.1f} | {ms[name] / ms['plain']:.2f} "
            f"| {paired.get(name, 1.0):.2f} |"
        )
    lines += [
        "",
        f"Speed bar (ours' median per-round ratio <= 1): **{_verdict(t['speed_pass'])}**.",
        "",
    ]
    return lines


def write(results: dict, out: str) -> tuple[Path, Path]:
    return write_results(results, out, markdown_report(results))


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    command = command_line("compare_gmvae", argv)
    load_before = load_average()
    warm_up_optimizers()

    spec = DATASETS[args.dataset]
    train, test = load_dataset(args.dataset, data_dir=args.data_dir)
    train, test = train.flat(), test.flat()
    num_train_full = len(train)
    train = seeded_subset(train, args.train_points)
    eval_set = seeded_subset(test, args.eval_points)
    # The test sets binarized once with the library's fixed test seed, for plain; ours
    # binarizes inside evaluate() and cluster_metrics' prepare_fields. Check that both
    # see the same bits.
    binary = {
        "eval": transform_test_set(eval_set.x, get_transform(TRANSFORM), eval_set.levels),
        "test": transform_test_set(test.x, get_transform(TRANSFORM), test.levels),
    }
    for data, bits in ((eval_set, binary["eval"]), (test, binary["test"])):
        if not torch.equal(prepare_fields(data, TRANSFORM)["x"], bits):
            raise RuntimeError("pyro_aevb.evaluate would binarize the test set differently")
    same_init = same_initial_weights(train, args.seeds[0])
    settings = GMVAE_PAIR.training
    options = GMVAE_PAIR.options
    results = {
        "command": command,
        "settings": {
            "dataset": args.dataset,
            "dataset_label": spec["label"],
            "seeds": args.seeds,
            "epochs": args.epochs,
            "steps_per_epoch": math.ceil(len(train) / settings["batch_size"]),
            "batch_size": settings["batch_size"],
            "lr": settings["lr"],
            "transform": TRANSFORM,
            "objective": settings["objective"],
            "particles": args.particles,
            "architecture": dict(options, hidden=list(options["hidden"])),
            "quick": args.quick,
            "num_train": len(train),
            "train_subset": len(train) < num_train_full,
            "num_test": len(test),
            "num_eval": len(eval_set),
            "same_initial_weights": same_init,
            "guide_site_enumerated": "y (parallel, one z per cluster)",
        },
        "per_seed": [],
        "environment": environment(args.threads),
        "load_average_1min": {"start": load_before[0], "end": None},
        "complete": False,
    }
    print(
        f"{args.dataset}: timing only, {args.threads} threads"
        if args.timing_only
        else f"{args.dataset}: {len(train)} train, {len(test)} test ({len(eval_set)} for "
        f"ELBO/LL), {args.epochs} epochs, K = {args.particles}",
        f"; same initial weights: {same_init}",
        sep="",
        flush=True,
    )

    for seed in [] if args.timing_only else args.seeds:
        t0 = time.perf_counter()
        result = run_seed(seed, train, test, eval_set, binary, args)
        results["per_seed"].append(result)
        o, p = result["ours"], result["plain"]
        print(
            f"seed {seed}: ELBO ours {o['test_elbo']:.2f} plain {p['test_elbo']:.2f}; "
            f"LL ours {o['test_log_likelihood']:.2f} plain {p['test_log_likelihood']:.2f}; "
            f"acc ours {o['cluster_accuracy']:.3f} plain {p['cluster_accuracy']:.3f}; "
            f"s/epoch ours {o['seconds_per_epoch']:.1f} plain {p['seconds_per_epoch']:.1f} "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
        # a partial result survives an interrupted run
        results["summary"] = summarize(results["per_seed"])
        results["load_average_1min"]["end"] = load_average()[0]
        results["wall_seconds"] = time.perf_counter() - started
        write(results, args.out)

    if args.rounds > 0:
        t0 = time.perf_counter()
        results["timing"] = time_steps(train, args)
        ms = results["timing"]["ms_per_step_median"]
        print(
            f"ms/step ours {ms['ours']:.1f}, pyro SVI {ms['pyro_svi']:.1f}, "
            f"plain {ms['plain']:.1f}; median per-round ratio ours/plain "
            f"{results['timing']['ratio_over_plain_median_of_rounds']['ours']:.3f} "
            f"({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    results["complete"] = True
    results["load_average_1min"]["end"] = load_average()[0]
    results["wall_seconds"] = time.perf_counter() - started
    json_path, md_path = write(results, args.out)
    s = results.get("summary", {})
    for key in COMPARED if s else ():
        print(
            f"{key}: ours - plain {_fmt_diff(s[f'diff_{key}'], s[f'diff_{key}_se'], 3)} "
            f"({'PASS' if s[f'{key}_pass'] else 'FAIL'}{'' if key in BARRED else ', no bar'})"
        )
    print(f"wrote {json_path} and {md_path} ({results['wall_seconds']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
