"""A test-local objective in one file, as a newcomer would add one: Pyro's Trace_ELBO
with its particles drawn one pass each (for pairs that cannot broadcast over a leading
particle dimension). Importing this module registers it; nothing else is edited."""

import pyro.infer

from pyro_aevb.objectives import Capabilities, ObjectiveSpec, register_objective


class LoopedTraceELBO(pyro.infer.Trace_ELBO):
    """Trace_ELBO, one pass per particle (its own class, so a passed instance is known)."""


SPEC = register_objective(
    ObjectiveSpec(
        "elbo_loop",
        lambda num_particles=1: LoopedTraceELBO(num_particles=num_particles),
        "Trace_ELBO with one pass per particle",
        capabilities=Capabilities(kl_weight=True),
        elbo_class=LoopedTraceELBO,
    )
)
