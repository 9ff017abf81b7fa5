"""Plugins: the user's own modules that register pairs and objectives, found one way.

A plugin module registers what it defines when imported (:func:`register_objective`,
:func:`pyro_aevb.pairs.register_pair`). Modules are found, once, from:

* the environment variable ``PYRO_AEVB_PLUGINS``: comma-separated module names, e.g.
  ``PYRO_AEVB_PLUGINS=my_pairs,my_objectives``; ``PYRO_AEVB_PAIRS``, the older name
  that once loaded pairs only, is read the same way;
* the entry points of the groups ``pyro_aevb.pairs`` and ``pyro_aevb.objectives`` of
  installed packages.

A module named in the environment is looked for in the current folder too (appended to
the end of ``sys.path``, so it never shadows an installed module): the ``pyro-aevb``
command does not otherwise look there, and ``PYTHONPATH=.`` is not needed.

The command line and named runs load the plugins before their first look-up of a pair
(:func:`pyro_aevb.pairs.available_pairs` calls :func:`load_plugins`), so ``fit PAIR``,
``--objective NAME`` and a stored ``config.json`` see them all. From Python, importing a
module (or calling :func:`load_plugins`) does the same.
"""

from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import entry_points

#: the environment variable naming plugin modules
PLUGINS_VARIABLE = "PYRO_AEVB_PLUGINS"
#: its older name, which loaded pairs only; still read
PAIRS_VARIABLE = "PYRO_AEVB_PAIRS"
#: entry-point groups of installed packages that register pairs or objectives
ENTRY_POINT_GROUPS = ("pyro_aevb.pairs", "pyro_aevb.objectives")

_loaded = False


def plugin_modules() -> list[tuple[str, str]]:
    """``(module name, where it was named)`` of every plugin in the environment and the
    entry points, in that order, without repeats."""
    named = []
    for variable in (PLUGINS_VARIABLE, PAIRS_VARIABLE):
        for name in os.environ.get(variable, "").split(","):
            if name.strip():
                named.append((name.strip(), f"the environment variable {variable}"))
    for group in ENTRY_POINT_GROUPS:
        for point in entry_points(group=group):
            named.append((point.value.split(":")[0], f"the entry point '{point.name}' ({group})"))
    seen, unique = set(), []
    for name, origin in named:
        if name not in seen:
            seen.add(name)
            unique.append((name, origin))
    return unique


def import_plugin(name: str, origin: str) -> None:
    """Import the plugin module ``name``, looking in the current folder last.

    :raises ValueError: naming the module, ``origin`` and the import's own error.
    """
    folder = os.getcwd()
    if origin.startswith("the environment") and not {"", folder} & set(sys.path):
        sys.path.append(folder)  # the user's own module, next to where the command runs
    try:
        importlib.import_module(name)
    except Exception as e:
        raise ValueError(
            f"{origin} names the module '{name}', which cannot be imported "
            f"({type(e).__name__}: {e}); fix the module or remove it from {origin}"
        ) from e


def load_plugins() -> None:
    """Import every plugin module (once; later calls do nothing)."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # first: a plugin that looks up a registry while imported does not recurse
    for name, origin in plugin_modules():
        import_plugin(name, origin)
