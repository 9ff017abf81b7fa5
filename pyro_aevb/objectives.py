"""Training objectives by name: a small registry of factories returning Pyro ELBOs.

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
``dreg``       ``IWAE(estimator="dreg")``: the same bound, doubly          ``num_particles``
               reparameterized guide gradient (Tucker et al., 2019)        (K)
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

Register a new objective with :func:`register_objective`; ``fit``, the command
line and evaluation pick it up by name.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import pyro.infer
import torch
from pyro.infer import ELBO
from pyro.infer.util import get_dependent_plate_dims, is_identically_zero, torch_sum

from . import importance_weighted as iw

_OBJECTIVES: dict[str, Callable[..., ELBO]] = {}


def register_objective(name: str):
    """Decorator registering ``factory(num_particles=..., **options) -> ELBO`` as ``name``."""

    def decorator(factory):
        if name in _OBJECTIVES:
            raise ValueError(f"an objective named '{name}' is already registered")
        _OBJECTIVES[name] = factory
        return factory

    return decorator


def available_objectives() -> list[str]:
    """Names of the registered objectives."""
    return sorted(_OBJECTIVES)


def make_objective(name: str, num_particles: int = 1, **options) -> ELBO:
    """Build the objective registered as ``name``.

    :param num_particles: Monte Carlo samples per data point and step (vectorized).
    :param options: objective-specific options (e.g. ``alpha`` for ``renyi``).
    :raises ValueError: for an unknown name, an unknown option or a bad particle count.
    """
    if name not in _OBJECTIVES:
        raise ValueError(f"unknown objective '{name}'; choose one of {available_objectives()}")
    if int(num_particles) < 1:
        raise ValueError(f"num_particles must be at least 1, got {num_particles}")
    factory = _OBJECTIVES[name]
    accepted = set(inspect.signature(factory).parameters) - {"num_particles"}
    unknown = set(options) - accepted
    if unknown:
        raise ValueError(
            f"objective '{name}' takes no option(s) {sorted(unknown)}; it accepts "
            f"{sorted(accepted) or 'none besides num_particles'}"
        )
    return factory(num_particles=int(num_particles), **options)


def _particle_options(num_particles: int) -> dict:
    return {"num_particles": num_particles, "vectorize_particles": num_particles > 1}


@register_objective("elbo")
def _trace_elbo(num_particles=1):
    return pyro.infer.Trace_ELBO(**_particle_options(num_particles))


@register_objective("meanfield")
def _meanfield_elbo(num_particles=1):
    return pyro.infer.TraceMeanField_ELBO(**_particle_options(num_particles))


@register_objective("enum")
def _enum_elbo(num_particles=1):
    return pyro.infer.TraceEnum_ELBO(**_particle_options(num_particles))


class RenyiELBO(pyro.infer.RenyiELBO):
    r"""Pyro's :class:`~pyro.infer.RenyiELBO` with a ``differentiable_loss``, so that
    ``fit``'s step (and data-parallel wrappers) can call it like the other ELBOs.

    With per-particle log-weights :math:`e_k` (summed over the data plate: one
    weight for the whole minibatch, as in Pyro) the bound is
    :math:`\mathcal L_\alpha = \frac{1}{1-\alpha}\log\frac1K\sum_k e^{(1-\alpha)e_k}`
    (Li & Turner, 2016) and its gradient is :math:`\sum_k \bar w_k \nabla s_k / K`
    with the self-normalized weights :math:`\bar w_k = e^{(1-\alpha)e_k} /
    (\frac1K\sum_j e^{(1-\alpha)e_j})` and the surrogate :math:`s_k` of Pyro's
    estimator (reparameterized terms, plus :math:`\frac{\alpha}{1-\alpha}\log q`
    for score-function sites). Gradients equal those of Pyro's ``loss_and_grads``.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        values, surrogates = [], []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            value, surrogate = 0.0, 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    term = torch_sum(site["log_prob"], sum_dims)
                    value, surrogate = value + term.detach(), surrogate + term
            for site in guide_trace.nodes.values():
                if site["type"] != "sample":
                    continue
                _, score_function_term, entropy_term = site["score_parts"]
                term = torch_sum(site["log_prob"], sum_dims)
                value = value - term.detach()
                if not is_identically_zero(entropy_term):
                    if not is_identically_zero(score_function_term):
                        raise NotImplementedError(
                            "renyi cannot mix reparameterized and score-function terms in "
                            "one site (pyro-ppl/pyro#1222)"
                        )
                    surrogate = surrogate - term
                if not is_identically_zero(score_function_term):
                    surrogate = surrogate + (self.alpha / (1.0 - self.alpha)) * term
            values.append(torch.as_tensor(value))
            surrogates.append(torch.as_tensor(surrogate))
        vectorized = self.vectorize_particles and self.num_particles > 1
        value = values[0] if vectorized else torch.stack(values)
        surrogate = surrogates[0] if vectorized else torch.stack(surrogates)
        log_weights = (1.0 - self.alpha) * value
        log_mean_weight = torch.logsumexp(log_weights, 0, keepdim=True) - math.log(
            self.num_particles
        )
        loss = -log_mean_weight.sum() / (1.0 - self.alpha)
        if not getattr(surrogate, "requires_grad", False):
            return loss
        weights = (log_weights - log_mean_weight).exp()
        surrogate_loss = -(weights * surrogate).sum() / self.num_particles
        return loss + (surrogate_loss - surrogate_loss.detach())


@register_objective("renyi")
def _renyi_elbo(num_particles=2, alpha=0.0):
    if alpha == 1:
        raise ValueError("alpha = 1 is the ELBO: use objective 'elbo' (RenyiELBO excludes it)")
    if num_particles < 2:
        raise ValueError("renyi needs num_particles >= 2 to differ from the ELBO")
    return RenyiELBO(alpha=alpha, **_particle_options(num_particles))


def _required(name: str, option: str, value, meaning: str):
    if value is None:
        raise ValueError(f"objective '{name}' needs the option {option} ({meaning})")
    return value


@register_objective("iwae")
def _iwae(num_particles=2):
    return iw.IWAE(num_particles)


@register_objective("dreg")
def _dreg(num_particles=2):
    return iw.IWAE(num_particles, estimator="dreg")


@register_objective("stl")
def _stl(num_particles=1):
    return iw.STLELBO(num_particles)


@register_objective("miwae")
def _miwae(num_particles=1, num_estimates=None):
    m = _required("miwae", "num_estimates", num_estimates, "M, the number of IWAE bounds")
    return iw.MIWAE(m, num_particles)


@register_objective("ciwae")
def _ciwae(num_particles=1, beta=None):
    return iw.CIWAE(_required("ciwae", "beta", beta, "the ELBO's weight in [0, 1]"), num_particles)


@register_objective("piwae")
def _piwae(num_particles=1, num_estimates=None):
    m = _required("piwae", "num_estimates", num_estimates, "M, the number of guide bounds")
    return iw.PIWAE(m, num_particles)
