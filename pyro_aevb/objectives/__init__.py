"""Training objectives by name: registered specs (:mod:`.registry`) of Pyro ELBOs.

=============  ==========================================================  =================
name           objective                                                   options
=============  ==========================================================  =================
``elbo``       :class:`~pyro.infer.Trace_ELBO`, Monte Carlo ELBO           ``num_particles``
``meanfield``  :class:`~pyro.infer.TraceMeanField_ELBO`, analytic KL       ``num_particles``
               where the guide and prior admit one
``enum``       :class:`~pyro.infer.TraceEnum_ELBO`, discrete sites         ``num_particles``
               marked for enumeration are summed out exactly
``renyi``      :class:`RenyiELBO` (Li & Turner, 2016);                     ``num_particles``,
               ``alpha = 0`` is the IWAE bound (Burda et al., 2016)        ``alpha``
``iwae``       :class:`~pyro_aevb.importance_weighted.IWAE`, the per-      ``num_particles``
               data-point IWAE bound (Burda et al., 2016)                  (K)
``dreg``       :class:`~pyro_aevb.importance_weighted.DReG`: the same      ``num_particles``
               bound, doubly reparameterized guide gradient (Tucker et     (K)
               al., 2019)
``stl``        :class:`~pyro_aevb.importance_weighted.STLELBO`, the ELBO   ``num_particles``
               with the path-derivative guide gradient (Roeder et al.,
               2017)
``miwae``      :class:`~pyro_aevb.importance_weighted.MIWAE`, the mean of  ``num_particles``
               M IWAE-K bounds (Rainforth et al., 2018)                    (K),
                                                                           ``num_estimates``
                                                                           (M)
``ciwae``      :class:`~pyro_aevb.importance_weighted.CIWAE`,              ``num_particles``
               ``beta * ELBO + (1 - beta) * IWAE_K`` (Rainforth et al.,    (K), ``beta``
               2018)
``piwae``      :class:`~pyro_aevb.importance_weighted.PIWAE`: the model    ``num_particles``
               follows IWAE_MK, the guide MIWAE(M, K) (Rainforth et al.,   (K),
               2018); the loss is -IWAE_MK                                 ``num_estimates``
                                                                           (M)
=============  ==========================================================  =================

Particles are vectorized. Pyro's ``RenyiELBO`` forms one importance weight for
the whole minibatch (see pyro-ppl/pyro#3104), so for models with per-data-point
latents it is looser than a per-data-point IWAE bound; use it with that in mind.
The importance-weighted objectives (``iwae`` to ``piwae``) weight each data point
separately; ``num_particles`` is always K, the particles of one bound, so ``miwae``
and ``piwae`` draw ``num_estimates * num_particles`` samples per data point and step.

**Adding an objective** takes one new file: a module in this package that registers an
:class:`ObjectiveSpec` (its factory, its options with help text, its capabilities) with
:func:`register_objective` is imported with the package, and ``fit``, the command line
(``--objective`` and one flag per option, :mod:`.flags`) and the parametrized tests
pick it up. Outside the package, importing a module that registers a spec does the same;
the command line imports the user's modules named in ``PYRO_AEVB_PLUGINS`` or in entry
points (:mod:`.plugins`, one rule for objectives and pairs).
``fit(objective=...)`` also takes any Pyro ``ELBO`` instance, as ``SVI(loss=...)`` does
(:func:`resolve_objective`).
"""

from __future__ import annotations

import importlib
import pkgutil

from .registry import (
    Capabilities,
    ObjectiveSpec,
    Option,
    available_objectives,
    capabilities_of,
    get_objective,
    make_objective,
    objective_name,
    objective_specs,
    register_objective,
    resolve_objective,
    with_capability,
)

# Every other module of the package registers objectives: importing them here is what
# makes "one new file" enough.
for _module in pkgutil.iter_modules(__path__):
    if _module.name not in ("registry", "flags", "plugins"):
        importlib.import_module(f"{__name__}.{_module.name}")

from .plugins import load_plugins  # noqa: E402
from .renyi import RenyiELBO  # noqa: E402

__all__ = [
    "Capabilities",
    "ObjectiveSpec",
    "Option",
    "RenyiELBO",
    "available_objectives",
    "capabilities_of",
    "get_objective",
    "load_plugins",
    "make_objective",
    "objective_name",
    "objective_specs",
    "register_objective",
    "resolve_objective",
    "with_capability",
]
