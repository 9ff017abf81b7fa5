"""The ``pyro-aevb`` command line: ``fit MODEL`` and ``evaluate RUN_DIR``."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .data import DATASETS, TRANSFORMS
from .nn import LIKELIHOODS
from .objectives import available_objectives
from .pairs import available_pairs
from .training.optim import LR_SCHEDULES, OPTIMIZERS


def _hidden(text: str) -> list[int]:
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--hidden takes comma-separated sizes, got '{text}'"
        ) from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--hidden needs positive sizes, got '{text}'")
    return sizes


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-aevb", description="Fit and evaluate latent variable models with AEVB."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    f = sub.add_parser("fit", help="train a model/guide pair and write a run directory")
    f.add_argument("model", choices=available_pairs(), help="the model/guide pair")
    f.add_argument("--dataset", choices=sorted(DATASETS), help="default: mnist-subset (bundled)")
    f.add_argument("--data-dir", help="folder with IDX files (fashion-mnist, mnist)")
    f.add_argument(
        "--binarize",
        dest="transform",
        choices=sorted(TRANSFORMS),
        help="dynamic (default), fixed, threshold, dequantize (continuous), none",
    )
    f.add_argument(
        "--likelihood",
        choices=sorted(LIKELIHOODS),
        help="default: bernoulli for binarized data, else continuous_bernoulli",
    )
    f.add_argument("--objective", choices=available_objectives(), help="default: elbo")
    f.add_argument(
        "--particles",
        dest="num_particles",
        type=int,
        help="samples per data point and training step (default 1)",
    )
    f.add_argument("--alpha", type=float, help="Renyi alpha for --objective renyi (default 0)")
    f.add_argument(
        "--estimates",
        type=int,
        help="M, the number of IWAE bounds, for --objective miwae or piwae",
    )
    f.add_argument("--beta", type=float, help="the ELBO's weight for --objective ciwae")
    f.add_argument(
        "--kl-weight", type=float, help="weight of the KL term (elbo, meanfield; default 1)"
    )
    f.add_argument(
        "--kl-warmup", type=int, help="steps over which the KL weight rises linearly (annealing)"
    )
    f.add_argument("--epochs", type=int)
    f.add_argument("--batch-size", type=int)
    f.add_argument("--lr", type=float, help="learning rate")
    f.add_argument("--optimizer", choices=sorted(OPTIMIZERS), help="torch optimizer (adam)")
    f.add_argument(
        "--lr-schedule", choices=list(LR_SCHEDULES), help="learning-rate schedule (constant)"
    )
    f.add_argument("--clip-norm", type=float, help="clip the gradient's total norm to this")
    f.add_argument("--latent-dim", dest="z_dim", type=int)
    f.add_argument("--hidden", type=_hidden, help="hidden layer sizes, e.g. 500,500")
    f.add_argument("--dropout", type=float)
    f.add_argument(
        "--covariance", choices=["full", "diagonal"], help="fa: the guide's covariance (full)"
    )
    f.add_argument(
        "--bias", action="store_const", const=True, help="fa: learn a mean (default: b = 0)"
    )
    f.add_argument(
        "--factorization",
        choices=["full", "prior", "decoder"],
        help="cvae: p(z|y)p(x|y,z) (full, default), p(z|y)p(x|z) (prior), p(z)p(x|y,z) (decoder)",
    )
    f.add_argument("--rnn-dim", dest="rnn_dim", type=int, help="vrnn: LSTM state size (256)")
    f.add_argument("--clusters", dest="num_clusters", type=int, help="gmvae: C (default 10)")
    f.add_argument(
        "--estimator",
        choices=["enumerate", "gumbel"],
        help="gmvae: sum the clusters out (enumerate, default) or Gumbel-softmax draws",
    )
    f.add_argument(
        "--temperature",
        nargs=3,
        type=float,
        metavar=("INITIAL", "FINAL", "RATE"),
        help="gmvae --estimator gumbel: tau = max(FINAL, INITIAL exp(-RATE step)); "
        "default 1 0.5 1e-4",
    )
    f.add_argument(
        "--em",
        nargs=2,
        type=int,
        metavar=("GUIDE_STEPS", "MODEL_STEPS"),
        help="alternate guide-only (E) and model-only (M) periods of these many steps",
    )
    f.add_argument(
        "--em-rounds",
        type=int,
        help="with --em: stop after this many E/M rounds (default: alternate until --epochs)",
    )
    f.add_argument(
        "--eval-every", type=int, help="write a history row every N steps (default: per epoch)"
    )
    f.add_argument("--patience", type=int, help="early stopping on the test ELBO")
    f.add_argument(
        "--eval-particles",
        dest="log_likelihood_particles",
        type=int,
        help="importance samples for the test log-likelihood (default 1000)",
    )
    f.add_argument("--max-train", type=int, help="use only the first N training points")
    f.add_argument("--max-test", type=int, help="use only the first N test points")
    f.add_argument("--device", help="cpu (default) or cuda[:N]")
    f.add_argument("--seed", type=int)
    f.add_argument("--out", help="run directory (default runs/MODEL-DATASET-TIME)")
    f.add_argument("--resume", action="store_true", help="continue the run in --out")
    f.add_argument("--overwrite", action="store_true", help="start afresh over --out")
    f.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    e = sub.add_parser("evaluate", help="recompute metrics.json from a run's checkpoint")
    e.add_argument("run_dir")
    e.add_argument("--particles", type=int, default=1000, help="importance samples (K)")
    e.add_argument("--device", help="override the run's device")
    return parser


#: parsed arguments that are not config keys as they are (the run's place and mode, and
#: the objective, schedule and KL options that _fit gathers into dicts)
_NOT_CONFIG = {
    "command", "model", "out", "resume", "overwrite", "no_progress",
    "alpha", "estimates", "beta", "em", "em_rounds", "kl_weight", "kl_warmup", "temperature",
}


def _fit(args) -> dict:
    from .runs import resolve_config, train_run

    overrides = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
    options = {"alpha": args.alpha, "num_estimates": args.estimates, "beta": args.beta}
    options = {k: v for k, v in options.items() if v is not None}
    if options:
        overrides["objective_options"] = options
    if args.kl_weight is not None or args.kl_warmup is not None:
        overrides["kl_annealing"] = {
            "final": 1.0 if args.kl_weight is None else args.kl_weight,
            "warmup_steps": args.kl_warmup or 0,
        }
    if args.temperature is not None:
        initial, final, rate = args.temperature
        overrides["temperature"] = {"initial": initial, "final": final, "rate": rate}
    if args.em_rounds is not None and args.em is None:
        raise ValueError("--em-rounds needs --em GUIDE_STEPS MODEL_STEPS")
    if args.em is not None:
        guide_steps, model_steps = args.em
        overrides["schedule"] = {
            "guide_steps": guide_steps,
            "model_steps": model_steps,
            "rounds": args.em_rounds,
        }
    config = resolve_config(args.model, overrides)
    out = args.out or f"runs/{args.model}-{config['dataset']}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.resume and not (Path(out) / "checkpoint.pt").exists():
        raise FileNotFoundError(f"--resume: no checkpoint.pt in {out}")
    _, result, metrics = train_run(
        config, out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress
    )
    print(f"run directory: {out}")
    return metrics


def _evaluate(args) -> dict:
    from .runs import evaluate_run, load_run

    run = load_run(args.run_dir, device=args.device)
    metrics = evaluate_run(run, Path(args.run_dir), args.particles)
    print(f"run directory: {args.run_dir}")
    return metrics


def _summary(metrics: dict) -> str:
    lines = [
        f"test ELBO            {metrics['test_elbo']:9.2f} +- {metrics['test_elbo_se']:.2f} nats",
        f"test log-likelihood  {metrics['test_log_likelihood']:9.2f} +- "
        f"{metrics['test_log_likelihood_se']:.2f} nats "
        f"(K = {metrics['log_likelihood_particles']} importance samples)",
        f"ESS mean             {metrics['ess_mean']:9.1f}",
    ]
    if "test_log_evidence" in metrics:
        lines.append(
            f"test log-evidence    {metrics['test_log_evidence']:9.3f} +- "
            f"{metrics['test_log_evidence_se']:.3f} nats (exact)"
        )
    if "true_model_log_evidence" in metrics:
        lines.append(f"true model           {metrics['true_model_log_evidence']:9.3f} nats")
    if "label_gain" in metrics:
        lines.append(
            f"log p(x | y)         {metrics['log_likelihood_true_labels']:9.2f} true labels, "
            f"{metrics['log_likelihood_shuffled_labels']:.2f} shuffled "
            f"(gain {metrics['label_gain']:.2f} nats)"
        )
    if "cluster_accuracy" in metrics:
        lines.append(
            f"clustering           {metrics['cluster_accuracy']:9.3f} accuracy, NMI "
            f"{metrics['cluster_nmi']:.3f}, entropy of q(y|x) {metrics['cluster_entropy']:.3f} nats"
        )
    if "pareto_k_mean" in metrics:
        lines.append(
            f"Pareto k-hat mean    {metrics['pareto_k_mean']:9.2f} "
            f"({100 * metrics['pareto_k_fraction_above_0.7']:.0f}% above 0.7)"
        )
    if metrics.get("train_seconds") is not None:
        lines.append(
            f"training             {metrics['train_seconds']:9.1f} s "
            f"({metrics['epochs_completed']} epochs)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        metrics = _fit(args) if args.command == "fit" else _evaluate(args)
    except (ValueError, FileNotFoundError, FileExistsError, RuntimeError, NotImplementedError) as e:
        print(f"pyro-aevb: error: {e}", file=sys.stderr)
        return 2
    print(_summary(metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
