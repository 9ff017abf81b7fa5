"""The registry of named pairs, and where pairs come from.

Three sources, read once on the first look-up:

* the library's own: every public module of :mod:`pyro_aevb.pairs` (a new file there
  is found without an edit anywhere else);
* the modules named in the environment variable ``PYRO_AEVB_PAIRS`` (comma-separated
  importable names, e.g. ``PYRO_AEVB_PAIRS=my_pairs``);
* the entry points of the group ``pyro_aevb.pairs`` of installed packages.

Each such module registers its pair(s) with :func:`register_pair` when imported.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from importlib.metadata import entry_points

from .spec import PairSpec

#: the environment variable naming extra modules that register pairs
ENVIRONMENT_VARIABLE = "PYRO_AEVB_PAIRS"
#: the entry-point group of installed packages that register pairs
ENTRY_POINT_GROUP = "pyro_aevb.pairs"
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


def _import(name: str, origin: str) -> None:
    try:
        importlib.import_module(name)
    except Exception as e:
        raise ValueError(
            f"{origin} names the module '{name}', which cannot be imported "
            f"({type(e).__name__}: {e}); fix the module or remove it from {origin}"
        ) from e


def load_pairs() -> None:
    """Import every module that registers pairs (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True  # first: a pair module that looks up pairs while imported does not recurse
    package = __name__.rpartition(".")[0]
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
        if not info.name.startswith("_") and info.name not in _NOT_PAIRS:
            importlib.import_module(f"{package}.{info.name}")
    for name in os.environ.get(ENVIRONMENT_VARIABLE, "").split(","):
        if name.strip():
            _import(name.strip(), f"the environment variable {ENVIRONMENT_VARIABLE}")
    for point in entry_points(group=ENTRY_POINT_GROUP):
        _import(point.value.split(":")[0], f"the entry point '{point.name}' ({ENTRY_POINT_GROUP})")


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
