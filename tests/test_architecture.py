"""The layer contract and the size limits, checked on the source with :mod:`ast`.

Data flows one way through the library (``LAYERS`` below, lowest first). These tests read
every module of ``pyro_aevb/``, ``models/`` (installed as ``pyro_aevb.models``) and
``guides/`` (``pyro_aevb.guides``) and check:

* every module has a layer (a new module fails until it is added to ``LAYERS``);
* no module imports from a higher layer, counting imports at the top of a module *and*
  inside functions (lazy imports), relative imports resolved;
* no import circle anywhere, within a layer or a package too (strongly connected
  components of the module graph);
* no function over 80 lines (the ``def`` line to the last line of the body: the docstring
  counts, decorators do not) and no module over 400 lines, in every Python file of the
  repository outside ``tests/`` and ``bench/``.

On failure each test lists every offender with ``file:line``, so its message is the work
list. The offenders that existed when the contract went into CI are recorded below
(``KNOWN_*``) as debt that may only shrink: anything new, or any recorded one that grows,
fails the build.

How an import is read (``_imports``):

* ``from a.b import c`` is an import of the module ``a.b.c`` when ``c`` is a module, else of
  ``a.b`` (its ``__init__.py`` when ``a.b`` is a package). A name a package's
  ``__init__.py`` re-exports from a submodule is an import of the package: that is what
  Python runs, and it is how a re-export hub ties modules into a circle.
* ``import a.b.c`` is an import of ``a.b.c``. The parent packages that Python initialises
  on the way (``a``, ``a.b``) are not counted: otherwise every module would depend on
  ``pyro_aevb/__init__.py``, which imports most of the library.
* A package's ``__init__.py`` importing its own submodules (a re-export) is an ordinary
  edge ``pkg -> pkg.sub``; it makes a circle only if something under ``pkg`` imports
  ``pkg`` itself back (``from . import name`` of a name defined in or re-exported by the
  ``__init__.py``), which is a real circle: the submodule then runs against a half-built
  package. ``from . import sub`` of a sibling *module* is an import of that module.
* ``importlib.import_module("a.b")`` and ``__import__("a.b")`` with a literal name count as
  imports (lazy inside a function). Names built at run time (``pkgutil`` scans, f-strings)
  cannot be seen: ``objectives/__init__.py`` imports its modules that way.
* ``if TYPE_CHECKING:`` imports count like any other.
"""

from __future__ import annotations

import ast
import functools
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: where each importable package's source lives (setup.cfg's package_dir)
SOURCES = {"pyro_aevb": ROOT / "pyro_aevb", "pyro_aevb.models": ROOT / "models",
           "pyro_aevb.guides": ROOT / "guides"}  # fmt: skip

# The layer table: the single source of the architecture. Lowest layer first; a module may
# import from its own layer and from the layers above it in this list (never below it in
# the list, i.e. never a higher layer). Patterns: "pkg.mod" is that module only;
# "pkg.sub.*" is the package pkg.sub (its __init__.py) and everything under it. The most
# specific pattern wins, so a single module can be placed apart from its package.
# To add a module: put its pattern in the layer of the concern it belongs to, no lower than
# the highest layer it imports from and no higher than the lowest layer that imports it
# (the failure message of test_every_module_has_a_layer says what that range is).
LAYERS: list[tuple[str, list[str]]] = [
    # what models and guides are built from: networks, the data plate, relaxed
    # distributions, deprecated aliases, the library's exception base
    ("base", ["pyro_aevb.nn", "pyro_aevb.plate", "pyro_aevb.relaxed", "pyro_aevb.deprecation",
              "pyro_aevb.errors", "pyro_aevb.conv"]),
    # data sets, loaders, transforms, the prepared test set
    ("data", ["pyro_aevb.data.*"]),
    # the model and guide zoo
    ("models", ["pyro_aevb.models.*", "pyro_aevb.guides.*"]),
    # running a pair's programs and checking them: the contract, trace-site helpers,
    # binding data to arguments, contexts that run a block isolated (particles use them)
    ("contract", ["pyro_aevb.contract.*", "pyro_aevb.sites", "pyro_aevb.arguments",
                  "pyro_aevb.pair_data", "pyro_aevb.contexts"]),
    # the particle engine shared by objectives and evaluation
    ("particles", ["pyro_aevb.particles.*", "pyro_aevb.psis"]),
    # objectives: the registry, Pyro's ELBOs, the importance-weighted bounds
    ("objectives", ["pyro_aevb.objectives.*", "pyro_aevb.importance_weighted.*"]),
    # fitting: the step, the loop, distribution, and what only fitting (and above) uses:
    # KL annealing, EM schedules, checkpoint files, the run directory lock, devices, JSON
    ("training", ["pyro_aevb.training.*", "pyro_aevb.annealing", "pyro_aevb.schedules",
                  "pyro_aevb.checkpoint", "pyro_aevb.rundir", "pyro_aevb.device",
                  "pyro_aevb.io"]),
    # evaluating a fitted pair: estimators, their results and checks, the memory they
    # need, and the metrics built on them (label usage, clustering, gradient diagnostics)
    ("evaluation", ["pyro_aevb.evaluation.*", "pyro_aevb.estimates", "pyro_aevb.memory",
                    "pyro_aevb.diagnostics", "pyro_aevb.label_usage", "pyro_aevb.clustering",
                    "pyro_aevb.collapse.*"]),
    # annealed importance sampling and its HMC kernel
    ("ais", ["pyro_aevb.ais.*", "pyro_aevb.hmc"]),
    # evaluate(method=...): the choice between importance sampling and AIS, above both
    ("methods", ["pyro_aevb.evaluation_methods"]),
    # the public facade, pyro_aevb/__init__.py: it re-exports fit, evaluate, AIS, ...
    ("api", ["pyro_aevb"]),
    # named runs. pairs: the pair specs (builder, options, metrics, figures) import
    # evaluation (metrics) and plots (figures) and are imported only by runs and the CLI.
    # plots imports only the contract layer, but only run-level code (pairs, runs,
    # ais_runs, ais_plots) draws figures; keeping it here keeps matplotlib out of the numeric
    # layers.
    ("runs", ["pyro_aevb.runs.*", "pyro_aevb.ais_runs", "pyro_aevb.ais_plots",
              "pyro_aevb.pairs.*", "pyro_aevb.plots"]),
    # the command line
    ("cli", ["pyro_aevb.cli.*"]),
]  # fmt: skip

#: patterns that would match every module of the library and so hide a new module's missing
#: layer
ROOT_WILDCARDS = {"pyro_aevb.*"}

MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 400
#: folders of the repository that the size limits do not apply to
SIZE_EXEMPT = {"tests", "bench"}

# The debt found when this contract went into CI (issue 19; sizes as of the commit that added
# these lists, after that round's fixes to fit and the CLI): it may only shrink. An offender
# not listed here fails; a listed one that grew fails; a listed one that is gone fails too,
# with a message to delete its entry, so the lists ratchet down to empty.
#: (importing module, imported module) of each import from a higher layer
KNOWN_UPWARD_IMPORTS: set[tuple[str, str]] = set()
#: the import circles; a circle passes while its modules are among one of these
KNOWN_CIRCLES: list[set[str]] = []
#: "file:function" -> its length in lines then
KNOWN_LONG_FUNCTIONS: dict[str, int] = {}
#: file -> its length in lines then
KNOWN_BIG_MODULES: dict[str, int] = {}


def _ratchet(found: dict, known: dict, what: str) -> list[str]:
    """Problems of ``found`` (key -> size, or None for a yes/no offence) against the debt
    ``known``: new offenders, grown ones, and entries of ``known`` that are fixed."""
    problems = []
    for key, size in sorted(found.items()):
        if key not in known:
            problems.append(f"new {what}: {key}" + (f" ({size} lines)" if size else ""))
        elif size is not None and size > known[key]:
            problems.append(f"{what} grew: {key} {known[key]} -> {size} lines")
    for key in sorted(set(known) - set(found)):
        problems.append(
            f"{key} is no longer a {what}: delete its entry from tests/test_architecture.py"
        )
    return problems


# --- reading the source -------------------------------------------------------------------


def _relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.as_posix()


def modules(sources: tuple[tuple[str, Path], ...] | None = None) -> dict[str, Path]:
    """Dotted module name -> source file, for every module of the packages in ``sources``
    (default: the three of this repository)."""
    return _modules(sources or tuple(SOURCES.items()))


@functools.cache
def _modules(sources: tuple[tuple[str, Path], ...]) -> dict[str, Path]:
    found = {}
    for package, folder in sources:
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module of the package
    path: Path  # the importing module's file
    line: int
    lazy: bool  # inside a function, run when it is called, not when the module is imported

    def where(self) -> str:
        return f"{_relative(self.path)}:{self.line}" + (" (lazy)" if self.lazy else "")


def _known(name: str | None, mods: dict[str, Path]) -> str | None:
    """The longest prefix of ``name`` that is a module of ``mods``, if any."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _imported_names(module: str, path: Path, node: ast.AST, mods: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        if node.level:
            package = module.split(".")
            if path.name != "__init__.py":
                package = package[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        return [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
    if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
            return [node.args[0].value]
    return []


def imports(sources: tuple[tuple[str, Path], ...] | None = None) -> tuple[Import, ...]:
    """Every import of one module of the packages by another, top-level and lazy."""
    return _imports(sources or tuple(SOURCES.items()))


@functools.cache
def _imports(sources: tuple[tuple[str, Path], ...]) -> tuple[Import, ...]:
    mods = modules(sources)
    found = []
    for module, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        top_level = _top_level_nodes(tree)
        for node in ast.walk(tree):
            for name in _imported_names(module, path, node, mods):
                target = _known(name, mods)
                if target is not None and target != module:
                    lazy = id(node) not in top_level
                    found.append(Import(module, target, path, node.lineno, lazy))
    return tuple(sorted(set(found), key=lambda i: (i.source, i.line, i.target)))


def _top_level_nodes(tree: ast.Module) -> set[int]:
    """ids of the nodes that run when the module is imported: everything outside the bodies
    of functions and lambdas (class bodies and top-level ``if``/``try`` blocks run)."""
    ids, todo = set(), list(tree.body)
    while todo:
        node = todo.pop()
        ids.add(id(node))
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo.extend(ast.iter_child_nodes(node))
    return ids


# --- the layer table ----------------------------------------------------------------------


def _pattern_matches(pattern: str, module: str) -> bool:
    if pattern.endswith(".*"):
        package = pattern[:-2]
        return module == package or module.startswith(package + ".")
    return module == pattern


def layer_of(module: str) -> int | None:
    """Index in LAYERS of ``module``'s layer (the most specific matching pattern)."""
    best = None  # (specificity, layer index)
    for index, (_, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            if _pattern_matches(pattern, module):
                specificity = (pattern.count("."), not pattern.endswith(".*"))
                if best is None or specificity > best[0]:
                    best = (specificity, index)
    return None if best is None else best[1]


def _layer_name(module: str) -> str:
    index = layer_of(module)
    return "?" if index is None else LAYERS[index][0]


def test_the_layer_table_names_each_pattern_once():
    seen: dict[str, str] = {}
    twice = []
    for name, patterns in LAYERS:
        for pattern in patterns:
            assert pattern not in ROOT_WILDCARDS, (
                f"{pattern!r} in layer {name!r} would give every new module a layer"
            )
            if pattern in seen:
                twice.append(f"{pattern!r} is in layer {seen[pattern]!r} and in {name!r}")
            seen[pattern] = name
    assert not twice, "\n".join(twice)


def test_every_module_has_a_layer():
    problems = []
    for module, path in modules().items():
        if layer_of(module) is not None:
            continue
        uses = {layer_of(i.target) for i in imports() if i.source == module} - {None}
        users = {layer_of(i.source) for i in imports() if i.target == module} - {None}
        lowest = LAYERS[max(uses)][0] if uses else LAYERS[0][0]
        highest = LAYERS[min(users)][0] if users else LAYERS[-1][0]
        pattern = f"{module}.*" if path.name == "__init__.py" else module
        problems.append(
            f"{_relative(path)}: module {module} has no layer. Add {pattern!r} to LAYERS in "
            f"tests/test_architecture.py, in the layer of what it is about: by its imports it "
            f"can go from {lowest!r} (what it imports) to {highest!r} (who imports it)."
        )
    if problems:
        pytest.fail(
            f"{len(problems)} module(s) without a layer:\n" + "\n".join(problems), pytrace=False
        )


# --- the rules on imports -----------------------------------------------------------------


def test_no_module_imports_from_a_higher_layer():
    upward, found = [], {}
    for i in imports():
        source, target = layer_of(i.source), layer_of(i.target)
        if source is not None and target is not None and target > source:
            found[(i.source, i.target)] = None
            upward.append(
                f"{i.where()}: {i.source} [{LAYERS[source][0]}] imports {i.target} "
                f"[{LAYERS[target][0]}]"
            )
    problems = _ratchet(found, dict.fromkeys(KNOWN_UPWARD_IMPORTS), "import from a higher layer")
    order = " -> ".join(name for name, _ in LAYERS)
    if problems:
        pytest.fail(
            "\n".join(problems)
            + f"\n\nevery import from a higher layer (layers, lowest first: {order}):\n"
            + "\n".join(upward),
            pytrace=False,
        )


def _circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm,
    iterative), each sorted; sorted by their first module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return sorted(found)


def _shortest_cycle(start: str, members: set[str], edges: dict[str, set[str]]) -> list[str]:
    """A shortest path start -> ... -> start inside ``members`` (breadth first)."""
    previous = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(edges[node] & members):
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"{start} is not on a cycle")


def circle_report(sources: tuple[tuple[str, Path], ...] | None = None) -> list[str]:
    """One block of lines per import circle: its modules, a shortest example, and every
    import between two of its modules (each lies on a circle; cutting enough of them
    breaks it)."""
    edges: dict[str, set[str]] = {module: set() for module in modules(sources)}
    for i in imports(sources):
        edges[i.source].add(i.target)
    report = []
    for component in _circles(edges):
        members = set(component)
        cycle = _shortest_cycle(component[0], members, edges)
        report.append(
            f"circle of {len(component)} modules: {', '.join(component)}\n"
            f"  for example {' -> '.join(cycle)}\n"
            "  the imports inside it (cut some of these):"
        )
        for i in imports(sources):
            if i.source in members and i.target in members:
                report.append(f"    {i.where()}: {i.source} -> {i.target}")
    return report


def test_no_import_circles():
    edges: dict[str, set[str]] = {module: set() for module in modules()}
    for i in imports():
        edges[i.source].add(i.target)
    circles = _circles(edges)
    new = [c for c in circles if not any(set(c) <= known for known in KNOWN_CIRCLES)]
    fixed = [k for k in KNOWN_CIRCLES if not any(set(c) <= k for c in circles)]
    problems = [f"new import circle: {', '.join(c)}" for c in new] + [
        f"the circle of {', '.join(sorted(k))} is gone: delete it from KNOWN_CIRCLES" for k in fixed
    ]
    if problems:
        pytest.fail(
            "\n".join(problems) + "\n\nimport circles:\n" + "\n".join(circle_report()),
            pytrace=False,
        )


def test_the_import_reader_sees_lazy_relative_and_literal_dynamic_imports(tmp_path):
    """The checker on a made-up package: a circle a -> b -> c -> a held by a lazy relative
    import, an importlib call and a top-level relative import, next to a package whose
    __init__ re-exports a submodule (no circle) and a TYPE_CHECKING import."""
    files = {
        "__init__.py": "from .a import f\n",
        "a.py": "def f():\n    from . import b\n",
        "b.py": "import importlib\ndef load():\n    return importlib.import_module('pkg.c')\n",
        "c.py": "from .a import f\n",
        "sub/__init__.py": "from .inner import g\n",
        "sub/inner.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
        "    from ..d import h\ndef g():\n    pass\n",
        "d.py": "import os\nimport pkg.sub.inner as inner\n",
    }
    for name, text in files.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    sources = (("pkg", tmp_path / "pkg"),)
    found = {(i.source, i.target, i.line, i.lazy) for i in imports(sources)}
    assert found == {
        ("pkg", "pkg.a", 1, False),
        ("pkg.a", "pkg.b", 2, True),
        ("pkg.b", "pkg.c", 3, True),
        ("pkg.c", "pkg.a", 1, False),
        ("pkg.sub", "pkg.sub.inner", 1, False),
        ("pkg.sub.inner", "pkg.d", 3, False),
        ("pkg.d", "pkg.sub.inner", 2, False),
    }
    report = circle_report(sources)
    assert len(report) == 2 + 3 + 2  # two headers and the imports inside each circle
    assert report[0].startswith("circle of 3 modules: pkg.a, pkg.b, pkg.c\n")
    assert "for example pkg.a -> pkg.b -> pkg.c -> pkg.a" in report[0]
    assert report[1].endswith("pkg/a.py:2 (lazy): pkg.a -> pkg.b")
    assert report[2].endswith("pkg/b.py:3 (lazy): pkg.b -> pkg.c")
    assert report[3].endswith("pkg/c.py:1: pkg.c -> pkg.a")
    assert report[4].startswith("circle of 2 modules: pkg.d, pkg.sub.inner\n")
    assert report[5].endswith("pkg/d.py:2: pkg.d -> pkg.sub.inner")
    assert report[6].endswith("pkg/sub/inner.py:3: pkg.sub.inner -> pkg.d")


# --- size limits --------------------------------------------------------------------------


def _sized_files() -> list[Path]:
    """Every Python file of the repository outside tests/, bench/, hidden folders (.venv,
    .git) and build output."""
    found = []
    for folder, subfolders, files in os.walk(ROOT):
        here = Path(folder)
        subfolders[:] = sorted(
            name
            for name in subfolders
            if not name.startswith((".", "_build", "__pycache__"))
            and not name.endswith(".egg-info")
            and name not in {"build", "dist"}
            and not (here == ROOT and name in SIZE_EXEMPT)
        )
        found.extend(here / name for name in sorted(files) if name.endswith(".py"))
    return found


def test_no_function_over_80_lines():
    found = {}
    for path in _sized_files():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                size = node.end_lineno - node.lineno + 1
                if size > MAX_FUNCTION_LINES:
                    found[f"{_relative(path)}:{node.name}"] = size
    problems = _ratchet(found, KNOWN_LONG_FUNCTIONS, f"function over {MAX_FUNCTION_LINES} lines")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def test_no_module_over_400_lines():
    found = {}
    for path in _sized_files():
        size = len(path.read_text().splitlines())
        if size > MAX_MODULE_LINES:
            found[_relative(path)] = size
    problems = _ratchet(found, KNOWN_BIG_MODULES, f"module over {MAX_MODULE_LINES} lines")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def test_the_ratchet_catches_new_grown_and_fixed_offenders():
    known = {"a.py:f": 100, "b.py:g": 90}
    assert _ratchet({"a.py:f": 100, "b.py:g": 90}, known, "long function") == []
    problems = _ratchet({"a.py:f": 101, "c.py:h": 85}, known, "long function")
    assert problems == [
        "long function grew: a.py:f 100 -> 101 lines",
        "new long function: c.py:h (85 lines)",
        "b.py:g is no longer a long function: delete its entry from tests/test_architecture.py",
    ]
