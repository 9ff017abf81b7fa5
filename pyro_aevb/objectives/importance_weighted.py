"""The per-data-point importance-weighted objectives of
:mod:`pyro_aevb.importance_weighted`: ``iwae``, ``dreg``, ``stl``, ``miwae``, ``ciwae``,
``piwae``."""

from __future__ import annotations

from .. import importance_weighted as iw
from .registry import Capabilities, ObjectiveSpec, Option, register_objective

#: M, shared by miwae and piwae (one --estimates flag)
NUM_ESTIMATES = Option(
    "num_estimates",
    int,
    "M, the number of IWAE bounds",
    required=True,
    flag="--estimates",
    example=2,
)
BETA = Option("beta", float, "the ELBO's weight in [0, 1]", required=True, example=0.5)
PATH_DERIVATIVE = Capabilities(path_derivative=True)

IWAE = register_objective(
    ObjectiveSpec(
        "iwae",
        lambda num_particles=2: iw.IWAE(num_particles),
        "the per-data-point IWAE bound",
        elbo_class=iw.IWAE,
    )
)
DREG = register_objective(
    ObjectiveSpec(
        "dreg",
        lambda num_particles=2: iw.DReG(num_particles),
        "the IWAE bound with the doubly reparameterized guide gradient",
        capabilities=PATH_DERIVATIVE,
        elbo_class=iw.DReG,
    )
)
STL = register_objective(
    ObjectiveSpec(
        "stl",
        lambda num_particles=1: iw.STLELBO(num_particles),
        "the ELBO with the sticking-the-landing guide gradient",
        capabilities=PATH_DERIVATIVE,
        elbo_class=iw.STLELBO,
    )
)
MIWAE = register_objective(
    ObjectiveSpec(
        "miwae",
        lambda num_particles=1, num_estimates=None: iw.MIWAE(num_estimates, num_particles),
        "the mean of M IWAE-K bounds",
        options=(NUM_ESTIMATES,),
        elbo_class=iw.MIWAE,
    )
)
CIWAE = register_objective(
    ObjectiveSpec(
        "ciwae",
        lambda num_particles=1, beta=None: iw.CIWAE(beta, num_particles),
        "beta * ELBO + (1 - beta) * IWAE_K",
        options=(BETA,),
        elbo_class=iw.CIWAE,
    )
)
PIWAE = register_objective(
    ObjectiveSpec(
        "piwae",
        lambda num_particles=1, num_estimates=None: iw.PIWAE(num_estimates, num_particles),
        "the model follows IWAE_MK, the guide MIWAE(M, K)",
        options=(NUM_ESTIMATES,),
        elbo_class=iw.PIWAE,
    )
)
