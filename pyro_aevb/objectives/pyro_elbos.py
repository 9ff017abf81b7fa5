"""Pyro's own ELBOs: ``elbo``, ``meanfield`` and ``enum``, with vectorized particles."""

from __future__ import annotations

import pyro.infer

from .registry import Capabilities, ObjectiveSpec, register_objective


def particle_options(num_particles: int) -> dict:
    """Pyro's keywords for ``num_particles`` drawn in one vectorized pass."""
    return {"num_particles": num_particles, "vectorize_particles": num_particles > 1}


def _trace_elbo(num_particles=1):
    return pyro.infer.Trace_ELBO(**particle_options(num_particles))


def _meanfield_elbo(num_particles=1):
    return pyro.infer.TraceMeanField_ELBO(**particle_options(num_particles))


def _enum_elbo(num_particles=1):
    return pyro.infer.TraceEnum_ELBO(**particle_options(num_particles))


ELBO = register_objective(
    ObjectiveSpec(
        "elbo",
        _trace_elbo,
        "Trace_ELBO, the Monte Carlo ELBO",
        capabilities=Capabilities(kl_weight=True),
        elbo_class=pyro.infer.Trace_ELBO,
    )
)
MEANFIELD = register_objective(
    ObjectiveSpec(
        "meanfield",
        _meanfield_elbo,
        "TraceMeanField_ELBO, the analytic KL where it exists",
        capabilities=Capabilities(kl_weight=True),
        elbo_class=pyro.infer.TraceMeanField_ELBO,
    )
)
ENUM = register_objective(
    ObjectiveSpec(
        "enum",
        _enum_elbo,
        "TraceEnum_ELBO, discrete sites marked for enumeration summed out",
        capabilities=Capabilities(enumerates=True),
        elbo_class=pyro.infer.TraceEnum_ELBO,
    )
)
