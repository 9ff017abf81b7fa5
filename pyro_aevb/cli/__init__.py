"""The ``pyro-aevb`` command line: ``fit MODEL``, ``evaluate RUN_DIR`` and ``bdmc RUN_DIR``.

:mod:`.parser` builds the parser (:mod:`.fit_options`: the options of every ``fit PAIR``),
:mod:`.commands` runs ``fit`` and ``evaluate``, :mod:`.messages` says what happened and
:mod:`.entry` holds :func:`main` and its exit statuses.
"""

# the old module's private helpers, which tests and scripts import
from .commands import _evaluate as _evaluate
from .commands import _fit as _fit
from .commands import _progress as _progress
from .entry import main
from .fit_options import add_fit_options
from .messages import _message as _message
from .messages import _resume_command as _resume_command
from .messages import _summary as _summary
from .parser import build_parser

__all__ = ["add_fit_options", "build_parser", "main"]
