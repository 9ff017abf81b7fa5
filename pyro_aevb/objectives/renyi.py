"""``renyi``: Pyro's Rényi divergence bound (Li & Turner, 2016) with a ``differentiable_loss``."""

from __future__ import annotations

import math

import pyro.infer
import torch
from pyro.infer.util import get_dependent_plate_dims, is_identically_zero, torch_sum

from .pyro_elbos import particle_options
from .registry import Capabilities, ObjectiveSpec, Option, register_objective


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


def _renyi_elbo(num_particles=2, alpha=0.0):
    if alpha == 1:
        raise ValueError("alpha = 1 is the ELBO: use objective 'elbo' (RenyiELBO excludes it)")
    return RenyiELBO(alpha=alpha, **particle_options(num_particles))


RENYI = register_objective(
    ObjectiveSpec(
        "renyi",
        _renyi_elbo,
        "RenyiELBO, one weight for the whole minibatch",
        options=(
            Option(
                "alpha",
                float,
                "the Renyi alpha, not 1 (0, the default, is the IWAE bound)",
                example=0.5,
            ),
        ),
        capabilities=Capabilities(min_particles=2),
        elbo_class=RenyiELBO,
        min_particles_reason="to differ from the ELBO",
    )
)
