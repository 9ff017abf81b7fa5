"""The argument parser of ``pyro-aevb``: the ``fit PAIR`` subcommands (one per registered
pair), ``evaluate`` and AIS's ``bdmc``."""

from __future__ import annotations

import argparse

from ..ais_runs import add_ais_arguments, add_bdmc_parser
from ..pairs import available_pairs, get_pair
from .fit_options import add_fit_options

#: torch intra-op threads of fit, evaluate and bdmc unless --threads says otherwise. One:
#: on the 2-core machine this project runs on, shared with other processes, the quick
#: start's step took a median 26 ms with one thread and 637 ms with torch's default (two),
#: 257 ms against 1528 ms with one more CPU-bound process (bench/README.md, "threads.py"):
#: every multi-threaded operation waits for a thread that another process descheduled.
DEFAULT_THREADS = 1


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
        p.set_defaults(threads=DEFAULT_THREADS)


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
    e.add_argument("--out", help="write the metrics to this file instead of RUN_DIR/metrics.json")
    e.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    # AIS / BDMC (pyro_aevb.ais_runs): --method ais on evaluate, and the bdmc command
    add_ais_arguments(e)
    add_bdmc_parser(sub)
    for name in ("evaluate", "bdmc"):
        sub.choices[name].set_defaults(threads=DEFAULT_THREADS)
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
