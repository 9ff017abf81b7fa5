"""Objectives as registered specs: a factory, its options and its capabilities.

An :class:`ObjectiveSpec` is all the library knows about an objective: how to build
the Pyro ``ELBO`` (``factory(num_particles=K, **options)``), which options it takes
(with the help text from which the command-line flags are generated,
:mod:`pyro_aevb.objectives.flags`), and what it can do (:class:`Capabilities`), which
``fit``, the command line and the run configuration ask instead of testing names.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pyro.infer import ELBO, TraceEnum_ELBO, TraceTMC_ELBO


@dataclass(frozen=True)
class Option:
    """One option of an objective, besides ``num_particles``.

    :param name: the factory's keyword.
    :param type: converts a command-line string (``float``, ``int``).
    :param help: what it means, for the flag's help and the error when it is missing.
    :param required: whether the objective cannot do without it.
    :param flag: the command-line flag (default ``--name`` with dashes).
    :param example: a valid value, which the parametrized tests build the objective with.
    """

    name: str
    type: Callable[[str], Any]
    help: str
    required: bool = False
    flag: str | None = None
    example: Any = None

    @property
    def cli_flag(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Capabilities:
    """What an objective can do, asked by ``fit`` and the command line.

    :param kl_weight: its loss separates into a likelihood term and latent-site terms,
        so a KL weight (:mod:`pyro_aevb.annealing`) applies.
    :param enumerates: it sums out discrete sites marked for enumeration.
    :param min_particles: the fewest particles ``K`` for which it is what it says
        (2 for an objective that is the ELBO at ``K = 1`` and refuses to pretend).
    :param path_derivative: its guide gradient is a path derivative (DReG, STL); such
        objectives re-evaluate :math:`\\log q` and need a guide that is deterministic
        given its latents.
    """

    kl_weight: bool = False
    enumerates: bool = False
    min_particles: int = 1
    path_derivative: bool = False


@dataclass(frozen=True)
class ObjectiveSpec:
    """A registered objective.

    :param name: the name ``fit(objective=...)`` and ``--objective`` take.
    :param factory: ``factory(num_particles=K, **options) -> ELBO``.
    :param summary: one line, for the command line's help.
    :param options: the options besides ``num_particles``.
    :param capabilities: what it can do.
    :param elbo_class: the class the factory builds, so that an instance passed to
        ``fit`` directly is recognized and gets these capabilities.
    :param min_particles_reason: why fewer than ``min_particles`` are refused.
    """

    name: str
    factory: Callable[..., ELBO]
    summary: str = ""
    options: tuple[Option, ...] = ()
    capabilities: Capabilities = field(default_factory=Capabilities)
    elbo_class: type | None = None
    min_particles_reason: str = ""

    def option(self, name: str) -> Option | None:
        return next((o for o in self.options if o.name == name), None)

    def example_options(self) -> dict:
        """Valid values of the required options (for tests and examples)."""
        return {o.name: o.example for o in self.options if o.required}

    def build(self, num_particles: int = 1, **options) -> ELBO:
        """Check ``num_particles`` and ``options`` against the spec and build the ELBO.

        :raises ValueError: for a bad particle count, an unknown or a missing option.
        """
        if int(num_particles) < 1:
            raise ValueError(f"num_particles must be at least 1, got {num_particles}")
        least = self.capabilities.min_particles
        if int(num_particles) < least:
            raise ValueError(
                f"{self.name} needs num_particles >= {least}"
                + (f" {self.min_particles_reason}" if self.min_particles_reason else "")
                + f", got {num_particles}"
            )
        accepted = {o.name for o in self.options}
        unknown = set(options) - accepted
        if unknown:
            raise ValueError(
                f"objective '{self.name}' takes no option(s) {sorted(unknown)}; it accepts "
                f"{sorted(accepted) or 'none besides num_particles'}"
            )
        for o in self.options:
            if o.required and options.get(o.name) is None:
                raise ValueError(f"objective '{self.name}' needs the option {o.name} ({o.help})")
        given = {k: v for k, v in options.items() if v is not None}
        return self.factory(num_particles=int(num_particles), **given)


_OBJECTIVES: dict[str, ObjectiveSpec] = {}


def _options_from_signature(factory: Callable) -> tuple[Option, ...]:
    """Options of a plain factory registered by name: its keywords besides
    ``num_particles``, required when they have no default."""
    out = []
    for p in inspect.signature(factory).parameters.values():
        if p.name == "num_particles" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        required = p.default is inspect.Parameter.empty
        kind = type(p.default) if not required and p.default is not None else float
        out.append(Option(p.name, kind, f"option {p.name} of this objective", required))
    return tuple(out)


def register_objective(spec: ObjectiveSpec | str, **spec_fields):
    """Register an objective.

    ``register_objective(ObjectiveSpec(...))`` registers a spec and returns it;
    ``@register_objective("name", capabilities=..., ...)`` decorates a factory
    ``factory(num_particles=..., **options) -> ELBO`` (its options then come from its
    signature unless ``options=`` is given) and returns the factory.

    :raises ValueError: if the name is taken.
    """
    if isinstance(spec, ObjectiveSpec):
        if spec_fields:
            raise TypeError("give the fields in the ObjectiveSpec, not as keywords")
        _add(spec)
        return spec

    def decorator(factory):
        fields = dict(spec_fields)
        fields.setdefault("options", _options_from_signature(factory))
        _add(ObjectiveSpec(name=spec, factory=factory, **fields))
        return factory

    return decorator


def _add(spec: ObjectiveSpec) -> None:
    if spec.name in _OBJECTIVES:
        raise ValueError(f"an objective named '{spec.name}' is already registered")
    _OBJECTIVES[spec.name] = spec


def available_objectives() -> list[str]:
    """Names of the registered objectives."""
    return sorted(_OBJECTIVES)


def get_objective(name: str) -> ObjectiveSpec:
    """The spec registered as ``name``.

    :raises ValueError: for an unknown name, listing the known ones.
    """
    if not isinstance(name, str) or name not in _OBJECTIVES:
        raise ValueError(f"unknown objective '{name}'; choose one of {available_objectives()}")
    return _OBJECTIVES[name]


def objective_specs() -> list[ObjectiveSpec]:
    """The registered specs, by name."""
    return [_OBJECTIVES[n] for n in available_objectives()]


def make_objective(name: str, num_particles: int = 1, **options) -> ELBO:
    """Build the objective registered as ``name``.

    :param num_particles: Monte Carlo samples per data point and step (vectorized).
    :param options: objective-specific options (e.g. ``alpha`` for ``renyi``).
    :raises ValueError: for an unknown name, an unknown option or a bad particle count.
    """
    return get_objective(name).build(num_particles, **options)


def with_capability(capability: str) -> list[str]:
    """Names of the registered objectives that have ``capability`` (a field of
    :class:`Capabilities`), for error messages."""
    return [s.name for s in objective_specs() if getattr(s.capabilities, capability)]


def capabilities_of(objective: str | ELBO) -> Capabilities:
    """The capabilities of a registered name or of an ``ELBO`` instance.

    An instance of a class a spec builds (``elbo_class``) has that spec's
    capabilities; another one enumerates if it is a ``TraceEnum_ELBO`` or
    ``TraceTMC_ELBO`` and has no other capability (a KL weight is refused, as for
    any objective not known to separate its latent terms).

    :raises TypeError: for anything but a name or an ``ELBO``.
    """
    if isinstance(objective, str):
        return get_objective(objective).capabilities
    if not isinstance(objective, ELBO):
        raise TypeError(
            "objective must be the name of a registered objective "
            f"({', '.join(available_objectives())}) or a pyro.infer.ELBO instance, "
            f"got {type(objective).__name__}"
        )
    for spec in _OBJECTIVES.values():
        if spec.elbo_class is not None and type(objective) is spec.elbo_class:
            return spec.capabilities
    return Capabilities(enumerates=isinstance(objective, (TraceEnum_ELBO, TraceTMC_ELBO)))


def objective_name(objective: str | ELBO) -> str:
    """The name of a registered objective, or the class name of an ``ELBO`` instance
    (what run configurations and messages call it)."""
    return objective if isinstance(objective, str) else type(objective).__name__


def resolve_objective(
    objective: str | ELBO, num_particles: int = 1, options: dict | None = None
) -> tuple[ELBO, Capabilities]:
    """An ``ELBO`` and its capabilities from what ``fit`` was given: a registered name
    (built with ``num_particles`` and ``options``) or an ``ELBO`` instance, used as it
    is (as ``pyro.infer.SVI(loss=...)`` does).

    :raises ValueError: for options or a particle count given with an instance, which
        has its own.
    """
    capabilities = capabilities_of(objective)
    if isinstance(objective, str):
        return make_objective(objective, num_particles, **(options or {})), capabilities
    if options:
        raise ValueError(
            f"objective_options {sorted(options)} apply to a registered objective's name; "
            f"the {type(objective).__name__} instance given is already built with its own"
        )
    own = getattr(objective, "num_particles", 1)
    if int(num_particles) not in (1, int(own)):
        raise ValueError(
            f"num_particles={num_particles} was given with a {type(objective).__name__} "
            f"instance that draws num_particles={own}; build the instance with the "
            "particles you want and leave num_particles out"
        )
    return objective, capabilities
