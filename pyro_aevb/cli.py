"""The ``pyro-aevb`` command line: ``fit MODEL``, ``evaluate RUN_DIR`` and ``bdmc RUN_DIR``."""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import shlex
import sys
import time
import traceback
from pathlib import Path

from .data import DATASETS, TRANSFORMS
from .objectives.flags import add_objective_arguments, objective_overrides
from .pairs import available_pairs, get_pair
from .training.optim import LR_SCHEDULES, OPTIMIZERS


def add_fit_options(parser) -> None:
    """Add the options every ``fit PAIR`` takes, whatever the pair: data, objective,
    optimization, schedule, evaluation, device and run directory. One place, so that a
    flag added here is a flag of every pair."""
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", choices=sorted(DATASETS), help="default: the pair's")
    data.add_argument("--data-dir", help="folder with IDX files (fashion-mnist, mnist)")
    data.add_argument(
        "--binarize",
        dest="transform",
        choices=sorted(TRANSFORMS),
        help="dynamic, fixed, threshold, dequantize (continuous), none; default: the pair's",
    )
    data.add_argument("--max-train", type=int, help="use only the first N training points")
    data.add_argument("--max-test", type=int, help="use only the first N test points")
    _add_objective_options(parser.add_argument_group("objective"))
    training = parser.add_argument_group("training")
    training.add_argument("--epochs", type=int)
    training.add_argument("--batch-size", type=int)
    training.add_argument("--lr", type=float, help="learning rate")
    training.add_argument(
        "--optimizer", choices=sorted(OPTIMIZERS), help="torch optimizer (adam)"
    )
    training.add_argument(
        "--lr-schedule", choices=list(LR_SCHEDULES), help="learning-rate schedule (constant)"
    )
    training.add_argument("--clip-norm", type=float, help="clip the gradient's total norm to this")
    training.add_argument(
        "--em",
        nargs=2,
        type=int,
        metavar=("GUIDE_STEPS", "MODEL_STEPS"),
        help="alternate guide-only (E) and model-only (M) periods of these many steps",
    )
    training.add_argument(
        "--em-rounds",
        type=int,
        help="with --em: stop after this many E/M rounds (default: alternate until --epochs)",
    )
    training.add_argument(
        "--eval-every", type=int, help="write a history row every N steps (default: per epoch)"
    )
    training.add_argument("--patience", type=int, help="early stopping on the test ELBO")
    training.add_argument(
        "--eval-particles",
        dest="log_likelihood_particles",
        type=int,
        help="importance samples for the test log-likelihood (default: the pair's)",
    )
    _add_device_options(parser.add_argument_group("device"))
    run = parser.add_argument_group("run")
    run.add_argument("--seed", type=int)
    run.add_argument("--out", help="run directory (default runs/MODEL-DATASET-TIME)")
    run.add_argument("--resume", action="store_true", help="continue the run in --out")
    run.add_argument("--overwrite", action="store_true", help="start afresh over --out")
    run.add_argument(
        "--no-progress",
        action="store_true",
        help="hide the progress bar (hidden anyway when stderr is not a terminal)",
    )


def _add_objective_options(parser) -> None:
    """The objective and its options (flags generated from the registered specs), and the
    KL weight."""
    add_objective_arguments(parser)  # --objective, --particles and the objectives' options
    parser.add_argument(
        "--kl-weight",
        type=float,
        help="weight of the KL term (objectives whose spec allows a KL weight; default 1)",
    )
    parser.add_argument(
        "--kl-warmup", type=int, help="steps over which the KL weight rises linearly (annealing)"
    )


def _add_device_options(parser) -> None:
    """Where the run computes."""
    parser.add_argument("--device", help="cpu (default) or cuda[:N]")
    parser.add_argument(
        "--sync-every",
        type=int,
        help="read the loss and the NaN guard back every N steps (default 1; the guard then "
        "runs on the device)",
    )
    parser.add_argument(
        "--cuda-graph",
        action="store_const",
        const=True,
        help="CUDA only: capture each step as a CUDA graph and replay it (opt-in, unverified)",
    )
    from .training.distributed import add_cli_options

    # --devices --strategy --num-nodes --accelerator --precision --logger, with help texts
    add_cli_options(parser)


def _defaults_text(spec) -> str:
    shown = ", ".join(f"{k} {v}" for k, v in spec.training.items())
    return f"{spec.description}. Its default settings: {shown}."


def _add_fit_parser(sub, common) -> None:
    f = sub.add_parser(
        "fit",
        help="train a model/guide pair and write a run directory",
        description="Train a named model/guide pair and write a run directory. "
        "'pyro-aevb fit PAIR --help' lists the options of PAIR.",
    )
    pairs = f.add_subparsers(dest="model", required=True, metavar="PAIR")
    for name in available_pairs():
        spec = get_pair(name)
        p = pairs.add_parser(
            name, parents=[common], help=spec.description, description=_defaults_text(spec)
        )
        group = p.add_argument_group(f"options of {name}")
        for option in spec.parameters:
            option.add_argument(group)
        add_fit_options(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyro-aevb", description="Fit and evaluate latent variable models with AEVB."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", help="show the full traceback when something fails"
    )
    _add_fit_parser(sub, common)

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


def _foreign_option(model: str, words: list[str]) -> str | None:
    """For a flag of another pair given to ``fit MODEL``, a message naming both."""
    owners: dict[str, list] = {}
    for name in available_pairs():
        for option in get_pair(name).parameters:
            owners.setdefault(option.flag, []).append((name, option))
    for word in words:
        flag = word.split("=", 1)[0]
        if flag in owners:
            others = ", ".join(name for name, _ in owners[flag])
            own = ", ".join(option.flag for option in get_pair(model).parameters)
            return (
                f"model '{model}' has no option '{owners[flag][0][1].name}' ({flag} is an "
                f"option of {others}); the options of {model} are {own or 'none'}: see "
                f"'pyro-aevb fit {model} --help'"
            )
    return None


def _progress(args) -> bool:
    """A bar only for a person at a terminal: redirected to a file, tqdm's carriage-return
    updates would pile up into thousands of lines."""
    return not args.no_progress and sys.stderr.isatty()


#: parsed arguments that are not config keys as they are (the run's place and mode, and
#: the objective, schedule and KL options that _fit gathers into dicts)
_NOT_CONFIG = {
    "command", "model", "out", "resume", "overwrite", "no_progress", "debug",
    "em", "em_rounds", "kl_weight", "kl_warmup",
}


def _fit(args) -> dict:
    from .runs import resolve_config, train_run

    overrides = objective_overrides({k: v for k, v in vars(args).items() if k not in _NOT_CONFIG})
    if args.kl_weight is not None or args.kl_warmup is not None:
        overrides["kl_annealing"] = {
            "final": 1.0 if args.kl_weight is None else args.kl_weight,
            "warmup_steps": args.kl_warmup or 0,
        }
    for option in get_pair(args.model).parameters:  # e.g. three numbers -> a dict
        overrides[option.name] = option.from_command_line(overrides.get(option.name))
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
    args.resolved_pair = args.model
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
    args.resolved_pair = run.config["model"]
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


def _summary(metrics: dict, pair: str | None = None) -> str:
    """What the command line prints: every metric with its unit and standard error, the
    lines of ``pair``'s own metrics (:attr:`~pyro_aevb.pairs.PairSpec.summary`), then
    the warnings."""
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
    spec = get_pair(pair) if pair is not None else None
    if spec is not None and spec.summary is not None:
        lines += spec.summary(metrics)
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


def _lower_lr_command(argv: list[str], out: str, lr: float | None) -> str:
    """The resume command with a tenth of the learning rate (a resume may change --lr)."""
    words = list(argv)
    if "--lr" in words[:-1]:
        at = words.index("--lr")
        del words[at : at + 2]
    if lr is None:  # the pair's default: what the run's config.json recorded
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            lr = float(json.loads((Path(out) / "config.json").read_text())["lr"])
    lower = (lr if lr is not None else 1e-3) / 10
    return _resume_command(words, out) + f" --lr {lower:g}"


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
        lower = _lower_lr_command(argv, out, getattr(args, "lr", None)) if has_checkpoint else ""
        kept = (
            f" The last good checkpoint in {out} is kept: continue it with a lower learning "
            f"rate ({lower}), start afresh with --overwrite, or look into the data and model"
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
    try:
        parser = build_parser()
    except ValueError as e:  # a pair module named in PYRO_AEVB_PAIRS that fails to import
        print(f"pyro-aevb: error: {e}", file=sys.stderr)
        return 2
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        foreign = _foreign_option(args.model, unknown) if args.command == "fit" else None
        if foreign is None:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        print(f"pyro-aevb: error: {foreign}", file=sys.stderr)
        return 2
    from .runs import ResultsNotSavedError

    try:
        if args.command == "bdmc" or getattr(args, "method", None) == "ais":
            from .ais_runs import run_command

            print(run_command(args))
            return 0
        metrics = _fit(args) if args.command == "fit" else _evaluate(args)
    except ResultsNotSavedError as e:
        # computed numbers are never lost
        print(_summary(e.metrics, getattr(args, "resolved_pair", None)))
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"pyro-aevb: error: {e.args[1] if len(e.args) > 1 else e}", file=sys.stderr)
        return 2
    except (Exception, KeyboardInterrupt) as e:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"pyro-aevb: error: {_message(e, args, argv)}", file=sys.stderr)
        return 130 if isinstance(e, KeyboardInterrupt) else 2
    print(_summary(metrics, getattr(args, "resolved_pair", None)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
