"""The ``pyro-aevb`` command line: ``fit MODEL``, ``evaluate RUN_DIR`` and ``bdmc RUN_DIR``."""

from __future__ import annotations

import argparse
import contextlib
import errno
import shlex
import sys
import time
import traceback
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
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", help="show the full traceback when something fails"
    )

    f = sub.add_parser(
        "fit", parents=[common], help="train a model/guide pair and write a run directory"
    )
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
    f.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the progress bar (hidden anyway when stderr is not a terminal)",
    )
    from .training.distributed import add_cli_options

    add_cli_options(f)  # --devices --strategy --num-nodes --accelerator --precision --logger

    e = sub.add_parser(
        "evaluate", parents=[common], help="recompute metrics.json from a run's checkpoint"
    )
    e.add_argument("run_dir")
    e.add_argument("--particles", type=int, default=1000, help="importance samples (K)")
    e.add_argument("--device", help="override the run's device")
    e.add_argument(
        "--out", help="write the metrics to this file instead of RUN_DIR/metrics.json"
    )
    e.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    # AIS / BDMC (pyro_aevb.ais_runs): --method ais on evaluate, and the bdmc command
    from .ais_runs import add_ais_arguments, add_bdmc_parser

    add_ais_arguments(e)
    add_bdmc_parser(sub)
    return parser


def _progress(args) -> bool:
    """A bar only for a person at a terminal: redirected to a file, tqdm's carriage-return
    updates would pile up into thousands of lines."""
    return not args.no_progress and sys.stderr.isatty()


#: parsed arguments that are not config keys as they are (the run's place and mode, and
#: the objective, schedule and KL options that _fit gathers into dicts)
_NOT_CONFIG = {
    "command", "model", "out", "resume", "overwrite", "no_progress", "debug",
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
    args.resolved_out = out  # for the messages of main's handlers
    _, result, metrics = train_run(
        config, out, resume=args.resume, overwrite=args.overwrite, progress=_progress(args)
    )
    print(f"run directory: {out}")
    return metrics


def _evaluate(args) -> dict:
    from . import rundir
    from .runs import evaluate_run, load_run

    if args.particles < 1:
        raise ValueError(f"--particles must be a positive integer, got {args.particles}")
    run_dir = Path(args.run_dir)
    args.resolved_out = str(run_dir)
    run = load_run(run_dir, device=args.device)
    target = Path(args.out) if args.out else run_dir / "metrics.json"
    # checked before hours of computing, not after
    target.parent.mkdir(parents=True, exist_ok=True)
    rundir.check_writable(
        target.parent, "metrics.json" + ("" if args.out else " (pass --out FILE instead)")
    )
    with rundir.RunLock(run_dir) if args.out is None else contextlib.nullcontext():
        if args.out is None:
            rundir.remove_orphan_temporaries(run_dir)  # under the lock: no live writer's
        metrics = evaluate_run(
            run, run_dir, args.particles, metrics_path=target, progress=_progress(args)
        )
    print(f"run directory: {args.run_dir}")
    return metrics


def _summary(metrics: dict) -> str:
    lines = [
        f"test ELBO            {metrics['test_elbo']:9.2f} +- {metrics['test_elbo_se']:.2f} nats",
        f"test log-likelihood  {metrics['test_log_likelihood']:9.2f} +- "
        f"{metrics['test_log_likelihood_se']:.2f} nats "
        f"(K = {metrics['log_likelihood_particles']} importance samples)",
        f"ESS mean             {metrics['ess_mean']:9.1f} "
        f"(effective samples of the K, per data point)",
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
    n = metrics.get("num_test_points")
    lines.append(
        "All values are nats per data point, means over the "
        + (f"{n} " if n else "")
        + "test points; +- is the standard error of that mean over the test points."
    )
    if metrics.get("pareto_k_fraction_above_0.7", 0) > 0.5:
        lines.append(
            f"WARNING: k-hat exceeds 0.7 for most test points "
            f"({100 * metrics['pareto_k_fraction_above_0.7']:.0f}%): the importance weights are "
            "too heavy-tailed, so the log-likelihood is an unreliable lower bound that may lie "
            "far below log p(x); more particles or a better guide are needed to trust it."
        )
    for problem in metrics.get("problems", []):
        lines.append(f"WARNING: {problem}")
    return "\n".join(lines)


def _resume_command(argv: list[str], out: str) -> str:
    words = list(argv)
    if "--out" not in words:
        words += ["--out", out]
    words = [w for w in words if w != "--overwrite"]
    if "--resume" not in words:
        words.append("--resume")
    return "pyro-aevb " + shlex.join(words)


_OS_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EDQUOT: "the disk quota is exhausted",
}


def _message(e: BaseException, args, argv: list[str]) -> str:
    """One paragraph saying what went wrong and what to do."""
    from .checkpoint import CHECKPOINT_NAME
    from .evaluation import ImplausibleEstimateError
    from .training import NonFiniteLossError

    out = getattr(args, "resolved_out", None)
    has_checkpoint = out is not None and (Path(out) / CHECKPOINT_NAME).exists()
    fit = args.command == "fit"
    if isinstance(e, KeyboardInterrupt):
        if fit and has_checkpoint:
            return (
                f"interrupted. The last finished epoch is saved in {out}; continue the run "
                f"with: {_resume_command(argv, out)}"
            )
        if fit:
            return "interrupted before the first epoch finished; nothing was saved"
        return "interrupted; metrics.json was not changed"
    if isinstance(e, ImplausibleEstimateError):
        where = f" The checkpoint in {out} is kept; metrics.json was not written." if out else ""
        again = " Refit with a smaller --lr and --overwrite." if fit else ""
        return (
            "the evaluation gave impossible numbers, which are not a result: "
            + "; ".join(e.problems)
            + ". The parameters have most likely diverged numerically (a learning rate too "
            f"large).{where}{again}"
        )
    if isinstance(e, NonFiniteLossError):
        kept = (
            f" The last good checkpoint in {out} is kept: lower --lr and start afresh with "
            "--overwrite, or look into the data and model"
            if has_checkpoint
            else " Nothing was saved: lower --lr or look into the data and model"
        )
        return f"training diverged: {e}.{kept}."
    if isinstance(e, MemoryError):
        return str(e) or "out of memory; use fewer particles or a smaller batch size"
    if isinstance(e, OSError):
        if e.filename is not None:
            text = f"{_OS_REASONS.get(e.errno, e.strerror)}: {e.filename}"
        else:
            text = e.strerror if e.strerror is not None else str(e)
        if fit and has_checkpoint and not isinstance(e, (FileNotFoundError, FileExistsError)):
            text += (
                f". The last checkpoint in {out} is intact; once fixed, continue with: "
                f"{_resume_command(argv, out)}"
            )
        return text
    if isinstance(e, (ValueError, RuntimeError, NotImplementedError)):
        return str(e)
    return (
        f"unexpected {type(e).__name__}: {e}. Rerun with --debug to see the traceback, and "
        "please report it"
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from .runs import ResultsNotSavedError

    try:
        if args.command == "bdmc" or getattr(args, "method", None) == "ais":
            from .ais_runs import run_command

            print(run_command(args))
            return 0
        metrics = _fit(args) if args.command == "fit" else _evaluate(args)
    except ResultsNotSavedError as e:
        print(_summary(e.metrics))  # computed numbers are never lost
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"pyro-aevb: error: {e.args[1] if len(e.args) > 1 else e}", file=sys.stderr)
        return 2
    except (Exception, KeyboardInterrupt) as e:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"pyro-aevb: error: {_message(e, args, argv)}", file=sys.stderr)
        return 130 if isinstance(e, KeyboardInterrupt) else 2
    print(_summary(metrics))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
