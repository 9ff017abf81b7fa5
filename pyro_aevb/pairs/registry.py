"""The registry of named pairs, and where pairs come from.

Two sources, read once on the first look-up:

* the library's own: every public module of :mod:`pyro_aevb.pairs` (a new file there
  is found without an edit anywhere else);
* plugins, the user's own modules (:mod:`pyro_aevb.objectives.plugins`, one rule for
  pairs and objectives): those named in the environment variable ``PYRO_AEVB_PLUGINS``
  (or its older name ``PYRO_AEVB_PAIRS``; comma-separated module names, found in the
  current folder too) and the entry points of the groups ``pyro_aevb.pairs`` and
  ``pyro_aevb.objectives`` of installed packages.

Each such module registers its pair(s) with :func:`register_pair` when imported.
"""

from __future__ import annotations

import importlib
import pkgutil

from ..objectives.plugins import ENTRY_POINT_GROUPS, PAIRS_VARIABLE, load_plugins
from .spec import PairSpec

#: the older environment variable naming modules that register pairs (read by
#: :func:`~pyro_aevb.objectives.plugins.load_plugins`, as ``PYRO_AEVB_PLUGINS`` is)
ENVIRONMENT_VARIABLE = PAIRS_VARIABLE
#: the entry-point group of installed packages that register pairs
ENTRY_POINT_GROUP = ENTRY_POINT_GROUPS[0]
#: modules of this package that hold no pair
_NOT_PAIRS = {"registry", "spec", "options"}

_PAIRS: dict[str, PairSpec] = {}
_loaded = False


def register_pair(spec: PairSpec) -> PairSpec:
    """Add ``spec`` to the registry under ``spec.name``; returns it, for
    ``PAIR = register_pair(PairSpec(...))``.

    :raises ValueError: if the name is taken.
    """
    if not isinstance(spec, PairSpec):
        raise TypeError(f"register_pair takes a PairSpec, got {type(spec).__name__}")
    if spec.name in _PAIRS and _PAIRS[spec.name] is not spec:
        raise ValueError(f"a pair named '{spec.name}' is already registered")
    _PAIRS[spec.name] = spec
    return spec


def load_pairs() -> None:
    """Import every module that registers pairs (once): the library's, then the plugins."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # first: a pair module that looks up pairs while imported does not recurse
    package = __name__.rpartition(".")[0]
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
        if not info.name.startswith("_") and info.name not in _NOT_PAIRS:
            importlib.import_module(f"{package}.{info.name}")
    load_plugins()  # the user's pairs and objectives, after the library's own


def available_pairs() -> list[str]:
    """The names of the registered pairs, sorted."""
    load_pairs()
    return sorted(_PAIRS)


def get_pair(name: str) -> PairSpec:
    """The pair registered as ``name``.

    :raises ValueError: naming the registered pairs, for an unknown name.
    """
    load_pairs()
    if name not in _PAIRS:
        raise ValueError(f"unknown model '{name}'; choose one of {available_pairs()}")
    return _PAIRS[name]
