"""Training objectives compared on one VAE: ELBO, mean-field ELBO, IWAE, DReG, MIWAE, PIWAE, CIWAE.

The references' architecture (Burda et al., 2016; Rainforth et al., 2018): a VAE
(``pyro_aevb.models.VAE``, Bernoulli likelihood) with a ``DiagonalNormalGuide``
guide, 784-200-200-50, dynamically binarized data, batch 100, Adam. Every
objective setting trains the same initial weights (same seed) for the same number
of epochs, then is evaluated on the test set:

* test log-likelihood ``log (1/K) sum_k w_k`` with ``K = 5000`` importance samples
  (``pyro_aevb.evaluate``), and the test ELBO ``(1/K) sum_k log w_k`` from the same
  draws, nats per data point with standard errors over test points;
* the effective sample size and the PSIS k-hat of those weights;
* active latent units (Burda et al., 2016): units ``u`` whose guide mean
  ``E_q(z|x)[z_u]`` varies over the test set with variance above 0.01;
* seconds per training epoch (training steps only).

Pairs of settings whose order the references report (IWAE-50 above IWAE-5 above the
ELBO, PIWAE above MIWAE above CIWAE above the VAE) are compared point by point on
the same test points; the report gives each difference with its paired standard
error over test points (which leaves out the run-to-run spread of training).

``python -m bench.compare_objectives --quick`` is a smoke run that also measures the
seconds per epoch of every setting; ``--epochs N`` sets the real run. Results are
written after every setting, so an interrupted run keeps what it finished and
``--resume`` completes it.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import pyro
import torch
from pyro_aevb.guides import DiagonalNormalGuide
from pyro_aevb.models import VAE

import pyro_aevb
from bench.environment import environment
from bench.report import (
    RESULTS_DIR,
    command_line,
    environment_line,
    load_average,
    produced_by,
    result_paths,
    write_results,
)
from pyro_aevb.data import DEBIAN_FASHION_MNIST, load_dataset
from pyro_aevb.evaluation import prepare_fields

#: label -> (objective name, num_particles K, objective options)
SETTINGS: dict[str, tuple[str, int, dict]] = {
    "elbo": ("elbo", 1, {}),
    "meanfield": ("meanfield", 1, {}),
    "iwae-5": ("iwae", 5, {}),
    "iwae-50": ("iwae", 50, {}),
    "dreg-5": ("dreg", 5, {}),
    "dreg-50": ("dreg", 50, {}),
    "miwae-8x8": ("miwae", 8, {"num_estimates": 8}),
    "piwae-8x8": ("piwae", 8, {"num_estimates": 8}),
    # Rainforth et al.'s CIWAE mixes the ELBO and IWAE-64 on the same 64 draws
    "ciwae-0.5": ("ciwae", 64, {"beta": 0.5}),
    # the references' "VAE 64": the ELBO averaged over 64 samples per point (optional)
    "elbo-64": ("elbo", 64, {}),
}
DEFAULT_SETTINGS = [label for label in SETTINGS if label != "elbo-64"]

#: test log p(x) on full dynamically binarized MNIST, 784-200-200-50, 3280 epochs
REFERENCES = {
    "elbo": "-86.76 (Burda, VAE k=1)",
    "elbo-64": "-86.21 (Rainforth, VAE 64)",
    "iwae-5": "-85.54 (Burda, IWAE 5)",
    "iwae-50": "-84.78 (Burda, IWAE 50); -84.52 (Rainforth, IWAE 64)",
    "miwae-8x8": "-84.97 (Rainforth, MIWAE 8x8)",
    "piwae-8x8": "-84.46 (Rainforth, PIWAE 8x8)",
    "ciwae-0.5": "-85.24 (Rainforth, CIWAE 0.5)",
}

#: (better, worse, the references' numbers): orders the references report
ORDER_CHECKS = [
    ("iwae-50", "iwae-5", "Burda: -84.78 vs -85.54"),
    ("iwae-5", "elbo", "Burda: -85.54 vs -86.76"),
    ("iwae-50", "elbo", "Burda: -84.78 vs -86.76"),
    ("dreg-50", "dreg-5", "DReG tightens with K like IWAE (Tucker et al.)"),
    ("dreg-5", "elbo", "as IWAE 5 vs VAE"),
    ("piwae-8x8", "miwae-8x8", "Rainforth: -84.46 vs -84.97"),
    ("miwae-8x8", "ciwae-0.5", "Rainforth: -84.97 vs -85.24"),
    ("ciwae-0.5", "elbo", "Rainforth: -85.24 vs -86.21 (VAE 64)"),
    ("piwae-8x8", "elbo", "Rainforth: -84.46 vs -86.21 (VAE 64)"),
    ("piwae-8x8", "iwae-50", "Rainforth: -84.46 vs -84.52 (IWAE 64): a tie"),
    ("elbo-64", "elbo", "Burda: -86.35 (VAE k=50) vs -86.76 (k=1)"),
    # against the ELBO with as many samples per step (Rainforth's VAE baseline)
    ("iwae-50", "elbo-64", "Rainforth: -84.52 (IWAE 64) vs -86.21 (VAE 64)"),
    ("piwae-8x8", "elbo-64", "Rainforth: -84.46 vs -86.21"),
    ("miwae-8x8", "elbo-64", "Rainforth: -84.97 vs -86.21"),
    ("ciwae-0.5", "elbo-64", "Rainforth: -85.24 vs -86.21"),
]

#: variance over the test set of a unit's guide mean above which the unit is active
ACTIVE_UNIT_THRESHOLD = 0.01
QUICK = {"epochs": 1, "eval_points": 100}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset", default="mnist-subset", choices=["mnist-subset", "fashion-mnist", "mnist"]
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help=f"IDX folder (default: where pyro_aevb.data looks, {DEBIAN_FASHION_MNIST} first)",
    )
    parser.add_argument(
        "--max-train",
        type=int,
        default=None,
        help="train on a fixed random subset of this many points",
    )
    parser.add_argument(
        "--max-test",
        type=int,
        default=None,
        help="use a fixed random subset of this many test points throughout",
    )
    parser.add_argument(
        "--eval-points",
        type=int,
        default=None,
        help="test points for the K-sample log-likelihood (the first ones of "
        "the test set; default all); active units use the whole test set",
    )
    parser.add_argument(
        "--settings",
        nargs="+",
        default=DEFAULT_SETTINGS,
        choices=list(SETTINGS),
        help="objective settings to train",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--epochs", type=int, default=None, help="epochs for every setting")
    parser.add_argument(
        "--particles",
        type=int,
        default=5000,
        help="importance samples K per test point for the log-likelihood",
    )
    parser.add_argument("--z-dim", type=int, default=50)
    parser.add_argument("--hidden", type=int, nargs="+", default=[200, 200])
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help='"cpu" or "cuda[:N]", passed to fit')
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 epoch, 100 test points at K: a smoke run that times every setting",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="keep the runs already in STEM.json (same settings) and do the rest",
    )
    parser.add_argument(
        "--out",
        default=None,
        help="output stem, writes STEM.json and STEM.md (default "
        "bench/results/objectives_DATASET, +_quick with --quick)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        for name, value in QUICK.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
    if args.epochs is None:
        parser.error("give --epochs (or --quick)")
    if args.out is None:
        results_dir = RESULTS_DIR
        stem = {"mnist-subset": "subset"}.get(args.dataset, args.dataset.replace("-", "_"))
        args.out = str(results_dir / f"objectives_{stem}")
        if args.max_train is not None:
            args.out += f"_{args.max_train}"
        args.out += "_quick" if args.quick else ""
    return args


def load_data(args):
    """``(train, test)`` flattened, cut to ``--max-train`` / ``--max-test`` by a fixed draw."""
    train, test = load_dataset(args.dataset, data_dir=args.data_dir)
    train, test = train.flat(), test.flat()
    generator = torch.Generator().manual_seed(12345)
    if args.max_train is not None and args.max_train < len(train):
        train = train.subset(torch.randperm(len(train), generator=generator)[: args.max_train])
    if args.max_test is not None and args.max_test < len(test):
        test = test.subset(torch.randperm(len(test), generator=generator)[: args.max_test])
    return train, test


def build_pair(seed: int, args):
    """Model then guide under ``pyro.set_rng_seed(seed)``: every setting starts alike."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    model = VAE(784, args.z_dim, tuple(args.hidden))
    guide = DiagonalNormalGuide(784, args.z_dim, tuple(args.hidden))
    return model, guide


@torch.no_grad()
def active_units(guide, test_x: torch.Tensor) -> tuple[int, list[float]]:
    """Burda et al.'s count: units whose guide mean varies over ``test_x`` by > 0.01."""
    was_training = guide.training
    guide.eval()
    device = next(guide.parameters()).device
    loc = torch.cat([guide.encode(x.to(device))[0].cpu() for x in test_x.split(500)])
    guide.train(was_training)
    variance = loc.double().var(0)
    return int((variance > ACTIVE_UNIT_THRESHOLD).sum()), variance.tolist()


def run_setting(label: str, seed: int, train, test, eval_test, au_x, args) -> dict:
    objective, k, options = SETTINGS[label]
    model, guide = build_pair(seed, args)
    t0 = time.perf_counter()
    fit_result = pyro_aevb.fit(
        model,
        guide,
        train,
        test,
        transform="dynamic",
        objective=objective,
        num_particles=k,
        objective_options=options,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=seed,
        device=args.device,
        progress=False,
    )
    fit_wall = time.perf_counter() - t0
    t0 = time.perf_counter()
    evaluation = pyro_aevb.evaluate(
        model, guide, eval_test, transform="dynamic", num_particles=args.particles, seed=seed
    )
    eval_seconds = time.perf_counter() - t0
    metrics = evaluation.metrics()
    ll = evaluation.importance.log_likelihood.double()
    elbo_k = evaluation.importance.elbo.double()
    n = ll.numel()
    n_active, unit_variance = active_units(guide, au_x)
    epoch_seconds = [row["train_seconds"] for row in fit_result.history if "train_seconds" in row]
    epochs_done = fit_result.epochs_completed
    return {
        "label": label,
        "seed": seed,
        "objective": objective,
        "num_particles": k,
        "objective_options": options,
        "test_log_likelihood": float(ll.mean()),
        "test_log_likelihood_se": float(ll.std() / math.sqrt(n)),
        # the ELBO from the same K draws: (1/K) sum_k log w_k, averaged over points
        "test_elbo": float(elbo_k.mean()),
        "test_elbo_se": float(elbo_k.std() / math.sqrt(n)),
        # what pyro_aevb.evaluate reports as test_elbo: one fresh draw per point
        "test_elbo_1_sample": metrics["test_elbo"],
        "ess_mean": metrics["ess_mean"],
        "pareto_k_mean": metrics.get("pareto_k_mean"),
        "pareto_k_fraction_above_0.7": metrics.get("pareto_k_fraction_above_0.7"),
        "log_likelihood_particles": args.particles,
        "num_eval_points": n,
        "active_units": n_active,
        "unit_mean_variance": [round(v, 5) for v in unit_variance],
        "epochs_completed": epochs_done,
        "train_seconds": fit_result.train_seconds,
        "seconds_per_epoch": fit_result.train_seconds / max(epochs_done, 1),
        "seconds_per_epoch_median": sorted(epoch_seconds)[len(epoch_seconds) // 2]
        if epoch_seconds
        else None,
        "fit_wall_seconds": fit_wall,
        "eval_seconds": eval_seconds,
        "history_test_elbo": [row.get("test_elbo") for row in fit_result.history],
        "history_train_loss": [-row["train_elbo"] for row in fit_result.history],
        "test_log_likelihood_per_point": [round(v, 4) for v in ll.tolist()],
    }


def order_checks(runs: list[dict]) -> list[dict]:
    """Each reference order between two trained settings: the difference of their test
    log-likelihoods (mean over seeds of the per-point values) and its paired s.e."""
    per_point: dict[str, torch.Tensor] = {}
    for label in SETTINGS:
        values = [r["test_log_likelihood_per_point"] for r in runs if r["label"] == label]
        if values:
            per_point[label] = torch.tensor(values, dtype=torch.float64).mean(0)
    out = []
    for better, worse, reference in ORDER_CHECKS:
        if better not in per_point or worse not in per_point:
            continue
        diff = per_point[better] - per_point[worse]
        mean, se = float(diff.mean()), float(diff.std() / math.sqrt(diff.numel()))
        tie = "a tie" in reference
        out.append(
            {
                "better": better,
                "worse": worse,
                "reference": reference,
                "difference": mean,
                "paired_se": se,
                # for a tie in the references: whether ours is within 2 paired s.e. of 0
                "agrees": abs(mean) < 2 * se if tie else mean > 0,
                "beyond_2_se": abs(mean) > 2 * se,
            }
        )
    return out


def markdown_report(results: dict) -> str:
    cfg, env = results["settings"], results["environment"]
    n_eval = results["runs"][0]["num_eval_points"] if results["runs"] else None
    reduced = [
        f"{cfg['max_train']} train points" if cfg["max_train"] is not None else None,
        f"{cfg['max_test']} test points" if cfg["max_test"] is not None else None,
        f"LL on {n_eval} of {cfg['num_test']} test points"
        if n_eval is not None and n_eval < cfg["num_test"]
        else None,
    ]
    reduced = [r for r in reduced if r]
    data = cfg["dataset"] + (f" (reduced: {', '.join(reduced)})" if reduced else "")
    # the references' numbers are for MNIST: shown next to MNIST runs only
    mnist = cfg["dataset"] in ("mnist", "mnist-subset")
    lines = [
        f"# Training objectives on a VAE: {data}",
        "",
        f"{cfg['dataset']}: {cfg['num_train']} train / {cfg['num_test']} test points"
        f"{'' if cfg['max_train'] is None else ' (random subset of the train set)'}, "
        f"dynamic binarization; VAE 784-{'-'.join(map(str, cfg['hidden']))}-{cfg['z_dim']} "
        f"(Bernoulli decoder, diagonal Normal encoder), {cfg['epochs']} "
        f"epoch{'s' if cfg['epochs'] != 1 else ''} for every "
        f"setting, batch {cfg['batch_size']}, Adam lr {cfg['lr']}, seeds {cfg['seeds']}. "
        f"Test LL: K = {cfg['particles']} importance samples on "
        f"{n_eval} test points; "
        "test ELBO: mean log-weight of the same draws; both nats per point (higher is "
        "better), +- one standard error over test points. Active units: variance of the "
        f"guide mean over the {cfg['num_test']} test points > {ACTIVE_UNIT_THRESHOLD}. "
        "ESS and k-hat: the K = "
        f"{cfg['particles']} importance weights per point (mean over points; k-hat > 0.7 "
        "marks an unreliable estimate). s/epoch: training steps only, "
        f"{env['torch_threads']} thread(s), shared machine.",
        "",
        f"| setting | objective | K | M | test LL (K={cfg['particles']}) | test ELBO "
        "| active units | ESS | k-hat | k-hat > 0.7 | s/epoch |"
        + (" reference LL (full MNIST) |" if mnist else ""),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---|" if mnist else ""),
    ]
    for r in results["runs"]:
        m = r["objective_options"].get("num_estimates", "")
        beta = r["objective_options"].get("beta")
        obj = r["objective"] + (f" (beta {beta})" if beta is not None else "")
        seed = f" (seed {r['seed']})" if len(cfg["seeds"]) > 1 else ""
        khat = r["pareto_k_mean"]
        frac = r["pareto_k_fraction_above_0.7"]
        lines.append(
            f"| {r['label']}{seed} | {obj} | {r['num_particles']} | {m} "
            f"| {r['test_log_likelihood']:.2f} +- {r['test_log_likelihood_se']:.2f} "
            f"| {r['test_elbo']:.2f} +- {r['test_elbo_se']:.2f} | {r['active_units']} "
            f"| {r['ess_mean']:.1f} | {'' if khat is None else f'{khat:.2f}'} "
            f"| {'' if frac is None else f'{frac:.1%}'} | {r['seconds_per_epoch']:.1f} |"
            + (f" {REFERENCES.get(r['label'], '')} |" if mnist else "")
        )
    notes = [
        f"{r['label']}: {r['objective_note']}." for r in results["runs"] if "objective_note" in r
    ]
    if notes:
        lines += ["", *notes]
    checks = results["order_checks"]
    if checks:
        lines += [
            "",
            "Orders the references report, on our runs (difference of test LL, better minus "
            "worse, with its paired s.e. over test points; it leaves out the spread between "
            "training runs):",
            "",
            "| better | worse | difference | paired s.e. | beyond 2 s.e. | agrees "
            "| references (MNIST) |",
            "|---|---|---:|---:|---|---|---|",
        ]
        for c in checks:
            lines.append(
                f"| {c['better']} | {c['worse']} | {c['difference']:+.2f} "
                f"| {c['paired_se']:.2f} | {'yes' if c['beyond_2_se'] else 'no'} "
                f"| {'yes' if c['agrees'] else '**no**'} "
                f"| {c['reference']} |"
            )
    lines += [
        "",
        environment_line(
            env,
            results["load_average_1min"]["start"],
            results["load_average_1min"]["end"],
            f"; wall time {results['wall_seconds'] / 60:.1f} min"
            f"{'' if results['complete'] else ' (INCOMPLETE: not every setting has run)'}",
        ),
        "",
        *produced_by(results["command"], results.get("resumed_with", [])),
    ]
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    command = command_line("compare_objectives", argv)
    load_before = load_average()

    train, test = load_data(args)
    eval_test = (
        test
        if args.eval_points is None
        else test.subset(torch.arange(min(args.eval_points, len(test))))
    )
    # the binarized test set (the library's fixed test draw) for the active units
    au_x = prepare_fields(test, "dynamic")["x"]
    settings = {
        "dataset": args.dataset,
        "reduced": args.max_train is not None
        or args.max_test is not None
        or args.eval_points is not None,
        "max_train": args.max_train,
        "max_test": args.max_test,
        "eval_points": args.eval_points,
        "num_train": len(train),
        "num_test": len(test),
        "settings": args.settings,
        "seeds": args.seeds,
        "epochs": args.epochs,
        "particles": args.particles,
        "z_dim": args.z_dim,
        "hidden": args.hidden,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "transform": "dynamic",
        "quick": args.quick,
        "device": args.device,
    }
    json_path, md_path = result_paths(args.out)
    runs: list[dict] = []
    previous_seconds, resumed_with = 0.0, []
    load_start = load_before[0]
    if args.resume and json_path.exists():
        old = json.loads(json_path.read_text())
        # runs written before --device existed ran on the CPU
        old["settings"] = {"device": "cpu", **old["settings"]}
        same = {k: v for k, v in old["settings"].items() if k != "settings"} == {
            k: v for k, v in settings.items() if k != "settings"
        }
        if not same:
            raise SystemExit(f"--resume: {json_path} was made with other settings")
        # every run already there is kept; the settings not yet run are added
        runs = list(old["runs"])
        labels = set(args.settings) | {r["label"] for r in runs}
        settings["settings"] = [label for label in SETTINGS if label in labels]
        previous_seconds = old.get("wall_seconds", 0.0)
        # the first command and its load stay; each resuming command is listed after it
        resumed_with = [*old.get("resumed_with", []), command]
        command = old["command"]
        load_start = old["load_average_1min"]["start"]
        print(f"resuming: {len(runs)} run(s) kept from {json_path}", flush=True)

    def write(complete: bool) -> dict:
        order = {label: i for i, label in enumerate(SETTINGS)}
        runs.sort(key=lambda r: (order[r["label"]], r["seed"]))
        results = {
            "command": command,
            "resumed_with": resumed_with,
            "settings": settings,
            "complete": complete,
            "runs": runs,
            "order_checks": order_checks(runs),
            "environment": environment(args.threads),
            "load_average_1min": {"start": load_start, "end": load_average()[0]},
            "wall_seconds": previous_seconds + time.perf_counter() - started,
        }
        write_results(results, args.out, markdown_report(results), indent=1)
        return results

    done = {(r["label"], r["seed"]) for r in runs}
    for seed in args.seeds:
        for label in args.settings:
            if (label, seed) in done:
                continue
            t0 = time.perf_counter()
            r = run_setting(label, seed, train, test, eval_test, au_x, args)
            runs.append(r)
            print(
                f"{label} seed {seed}: LL {r['test_log_likelihood']:.2f} "
                f"+- {r['test_log_likelihood_se']:.2f}, ELBO {r['test_elbo']:.2f}, "
                f"AU {r['active_units']}, ESS {r['ess_mean']:.0f}, "
                f"{r['seconds_per_epoch']:.1f} s/epoch, eval {r['eval_seconds']:.0f} s "
                f"({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )
            write(complete=False)
    results = write(complete=True)
    for c in results["order_checks"]:
        print(
            f"{c['better']} > {c['worse']}: {c['difference']:+.2f} +- {c['paired_se']:.2f} "
            f"({'agrees' if c['agrees'] else 'DISAGREES'}; {c['reference']})"
        )
    print(f"wrote {json_path} and {md_path} ({results['wall_seconds'] / 60:.1f} min)")
    return results


if __name__ == "__main__":
    main()
