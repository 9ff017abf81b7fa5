r"""``free_bits``: the ELBO with a KL floor on every latent dimension (Kingma et al., 2016).

The IAF paper's free bits keep each latent dimension :math:`j` from paying less than
:math:`\lambda` nats of KL. The minibatch objective, per data point, is

.. math::

    \mathcal L_\lambda = \frac1B \sum_{i} \mathbb E_q\big[\log p_\theta(x_i \mid z)\big]
    - \sum_j \max\Big(\lambda,\ \frac1B \sum_i \mathrm{KL}\big(q(z_j \mid x_i)
    \,\|\, p(z_j)\big)\Big),

where a *dimension* (a group, in the paper's terms) is one coordinate of a latent site's
event, and of any plate besides the data plate; the KL is averaged over the minibatch
(and the particles) before the floor. A dimension below the floor contributes the
constant :math:`\lambda`, so its KL has no gradient and the optimizer has no reason to
push it further to the prior; a dimension above it contributes its KL, so its gradient
is the ELBO's. With the data plate's scale :math:`N/B` and ``fit``'s :math:`1/N`, the
floor is weighed as the KL is (:math:`\lambda` times the sites' total scale), so the
loss is in nats per data point like the other objectives'.

The KL of a dimension is analytic where both densities factorize into univariate
Normals along the event (the VAE's diagonal guide and standard normal prior,
:func:`per_dimension_kl`) and otherwise the Monte Carlo term
:math:`\log q_j(z_j) - \log p_j(z_j)` of ``Independent`` univariate bases; densities
that couple dimensions have no per-dimension KL and are refused. At :math:`\lambda = 0`
there is no floor: the objective is then exactly ``TraceMeanField_ELBO`` (analytic) or
``Trace_ELBO`` (Monte Carlo), same loss and gradient for the same draws. (A Monte Carlo
KL estimate can be negative; clipping it at 0 would bias the ELBO's gradient.) With
a Monte Carlo KL and :math:`\lambda > 0` the floor compares a noisy estimate.

**The loss is not an ELBO**: it is :math:`-\mathcal L_\lambda \ge -\mathrm{ELBO}`,
which the history's ``train_elbo`` records; the test ELBO, the log-likelihood and
``evaluate`` use the model and guide only, never the objective, and stay the
unmodified bound. Latent sites must be reparameterizable and inside the data plate.
"""

from __future__ import annotations

import math

import pyro.infer
import torch
from pyro.util import warn_if_nan

from ..contract import is_latent_site
from ..plate import find_data_plate
from .pyro_elbos import particle_options
from .registry import Capabilities, ObjectiveSpec, Option, register_objective

#: the plate Pyro's ELBOs draw vectorized particles in
_PYRO_PARTICLE_PLATE = "num_particles_vectorized"


class PerDimensionKLError(ValueError):
    """A latent site's densities do not factorize per dimension."""


def univariate_base(fn):
    """The univariate distribution whose product over the event is ``fn`` (``Independent``
    wrappers unwrapped, batch shape ``fn.batch_shape + fn.event_shape``), or ``None``
    when ``fn`` couples its event dimensions (a full covariance, a flow)."""
    if len(fn.event_shape) == 0:
        return fn
    while isinstance(fn, torch.distributions.Independent):
        fn = fn.base_dist
    return fn if len(fn.event_shape) == 0 else None


def per_dimension_kl(
    q_fn, p_fn, value: torch.Tensor, site: str, analytic: bool = True
) -> tuple[torch.Tensor, bool]:
    r"""Elementwise KL terms of a latent site, shape ``batch + event`` (nats), and
    whether they are analytic.

    Normal/Normal: :math:`\log\frac{\sigma_p}{\sigma_q} + \frac{\sigma_q^2 + (\mu_q -
    \mu_p)^2}{2\sigma_p^2} - \frac12`; other univariate bases: the one-draw Monte Carlo
    term :math:`\log q_j(z_j) - \log p_j(z_j)` at ``value``, a draw from ``q_fn`` (also
    for Normals with ``analytic=False``).

    :raises PerDimensionKLError: when either density couples its event dimensions.
    """
    q_base, p_base = univariate_base(q_fn), univariate_base(p_fn)
    if q_base is None or p_base is None:
        which = type(q_fn if q_base is None else p_fn).__name__
        raise PerDimensionKLError(
            f"site '{site}': a per-dimension KL needs q(z|x) and p(z) to factorize over the "
            f"event's dimensions, but {which} couples them; it works for "
            "Normal(...).to_event(...) or any Independent of univariate distributions "
            "(e.g. the diagonal Gaussian pyro_aevb.guides.DiagonalNormalGuide)"
        )
    normal = torch.distributions.Normal
    if analytic and isinstance(q_base, normal) and isinstance(p_base, normal):
        return torch.distributions.kl_divergence(q_base, p_base), True
    return q_base.log_prob(value) - p_base.log_prob(value), False


def _weights(site: dict, shape: torch.Size) -> torch.Tensor:
    """The site's scale times its mask, broadcast to ``shape`` (``batch + event``)."""
    event_dim = len(site["fn"].event_shape)
    weight = torch.as_tensor(site["scale"], dtype=torch.get_default_dtype())
    if site["mask"] is not None:
        weight = weight * torch.as_tensor(site["mask"])
    weight = weight.reshape(weight.shape + (1,) * event_dim) if weight.dim() else weight
    return weight.to(site["value"].device).expand(shape)


class FreeBitsELBO(pyro.infer.Trace_ELBO):
    r"""The ELBO with a floor of ``free_bits`` nats (:math:`\lambda`) on the minibatch-
    averaged KL of every latent dimension (see :mod:`pyro_aevb.objectives.free_bits`).

    :param free_bits: :math:`\lambda \ge 0`, nats per data point and dimension.
    :param analytic_kl: use the Normal/Normal closed form where it applies (else always
        the Monte Carlo term, as ``Trace_ELBO`` does).
    :param num_particles, vectorize_particles, max_plate_nesting: as for ``Trace_ELBO``.
    """

    def __init__(self, free_bits: float, analytic_kl: bool = True, **elbo_options):
        free_bits = float(free_bits)
        if not (0.0 <= free_bits < math.inf):
            raise ValueError(f"free_bits must be a finite number of nats >= 0, got {free_bits}")
        super().__init__(**elbo_options)
        self.free_bits, self.analytic_kl = free_bits, analytic_kl

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The negative free-bits objective, a tensor to differentiate."""
        likelihood, totals, weights = 0.0, {}, {}
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            likelihood = likelihood + self._observed_log_prob(model_trace)
            for name, (total, weight) in self._kl_by_dimension(model_trace, guide_trace).items():
                totals[name] = totals.get(name, 0.0) + total
                weights[name] = weights.get(name, 0.0) + weight
        loss = -likelihood / self.num_particles
        for name, total in totals.items():
            total, weight = total / self.num_particles, weights[name] / self.num_particles
            floored = torch.maximum(total, self.free_bits * weight) if self.free_bits else total
            loss = loss + floored.sum()
        warn_if_nan(loss, "loss")
        return loss

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return float(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return loss.item()

    @staticmethod
    def _observed_log_prob(model_trace) -> torch.Tensor:
        """The scaled, masked log-likelihood of the observed sites."""
        return sum(
            site["log_prob_sum"]
            for site in model_trace.nodes.values()
            if site["type"] == "sample" and site["is_observed"]
        )

    def _kl_by_dimension(self, model_trace, guide_trace) -> dict:
        """Site -> (scaled KL summed over the data and particle plates, the scale summed
        alike), each of the shape of the site's dimensions."""
        plate = find_data_plate(model_trace, ignore=frozenset({_PYRO_PARTICLE_PLATE}))
        out = {}
        for name, site in guide_trace.nodes.items():
            if not is_latent_site(site):
                continue
            if not site["fn"].has_rsample:
                raise NotImplementedError(
                    f"free bits need reparameterizable latents, but the guide's site '{name}' "
                    "is not; sum discrete latents out with the 'enum' objective"
                )
            averaged = [
                f
                for f in site["cond_indep_stack"]
                if f.vectorized and f.name in (plate, _PYRO_PARTICLE_PLATE)
            ]
            if plate is None or not any(f.name == plate for f in averaged):
                raise ValueError(
                    f"free bits floor the KL averaged over the data plate, but latent site "
                    f"'{name}' is outside it; put it in pyro_aevb.data_plate(x)"
                )
            prior = model_trace.nodes[name]["fn"]
            kl, _ = per_dimension_kl(site["fn"], prior, site["value"], name, self.analytic_kl)
            out[name] = self._sum_plates(kl, site, averaged)
        return out

    @staticmethod
    def _sum_plates(kl: torch.Tensor, site: dict, frames: list) -> tuple:
        """``(sum of scale * mask * kl, sum of scale * mask)`` over the plates ``frames``."""
        event_dim = len(site["fn"].event_shape)
        batch_dims = max(-f.dim for f in frames)
        missing = batch_dims - (kl.dim() - event_dim)
        if missing > 0:
            kl = kl.reshape((1,) * missing + tuple(kl.shape))
        weight = _weights(site, kl.shape)
        dims = [f.dim - event_dim for f in frames]
        return (kl * weight).sum(dims), weight.sum(dims)


def _free_bits_elbo(num_particles=1, free_bits=None):
    return FreeBitsELBO(free_bits, **particle_options(num_particles))


FREE_BITS = register_objective(
    ObjectiveSpec(
        "free_bits",
        _free_bits_elbo,
        "the ELBO with a KL floor on each latent dimension (free bits); its loss is no ELBO",
        options=(
            Option(
                "free_bits",
                float,
                "lambda, the KL floor of each latent dimension, nats per data point",
                required=True,
                example=0.25,
            ),
        ),
        # a KL weight would scale floor and KL alike, but the registry's KL-weight list is
        # pinned by tests/test_objectives.py; see the report
        capabilities=Capabilities(),
        elbo_class=FreeBitsELBO,
    )
)
