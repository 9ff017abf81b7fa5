"""The commands ``fit`` and ``evaluate``: parsed arguments -> a run, its metrics."""

from __future__ import annotations

import contextlib
import json
import sys
import time
from pathlib import Path

from .. import rundir
from ..ais import intra_op_threads
from ..objectives.flags import objective_overrides
from ..pairs import get_pair
from ..runs import evaluate_run, load_run, resolve_config, train_run
from ..runs.config import BOOKKEEPING_KEYS, apply_nulls, settings_file_overrides


def _progress(args) -> bool:
    """A bar only for a person at a terminal: redirected to a file, tqdm's carriage-return
    updates would pile up into thousands of lines."""
    return not args.no_progress and sys.stderr.isatty()


#: parsed arguments that are not config keys as they are (the run's place and mode, and
#: the objective, schedule and KL options that _fit gathers into dicts)
_NOT_CONFIG = {
    "command",
    "model",
    "out",
    "resume",
    "overwrite",
    "no_progress",
    "debug",
    "em",
    "em_rounds",
    "kl_weight",
    "kl_warmup",
    "config",
    "print_config",
    "threads",
}


def _threads(args):
    """The block runs with ``--threads`` torch intra-op threads (``None``: torch's)."""
    if args.threads is not None and args.threads < 1:
        raise ValueError("--threads must be at least 1")
    return intra_op_threads(args.threads)


def _overrides(args) -> dict:
    """The settings the command line gives, as overrides of the pair's defaults."""
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
    return overrides


def resolved_config(args) -> dict:
    """The run's config: the pair's defaults, then ``--config FILE``, then the flags."""
    flags = _overrides(args)
    if args.config is None:
        return resolve_config(args.model, flags)
    stored = settings_file_overrides(args.config, args.model)
    given = {k: v for k, v in flags.items() if v is not None}
    return apply_nulls(resolve_config(args.model, {**stored, **given}), stored)


def _fit(args) -> dict | None:
    """Train the run (or, with ``--print-config``, print its config and stop)."""
    config = resolved_config(args)
    if args.print_config:
        shown = {k: v for k, v in config.items() if k not in BOOKKEEPING_KEYS}
        print(json.dumps(shown, indent=2))
        return None
    out = args.out or f"runs/{args.model}-{config['dataset']}-{time.strftime('%Y%m%d-%H%M%S')}"
    args.resolved_out = out  # for the messages of main's handlers
    args.resolved_pair = args.model
    with _threads(args):
        # the bar or, redirected, one line per epoch: fit tells them apart
        _, result, metrics = train_run(
            config, out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress
        )
    print(f"run directory: {out}")
    return metrics


def _evaluate(args) -> dict:
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
    with _threads(args), rundir.RunLock(run_dir) if args.out is None else contextlib.nullcontext():
        if args.out is None:
            rundir.remove_orphan_temporaries(run_dir)  # under the lock: no live writer's
        metrics = evaluate_run(
            run, run_dir, args.particles, metrics_path=target, progress=_progress(args)
        )
    print(f"run directory: {args.run_dir}")
    return metrics
