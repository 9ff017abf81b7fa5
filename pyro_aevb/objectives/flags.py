"""Command-line flags of the objectives, generated from their specs.

``--objective`` and ``--particles`` come first; then one flag per option name of the
registered objectives (objectives that share an option, ``num_estimates`` of
``miwae`` and ``piwae``, share its flag). A newly registered objective's options
appear without editing the command line.
"""

from __future__ import annotations

import argparse

from .registry import Option, objective_specs

#: prefix of the parsed arguments that hold objective options
_DEST = "objective_option__"


def _shared_options() -> dict[str, tuple[Option, list[str]]]:
    """Option name -> (its first declaration, the objectives that take it)."""
    out: dict[str, tuple[Option, list[str]]] = {}
    for spec in objective_specs():
        for option in spec.options:
            first, users = out.setdefault(option.name, (option, []))
            if first.cli_flag != option.cli_flag or first.type is not option.type:
                raise ValueError(
                    f"objectives {users} and '{spec.name}' declare the option "
                    f"'{option.name}' with different flags or types"
                )
            users.append(spec.name)
    return out


def add_objective_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--objective``, ``--particles`` and every objective option's flag."""
    specs = objective_specs()
    listing = "; ".join(f"{s.name}: {s.summary}" for s in specs if s.summary)
    parser.add_argument(
        "--objective",
        choices=[s.name for s in specs],
        help=f"default: the pair's. {listing}" if listing else "default: the pair's",
    )
    parser.add_argument(
        "--particles",
        dest="num_particles",
        type=int,
        help="samples per data point and training step (default 1)",
    )
    for name, (option, users) in _shared_options().items():
        parser.add_argument(
            option.cli_flag,
            dest=_DEST + name,
            metavar=option.cli_flag.lstrip("-").replace("-", "_").upper(),
            type=option.type,
            help=f"{option.help} (--objective {' or '.join(users)})",
        )


def objective_overrides(arguments: dict) -> dict:
    """``arguments`` (parsed flags as a dict) with the objective options gathered into
    ``objective_options`` (only those given); other keys are passed through."""
    out = {k: v for k, v in arguments.items() if not k.startswith(_DEST)}
    options = {
        k[len(_DEST) :]: v for k, v in arguments.items() if k.startswith(_DEST) and v is not None
    }
    if options:
        out["objective_options"] = options
    return out
