r"""The template of the importance-weighted objectives and its two gradient variants.

:class:`ImportanceWeightedELBO` draws the particles and differentiates the bound through
the reparameterized samples; :class:`SplitGradientELBO` weights the particles differently
for the model and the guide; :class:`PathDerivativeELBO` keeps only the path derivative
of the guide gradient (see :mod:`pyro_aevb.importance_weighted`).
"""

from __future__ import annotations

import math
import numbers

import torch
from pyro.infer import ELBO
from pyro.util import warn_if_nan

from ..contexts import rng_state
from ..contract import is_latent_site
from ..particles import ParticleDraws, draw_particles, guide_log_density_at


def _count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _log_mean_exp(log_w: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


class ImportanceWeightedELBO(ELBO):
    """Base class: draw ``num_estimates * num_particles`` particles per data point in one
    vectorized pass, form the per-point bound, and return minus its sum, scaled to the
    full data set.

    Subclasses define :meth:`bound`; those whose gradient is not the reparameterized
    gradient of the bound override :meth:`_surrogate_loss` (see
    :class:`SplitGradientELBO` and :class:`PathDerivativeELBO`).

    :param int num_particles: :math:`K`, particles per bound.
    :param int num_estimates: :math:`M`, bounds per data point.
    :param int max_plate_nesting: the pair's plate nesting (the objective adds the plate
        of particles, as Pyro does); guessed by running the pair once if omitted.
    """

    def __init__(self, num_particles: int, num_estimates: int = 1, max_plate_nesting=None):
        self.num_estimates = _count(num_estimates, "num_estimates")
        super().__init__(
            num_particles=_count(num_particles, "num_particles"), vectorize_particles=True
        )
        if max_plate_nesting is not None:
            # the pair's plates and the plate of particles
            self.max_plate_nesting = max_plate_nesting + 1

    def _guess_max_plate_nesting(self, model, guide, args, kwargs):
        super()._guess_max_plate_nesting(model, guide, args, kwargs)
        if self.num_particles == 1:
            # Pyro counts the plate of particles for num_particles > 1 only; these
            # objectives draw num_estimates * num_particles in it, in a plate even of size 1
            self.max_plate_nesting += 1

    def _ensure_plate_nesting(self, model, guide, args, kwargs):
        if self.max_plate_nesting == float("inf"):
            self._guess_max_plate_nesting(model, guide, args, kwargs)

    def _draw(self, model, guide, args, kwargs, detach_latents=False) -> ParticleDraws:
        total = self.num_estimates * self.num_particles
        pair_nesting = int(self.max_plate_nesting) - 1
        return draw_particles(model, guide, args, kwargs, total, pair_nesting, detach_latents)

    def _get_trace(self, model, guide, args, kwargs):
        """The model and guide traces of one vectorized pass of all the particles."""
        self._ensure_plate_nesting(model, guide, args, kwargs)
        traces = self._draw(model, guide, args, kwargs).traces
        return traces.model_trace, traces.guide_trace

    def _get_traces(self, model, guide, args, kwargs):
        # all particles are in the one pass of _get_trace, in the plate of particles
        yield self._get_trace(model, guide, args, kwargs)

    def _grouped(self, log_w: torch.Tensor) -> torch.Tensor:
        """``(M * K, B) -> (M, K, B)``: particle ``m * K + k`` is draw ``k`` of bound ``m``."""
        return log_w.reshape(self.num_estimates, self.num_particles, -1)

    def bound(self, log_w: torch.Tensor) -> torch.Tensor:
        """Per-data-point bound ``(B,)`` from log-weights ``(num_estimates * K, B)``."""
        raise NotImplementedError

    @torch.no_grad()
    def loss(self, model, guide, *args, **kwargs) -> float:
        """Minus the bound, summed over the data plate and scaled to the full data set.

        :rtype: float
        """
        self._ensure_plate_nesting(model, guide, args, kwargs)
        draws = self._draw(model, guide, args, kwargs)
        loss = -float(draws.scale * self.bound(draws.log_w).sum())
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """The loss as a tensor whose gradient is the objective's gradient estimate."""
        self._ensure_plate_nesting(model, guide, args, kwargs)
        loss = self._surrogate_loss(model, guide, args, kwargs)
        warn_if_nan(loss, "loss")
        return loss

    def _surrogate_loss(self, model, guide, args, kwargs) -> torch.Tensor:
        """The loss, differentiated through the reparameterized samples."""
        draws = self._draw(model, guide, args, kwargs)
        return -(draws.scale * self.bound(draws.log_w)).sum()

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """:meth:`loss`, and ``backward()`` of :meth:`differentiable_loss` to fill the
        gradients of the model's and guide's parameters.

        :rtype: float
        """
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return loss.item()


def _split_surrogate_loss(
    objective, model, guide, args, kwargs, state, draws: ParticleDraws, path_only: bool
) -> torch.Tensor:
    r"""The loss of ``draws`` (drawn with leaf latents) with the gradient weighted by
    ``objective._gradient_weights``: :math:`a` for the model, :math:`b` for the guide.

    With :math:`h_k = \log p_\theta(x, z_k)`, :math:`F_k = \log q_\phi(z_k \mid x)` and
    detached weights :math:`a_k`, :math:`b_k`, the model is replayed on leaf copies
    :math:`\bar z_k` of the samples and the surrogate is

    .. math::

        S = \sum_k a_k h_k(\theta, \bar z_k)
          + \sum_k \Big\langle \frac{\partial}{\partial \bar z_k}
              \sum_j b_j \big(h_j - [F_j(\bar z_j)]\big), z_k(\phi) \Big\rangle
          - \Big[\sum_k b_k F_k(z_k(\phi), \phi)\Big],

    where path-derivative estimators (``path_only``) take the first bracket, with
    :math:`F` re-evaluated by re-running the guide on the leaves (from the random
    ``state`` of its first run), and the others the second. So
    :math:`\nabla_\theta S = \sum_k a_k \nabla_\theta h_k` and :math:`\nabla_\phi S` is
    either the path derivative :math:`\sum_k b_k \nabla_z (h_k - F_k) \partial z_k /
    \partial\phi` or the full reparameterized gradient weighted by :math:`b`. Taking the
    derivative at independent leaves keeps a hierarchical guide's :math:`z_1 \to z_2`
    dependence in :math:`\partial z_2/\partial\phi` only, and re-running the guide keeps
    the dependence of a later site's parameters on earlier latents, which is part of
    :math:`\nabla_z F`; both without knowing which parameters belong to the model or
    the guide.
    """
    log_w = draws.log_w.detach()
    loss = -(draws.scale * objective.bound(log_w)).sum()
    if not torch.is_grad_enabled() or not draws.log_p.requires_grad:
        return loss
    a, b = objective._gradient_weights(log_w)
    target = (b * draws.log_p).sum()
    if path_only:
        log_q = guide_log_density_at(guide, draws, args, kwargs, state)
        target = target - (b * log_q).sum()
    names = list(draws.latents)
    leaves = [draws.latents[n][1] for n in names]
    grads = torch.autograd.grad(target, leaves, retain_graph=True, allow_unused=True)
    surrogate = (a * draws.log_p).sum()
    for name, grad in zip(names, grads, strict=True):
        if grad is not None:
            surrogate = surrogate + (grad * draws.latents[name][0]).sum()
    if not path_only:
        surrogate = surrogate - (b * draws.log_q).sum()
    surrogate_loss = -draws.scale * surrogate
    return loss + (surrogate_loss - surrogate_loss.detach())


class SplitGradientELBO(ImportanceWeightedELBO):
    """Base class of objectives whose model and guide gradients weight the particles
    differently: subclasses define :meth:`bound` (the reported loss) and
    :meth:`_gradient_weights`; the surrogate is that of :func:`_split_surrogate_loss`."""

    def _gradient_weights(self, log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Detached per-particle weights ``(a, b)``, each like ``log_w``: the model's
        gradient is :math:`\\sum_k a_k \\nabla_\\theta \\log p`, the guide's the
        reparameterized gradient of :math:`\\sum_k b_k \\log w_k`."""
        raise NotImplementedError

    def _surrogate_loss(self, model, guide, args, kwargs) -> torch.Tensor:
        draws = self._draw(model, guide, args, kwargs, detach_latents=True)
        return _split_surrogate_loss(self, model, guide, args, kwargs, None, draws, False)


def _has_several_latents(guide_trace) -> bool:
    return sum(1 for s in guide_trace.nodes.values() if is_latent_site(s)) > 1


def _along_sample(factor: torch.Tensor, site: dict, num_dims: int, data_dim: int):
    """``factor`` ``(P, B)`` viewed to broadcast against the site's sample: the particle
    plate and the data plate at their dims, 1 elsewhere and in the event."""
    batch = len(site["fn"].batch_shape)
    shape = [1] * batch
    if batch >= num_dims:
        shape[-num_dims] = factor.shape[0]
    if batch >= -data_dim:
        shape[data_dim] = factor.shape[1]
    return factor.reshape(shape + [1] * len(site["fn"].event_shape))


class PathDerivativeELBO(ImportanceWeightedELBO):
    r"""Base class of objectives whose guide gradient is a path derivative: the
    gradient of :math:`\log w = \log p_\theta(x, z) - \log q_\phi(z \mid x)` reaches the
    guide's parameters through the samples :math:`z(\phi)` only.

    One forward and one backward pass: :math:`\log q` is evaluated at the guide's
    detached parameters (so no score term reaches :math:`\phi`), and a hook on each
    sample multiplies the gradient reaching it by :meth:`_sample_gradient_factor`
    (DReG's extra :math:`\tilde w_k`). Subclasses define :meth:`bound`,
    :meth:`_gradient_weights` (the weights of the same gradient in the form of
    :class:`SplitGradientELBO`) and, if the factor is not 1, :meth:`_sample_gradient_factor`.

    A guide with several latent sites may make a later site's distribution depend on
    an earlier sample, a dependence that detached parameters would cut: for such guides
    the gradient is formed as in :func:`_split_surrogate_loss`, by re-running the guide
    on leaf copies of the samples, which needs a guide that is a deterministic function
    of its inputs and latents.
    """

    def _gradient_weights(self, log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _sample_gradient_factor(self, log_w: torch.Tensor) -> torch.Tensor | None:
        """Detached ``(P, B)`` factor on the gradient reaching each sample; ``None``: 1."""
        return None

    def _surrogate_loss(self, model, guide, args, kwargs) -> torch.Tensor:
        # the random state the guide draws from, for re-running it on a hierarchical guide
        state = rng_state()
        draws = self._draw(model, guide, args, kwargs, detach_latents=_has_several_latents)
        if len(draws.latents) > 1:
            return _split_surrogate_loss(self, model, guide, args, kwargs, state, draws, True)
        log_w = draws.log_p - draws.log_q_at_detached_params()
        factor = self._sample_gradient_factor(log_w.detach())
        if factor is not None and torch.is_grad_enabled():
            guide_sites = draws.traces.guide_trace.nodes
            for name, (sample, _) in draws.latents.items():
                if sample.requires_grad:
                    view = _along_sample(factor, guide_sites[name], draws.num_dims, draws.data_dim)
                    sample.register_hook(lambda grad, view=view: grad * view)
        return -(draws.scale * self.bound(log_w)).sum()
