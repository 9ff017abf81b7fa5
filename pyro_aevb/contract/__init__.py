"""The model/guide contract, and the check that enforces it on the first batch.

A *model* and a *guide* are callables, ideally ``nn.Module`` s whose ``forward``
is the Pyro program, that follow four rules:

1. **Same arguments.** Both are called with keyword arguments taken from the
   batch by name (``x`` the data, ``y`` the labels, ...). Each receives the
   fields its signature names (all of them if it takes ``**kwargs``); other
   names, positional-only arguments and ``model``/``guide`` methods of one
   ``nn.Module`` go through :mod:`pyro_aevb.arguments`.
2. **One data plate.** Per-data-point sites live in one outermost plate over
   the batch, whatever its name (:func:`pyro_aevb.plate.find_data_plate`):
   :func:`pyro_aevb.data_plate`, ``pyro.plate("data", len(x))``,
   ``pyro.plate("data")``, ``pyro.plate("data", N, subsample=idx)``. During
   :func:`fit` its sites weigh ``N / B``
   (:class:`pyro_aevb.plate.DataPlateScale`); the guide uses the same plate.
3. **Observed sites** are given with ``obs=``.
4. **Matching latents.** The guide samples every latent site of the model, with
   the same name, shape and ``event_dim`` (a model site marked for enumeration
   may be left out of the guide when the objective enumerates).

Parameters are registered with Pyro (``pyro.module`` or ``PyroModule``) so that
SVI optimizes them. A new pair takes twenty lines::

    import pyro, pyro.distributions as dist, torch
    from torch import nn
    from pyro_aevb import data_plate

    class LinearGaussian(nn.Module):              # p(z) p(x | z)
        def __init__(self, x_dim, z_dim):
            super().__init__()
            self.z_dim, self.decoder = z_dim, nn.Linear(z_dim, x_dim)

        def forward(self, x):
            pyro.module("decoder", self.decoder)
            with data_plate(x):
                z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(self.decoder(z), 1.0).to_event(1), obs=x)

    class LinearEncoder(nn.Module):               # q(z | x)
        def __init__(self, x_dim, z_dim):
            super().__init__()
            self.loc, self.log_scale = nn.Linear(x_dim, z_dim), nn.Parameter(torch.zeros(z_dim))

        def forward(self, x):
            pyro.module("encoder", self)
            with data_plate(x):
                pyro.sample("z", dist.Normal(self.loc(x), self.log_scale.exp()).to_event(1))

:func:`check_pair` runs both on the first batch before any training step and
raises :class:`ContractError` naming the missing, extra or misshaped sites.

The checks live in modules by what they check: :mod:`~pyro_aevb.contract.errors` (the
error and :class:`PairSummary`), :mod:`~pyro_aevb.contract.call` (arguments, running the
programs), :mod:`~pyro_aevb.contract.sites` (rules 3 and 4),
:mod:`~pyro_aevb.contract.plates` (rule 2, and what per-data-point evaluation needs),
:mod:`~pyro_aevb.contract.support` (observed values and supports),
:mod:`~pyro_aevb.contract.advice`; :mod:`~pyro_aevb.contract.check` composes them.
Drawing evaluation's particles is the particle layer's:
:func:`pyro_aevb.particles.summarize_pair` runs :func:`check_pair` and then that probe.
"""

from .advice import objective_advice
from .call import PairTraces, batch_size_of, call_arguments, run_program, trace_pair
from .check import check_pair, merge_summaries
from .errors import ContractError, PairSummary, raise_problems, warn_once
from .errors import _warned as _warned  # the warnings given, which tests reset
from .plates import (
    PlateLayout,
    check_test_evaluation,
    data_plate_of,
    plate_layout,
    require_per_datapoint,
)
from .sites import frames, is_latent_site, param_names, site_problems
from .support import (
    check_data_support,
    elementwise_support,
    observed_field,
    observed_value_fields,
    same_storage,
    support_check_enabled,
    support_hint,
)

__all__ = [
    "ContractError",
    "PairSummary",
    "PairTraces",
    "PlateLayout",
    "batch_size_of",
    "call_arguments",
    "check_data_support",
    "check_pair",
    "check_test_evaluation",
    "data_plate_of",
    "elementwise_support",
    "frames",
    "is_latent_site",
    "merge_summaries",
    "objective_advice",
    "observed_field",
    "observed_value_fields",
    "param_names",
    "plate_layout",
    "raise_problems",
    "require_per_datapoint",
    "run_program",
    "same_storage",
    "site_problems",
    "support_check_enabled",
    "support_hint",
    "trace_pair",
    "warn_once",
]
