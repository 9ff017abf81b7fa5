"""``main``: parse, run the command, print the summary or one paragraph of error, and
return the exit status (0 done, 2 refused or failed, 130 interrupted)."""

from __future__ import annotations

import sys
import traceback
import warnings

from ..ais_runs import run_command
from ..psis import UnreliableEstimateWarning
from ..runs import ResultsNotSavedError
from .commands import _evaluate, _fit
from .messages import _message, _summary
from .parser import _foreign_option, build_parser


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
    try:
        if args.command == "bdmc" or getattr(args, "method", None) == "ais":
            print(run_command(args))
            return 0
        with warnings.catch_warnings():
            # the summary below says it, with the commands to run
            warnings.simplefilter("ignore", UnreliableEstimateWarning)
            metrics = _fit(args) if args.command == "fit" else _evaluate(args)
    except ResultsNotSavedError as e:
        # computed numbers are never lost
        print(
            _summary(
                e.metrics, getattr(args, "resolved_pair", None), getattr(args, "resolved_out", None)
            )
        )
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"pyro-aevb: error: {e.args[1] if len(e.args) > 1 else e}", file=sys.stderr)
        return 2
    except (Exception, KeyboardInterrupt) as e:
        if getattr(args, "debug", False):
            traceback.print_exc()
        print(f"pyro-aevb: error: {_message(e, args, argv)}", file=sys.stderr)
        return 130 if isinstance(e, KeyboardInterrupt) else 2
    if metrics is not None:  # None: --print-config, nothing was run
        print(
            _summary(
                metrics, getattr(args, "resolved_pair", None), getattr(args, "resolved_out", None)
            )
        )
    return 0
