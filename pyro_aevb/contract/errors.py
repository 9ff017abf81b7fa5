"""What a check of a pair raises and what it returns: :class:`ContractError`,
:class:`PairSummary`, and the one-time warnings of the checks."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

from pyro.distributions import constraints

from ..plate import DATA_PLATE


class ContractError(ValueError):
    """A model/guide pair does not follow the contract of :mod:`pyro_aevb.contract`."""


@dataclass
class PairSummary:
    """What :func:`~pyro_aevb.contract.check_pair` learned about a pair from the first batch."""

    latent_sites: list[str]
    observed_sites: list[str]
    enumerated_model_sites: list[str]
    global_latent_sites: list[str]
    data_dim: int
    max_plate_nesting: int
    #: observed site name -> (data field it observes, elementwise support of its distribution)
    observed_fields: dict[str, tuple[str, constraints.Constraint]] = field(default_factory=dict)
    #: names of the Pyro parameters the model uses (those it shares with the guide included)
    model_params: list[str] = field(default_factory=list)
    #: names of the Pyro parameters only the guide uses
    guide_params: list[str] = field(default_factory=list)
    #: guide sites marked for parallel enumeration, and the number of joint values
    #: they take (the factor by which enumeration multiplies a batch's rows)
    enumerated_guide_sites: list[str] = field(default_factory=list)
    guide_enumeration_size: int = 1
    #: the name of the data plate, the outermost plate of the observed sites
    #: (``"data"`` for the library's :func:`~pyro_aevb.data_plate`)
    data_plate: str = DATA_PLATE
    #: how evaluation draws particles for this pair: ``"vectorized"`` (one pass through
    #: a plate of particles), ``"loop"`` (one pass per particle, for code that does not
    #: broadcast over a leading dimension) or ``None`` (not probed: see
    #: :func:`pyro_aevb.particles.summarize_pair`)
    particle_mode: str | None = None
    #: whether observed values were checked against the likelihoods' supports
    support_checked: bool = True


#: the keys :func:`warn_once` has warned about in this process
_warned: set[str] = set()


def warn_once(key: str, message: str, stacklevel: int = 3) -> None:
    """Warn with ``message`` the first time ``key`` comes up in this process (by default
    at the line that called the function calling this one)."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=stacklevel)


def raise_problems(problems: list[str]) -> None:
    """One :class:`ContractError` listing every problem found, if any."""
    if problems:
        raise ContractError(
            "the model/guide pair does not follow the contract (see pyro_aevb.contract):\n  - "
            + "\n  - ".join(problems)
        )
