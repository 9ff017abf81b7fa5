"""Quality by seeds: pyro-aevb against a plain-PyTorch loop of the same architecture (issue 20).

For every case and seed, ``pyro_aevb.fit`` trains the library's pair and a plain loop
(``bench/plain_vae.py``, ``bench/plain_gmvae.py``) trains the same architecture from the
same initial weights on the same binarizations and minibatches (only the noise streams
differ); both are scored on the bundled MNIST subset's fixed binarized test split with
``K`` importance samples (nats per data point, higher is better). Cases:

* ``vae-elbo``: the default VAE with ``objective="elbo"`` (``Trace_ELBO``, Monte Carlo KL)
  against the plain loop's Monte Carlo ELBO (the same estimator);
* ``vae-meanfield``: the default VAE with ``objective="meanfield"`` (analytic KL) against
  the plain loop with the closed-form KL (the loop most people write, the issue's);
* ``iwae-5``: the default VAE with ``objective="iwae"``, ``K = 5``, against the plain
  IWAE-5 loss;
* ``gmvae``: the default GMVAE with its cluster enumerated (``TraceEnum_ELBO``) against the
  plain marginalizing estimator.

Runs are interleaved (seed 0: every case, ours then plain; then seed 1, ...) and
resumable: each finished run is one JSON under ``bench/results/quality/`` holding its
per-test-point log-likelihoods, and a rerun skips the runs it finds (with the same
settings). For each row the report gives the mean over seeds of ours − plain, its
standard error over seeds (the spread of training outcomes) and the paired standard error
over test points of the per-point differences averaged over seeds (the evaluation's own
noise). ``--report-only`` rewrites the report from the runs on disk.

Run from the repository root: ``nice -n 15 python -m bench.quality --epochs 20``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

import pyro_aevb
from bench import compare_gmvae, compare_vae, plain_gmvae, plain_vae
from bench.environment import environment
from bench.report import RESULTS_DIR, command_line, load_average, produced_by, warm_up_optimizers
from pyro_aevb.data import get_transform, load_mnist_subset, transform_test_set
from pyro_aevb.evaluation import prepare_fields
from pyro_aevb.pairs import GMVAE_PAIR, VAE_PAIR

#: case -> (pair, our objective, its particles, the plain loss, its particles)
CASES = {
    "vae-elbo": ("vae", "elbo", 1, "elbo", 1),
    "vae-meanfield": ("vae", "meanfield", 1, "analytic_kl", 1),
    "iwae-5": ("vae", "iwae", 5, "iwae", 5),
    "gmvae": ("gmvae", "enum", 1, "enum", 1),
}
RUN_DIR = RESULTS_DIR / "quality"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the VAE cases")
    parser.add_argument("--gmvae-epochs", type=int, default=None, help="default: --epochs")
    parser.add_argument("--particles", type=int, default=1000, help="test K of the VAE cases")
    parser.add_argument(
        "--gmvae-particles", type=int, default=100, help="test K of the GMVAE (x C passes)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--runs", default=str(RUN_DIR), help="folder of the per-run JSONs")
    parser.add_argument("--out", default=str(RESULTS_DIR / "quality"), help="report stem")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report")
    args = parser.parse_args(argv)
    if args.gmvae_epochs is None:
        args.gmvae_epochs = args.epochs
    return args


def run_settings(case: str, args) -> dict:
    """What a run's result depends on; a stored run is reused only if these match."""
    pair = CASES[case][0]
    return {
        "epochs": args.gmvae_epochs if pair == "gmvae" else args.epochs,
        "particles": args.gmvae_particles if pair == "gmvae" else args.particles,
        "threads": args.threads,
    }


def train_ours(case: str, seed: int, train, epochs: int):
    """``(model, guide, seconds)``: the library's pair trained by ``fit`` with the pair's
    settings (batch, lr, transform) and the case's objective, no per-epoch test pass."""
    pair_name, objective, particles = CASES[case][:3]
    pair = GMVAE_PAIR if pair_name == "gmvae" else VAE_PAIR
    build = compare_gmvae.build_ours if pair_name == "gmvae" else compare_vae.build_ours
    model, guide = build(train, seed)
    settings = pair.training
    result = pyro_aevb.fit(
        model,
        guide,
        train,
        None,
        transform=settings["transform"],
        objective=objective,
        num_particles=particles,
        epochs=epochs,
        batch_size=settings["batch_size"],
        lr=settings["lr"],
        seed=seed,
        progress=False,
    )
    return model, guide, result.train_seconds


def run_ours(case: str, seed: int, data: dict, settings: dict) -> dict:
    model, guide, seconds = train_ours(case, seed, data["train"], settings["epochs"])
    transform = VAE_PAIR.training["transform"]
    t0 = time.perf_counter()
    evaluation = pyro_aevb.evaluate(
        model, guide, data["test"], transform=transform, num_particles=settings["particles"]
    )
    estimate = evaluation.importance
    return {
        "log_likelihood": estimate.log_likelihood.double().tolist(),
        "elbo": estimate.elbo.double().tolist(),
        "train_seconds": seconds,
        "eval_seconds": time.perf_counter() - t0,
    }


def run_plain(case: str, seed: int, data: dict, settings: dict) -> dict:
    pair_name, _, _, loss, particles = CASES[case]
    train_x, test_x = data["train"].x, data["test_x_binary"]
    t0 = time.perf_counter()
    if pair_name == "gmvae":
        options, training = GMVAE_PAIR.options, GMVAE_PAIR.training
        trained = plain_gmvae.train_plain(
            train_x, settings["epochs"], training["batch_size"], training["lr"], seed,
            options["num_clusters"], options["z_dim"], options["hidden"],
        )  # fmt: skip
        train_seconds, t0 = trained.train_seconds, time.perf_counter()
        estimate = plain_gmvae.plain_importance_log_likelihood(
            trained.model, trained.encoder, test_x, K=settings["particles"]
        )
    else:
        options, training = VAE_PAIR.options, VAE_PAIR.training
        trained = plain_vae.train_plain(
            train_x, settings["epochs"], training["batch_size"], training["lr"], seed,
            options["z_dim"], options["hidden"], loss=loss, num_particles=particles,
        )  # fmt: skip
        train_seconds, t0 = trained.train_seconds, time.perf_counter()
        estimate = plain_vae.plain_importance_log_likelihood(
            trained.encoder, trained.decoder, test_x, K=settings["particles"]
        )
    return {
        "log_likelihood": estimate.log_likelihood.tolist(),
        "elbo": estimate.elbo.tolist(),
        "train_seconds": train_seconds,
        "eval_seconds": time.perf_counter() - t0,
    }


def run_path(runs: Path, case: str, impl: str, seed: int) -> Path:
    return runs / f"{case}-{impl}-seed{seed}.json"


def load_run(path: Path, settings: dict) -> dict | None:
    """The stored run at ``path`` if it exists and was made with ``settings``."""
    if not path.exists():
        return None
    run = json.loads(path.read_text())
    return run if run["settings"] == settings else None


def data_sets() -> dict:
    """The subset's train split and the test split, with the test binarization that
    ``evaluate`` draws (checked) for the plain estimators."""
    train, test = load_mnist_subset()
    train, test = train.flat(), test.flat()
    transform = VAE_PAIR.training["transform"]
    test_x_binary = transform_test_set(test.x, get_transform(transform), test.levels)
    if not torch.equal(prepare_fields(test, transform)["x"], test_x_binary):
        raise RuntimeError("pyro_aevb.evaluate would binarize the test set differently")
    return {"train": train, "test": test, "test_x_binary": test_x_binary}


def run_all(args, after_each=lambda: None) -> None:
    """Every missing run, in the interleaved order, each written when it finishes (then
    ``after_each()``: the report is rewritten, so an interrupted bench has one)."""
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    data = data_sets()
    for seed in args.seeds:
        for case in args.cases:
            settings = run_settings(case, args)
            for impl, runner in (("ours", run_ours), ("plain", run_plain)):
                path = run_path(runs, case, impl, seed)
                if load_run(path, settings) is not None:
                    continue
                t0 = time.perf_counter()
                result = runner(case, seed, data, settings)
                result.update(
                    case=case, impl=impl, seed=seed, settings=settings,
                    objective=CASES[case][1] if impl == "ours" else CASES[case][3],
                    environment=environment(args.threads), load_average_1min=load_average()[0],
                    wall_seconds=time.perf_counter() - t0,
                )  # fmt: skip
                path.write_text(json.dumps(result) + "\n")
                ll = statistics.fmean(result["log_likelihood"])
                print(
                    f"{case} {impl} seed {seed}: test LL {ll:.3f} ({result['wall_seconds']:.0f} s)",
                    flush=True,
                )
                after_each()


def compare(a_runs: list[dict], b_runs: list[dict]) -> dict:
    """Mean over seeds of ``a - b`` in test LL, its s.e. over seeds, and the paired s.e.
    over test points of the per-point difference averaged over the seeds."""
    per_seed = [
        statistics.fmean(a["log_likelihood"]) - statistics.fmean(b["log_likelihood"])
        for a, b in zip(a_runs, b_runs, strict=True)
    ]
    points = torch.tensor([a["log_likelihood"] for a in a_runs], dtype=torch.float64)
    points -= torch.tensor([b["log_likelihood"] for b in b_runs], dtype=torch.float64)
    per_point = points.mean(0)
    n = len(per_seed)
    return {
        "seeds": [a["seed"] for a in a_runs],
        "per_seed": per_seed,
        "mean": statistics.fmean(per_seed),
        "se_seeds": statistics.stdev(per_seed) / math.sqrt(n) if n > 1 else None,
        "se_points": float(per_point.std() / math.sqrt(per_point.numel())),
        "a_mean": statistics.fmean(statistics.fmean(a["log_likelihood"]) for a in a_runs),
        "b_mean": statistics.fmean(statistics.fmean(b["log_likelihood"]) for b in b_runs),
        "a_elbo": statistics.fmean(statistics.fmean(a["elbo"]) for a in a_runs),
        "b_elbo": statistics.fmean(statistics.fmean(b["elbo"]) for b in b_runs),
    }


def stored(args, case: str, impl: str) -> dict[int, dict]:
    settings = run_settings(case, args)
    found = {s: load_run(run_path(Path(args.runs), case, impl, s), settings) for s in args.seeds}
    return {s: r for s, r in found.items() if r is not None}


#: extra rows: (label, (case, impl) of a, (case, impl) of b)
CROSS = [
    ("ours `elbo` − plain analytic KL (the issue's gap)", ("vae-elbo", "ours"),
     ("vae-meanfield", "plain")),
    ("ours `meanfield` − ours `elbo`", ("vae-meanfield", "ours"), ("vae-elbo", "ours")),
    ("plain analytic KL − plain Monte Carlo KL", ("vae-meanfield", "plain"),
     ("vae-elbo", "plain")),
]  # fmt: skip


def comparisons(args) -> list[tuple[str, dict]]:
    """Each row's comparison over the seeds that both of its sides have finished."""
    pairs = [(case, (case, "ours"), (case, "plain")) for case in args.cases]
    pairs += [(label, a, b) for label, a, b in CROSS if a[0] in args.cases and b[0] in args.cases]
    rows = []
    for label, a, b in pairs:
        a_runs, b_runs = stored(args, *a), stored(args, *b)
        seeds = sorted(set(a_runs) & set(b_runs))
        if seeds:
            rows.append((label, compare([a_runs[s] for s in seeds], [b_runs[s] for s in seeds])))
    return rows


def _se(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def report(args, command: str) -> str:
    rows = comparisons(args)
    lines = [
        "# Quality by seeds: pyro-aevb against plain PyTorch",
        "",
        f"Bundled MNIST subset (4000 train / 1000 test, the fixed test binarization), "
        f"VAE cases {args.epochs} epochs and test K = {args.particles}, GMVAE "
        f"{args.gmvae_epochs} epochs and K = {args.gmvae_particles} (each sums the 10 "
        "clusters); batch 100, Adam 1e-3, dynamic binarization, identical initial weights and "
        "minibatches. Test log-likelihood in nats per digit; a − b averaged over seeds, "
        "± its s.e. over seeds, and the paired s.e. over the 1000 test points (of the "
        "per-point difference averaged over seeds). Target: a − b ≥ −1 s.e. (over seeds).",
        "",
        "| a − b | seeds | LL a | LL b | a − b | s.e. seeds | s.e. points | per seed | target |",
        "|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for label, c in rows:
        name = f"{label}: ours − plain" if label in CASES else label
        se = c["se_seeds"]
        verdict = "" if label not in CASES or se is None else (
            "**pass**" if c["mean"] >= -se else "**fail**")  # fmt: skip
        lines.append(
            f"| {name} | {','.join(map(str, c['seeds']))} | {c['a_mean']:.2f} | {c['b_mean']:.2f} "
            f"| {c['mean']:+.2f} | {_se(se)} | {c['se_points']:.2f} "
            f"| {' '.join(f'{d:+.2f}' for d in c['per_seed'])} | {verdict} |"
        )
    load = load_average()
    lines += [
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, 1-minute load average "
        f"{load[0]:.2f}; per-run JSONs (per-point LLs, seconds, environment) in `{args.runs}`.",
        "",
        *produced_by(command),
    ]
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    command = command_line("quality", argv)
    out = Path(f"{args.out}.md")
    out.parent.mkdir(parents=True, exist_ok=True)

    def write_report() -> None:
        out.write_text(report(args, command))

    if not args.report_only:
        warm_up_optimizers()
        run_all(args, write_report)
    write_report()
    print(out.read_text())


if __name__ == "__main__":
    main()
