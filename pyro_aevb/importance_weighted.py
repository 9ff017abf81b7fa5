r"""Importance-weighted objectives, per data point, and their gradient estimators.

With :math:`K` particles :math:`z_{1:K} \sim q_\phi(z \mid x)` and weights
:math:`w_k = p_\theta(x, z_k) / q_\phi(z_k \mid x)`, the importance-weighted bound
of Burda et al. (2016) is

.. math::

    \mathcal L_K(x) = \mathbb E\Big[\log \frac1K \sum_{k=1}^K w_k\Big]
    \le \mathcal L_{K+1}(x) \le \log p_\theta(x),
    \qquad \mathcal L_1 = \text{ELBO}.

Every objective here forms the weights *per data point* (the particle plate and
the data plate are kept apart, :mod:`pyro_aevb.particles`), takes the log-mean-exp
over particles, sums over the data plate and multiplies by the data plate's
subsample scale :math:`N/B`, so that, as with :class:`~pyro.infer.Trace_ELBO`,
``loss`` is an unbiased estimate of minus the full-data bound. (Pyro's
:class:`~pyro.infer.RenyiELBO` weights the whole minibatch jointly instead.)
Particles are drawn in one vectorized pass.

=================  ===============================================================
class              bound (loss = -bound) and gradient
=================  ===============================================================
:class:`IWAE`      :math:`\mathcal L_K`, gradient through the reparameterized samples
:class:`DReG`      :math:`\mathcal L_K`, doubly reparameterized guide gradient
                   (Tucker et al., 2019)
:class:`MIWAE`     :math:`\frac1M \sum_m \mathcal L_K^{(m)}`, M independent bounds
:class:`CIWAE`     :math:`\beta\,\text{ELBO} + (1-\beta)\,\mathcal L_K` on the same draws
:class:`PIWAE`     model follows :math:`\mathcal L_{MK}`, guide follows MIWAE(M, K)
:class:`STLELBO`   the ELBO with the path-derivative ("sticking the landing")
                   guide gradient (Roeder et al., 2017)
=================  ===============================================================

Rainforth et al. (2018) show that the signal-to-noise ratio of the standard IWAE
guide gradient falls like :math:`O(1/\sqrt K)` while the model's rises like
:math:`O(\sqrt K)`; MIWAE, CIWAE and PIWAE trade the two, DReG removes the
problem for the guide. :func:`pyro_aevb.diagnostics.gradient_snr` measures it.

The classes follow the template of Pyro's ``ELBO`` subclasses:
:class:`ImportanceWeightedELBO` draws the particles (:meth:`~ImportanceWeightedELBO._draw`)
and forms the loss; a subclass says which bound it is (:meth:`bound`) and, when its
gradient is not the plain reparameterized gradient of that bound, how it builds the
surrogate (:class:`SplitGradientELBO` with per-particle weights for the model and the
guide, :class:`PathDerivativeELBO` for path-derivative guide gradients).

Requirements (checked on every call, see :mod:`pyro_aevb.particles`): every latent
site inside ``pyro.plate("data")`` and sampled by the guide with a
reparameterizable distribution; no enumeration. DReG and STL on a guide with several
latent sites re-run the guide on the drawn latents and need it to be deterministic
given them.

As Pyro counts, ``max_plate_nesting`` includes the plate of particles: an objective
given ``max_plate_nesting=n`` (the pair's plates) holds ``n + 1``.

References: Burda, Grosse & Salakhutdinov (2016), Importance weighted
autoencoders; Roeder, Wu & Duvenaud (2017), Sticking the landing: simple,
lower-variance gradient estimators for variational inference; Rainforth et al.
(2018), Tighter variational bounds are not necessarily better; Tucker, Lawson, Gu
& Maddison (2019), Doubly reparameterized gradient estimators for Monte Carlo
objectives.
"""

from __future__ import annotations

import math
import numbers

import torch
from pyro.infer import ELBO
from pyro.util import warn_if_nan

from .contexts import rng_state
from .particles import ParticleDraws, draw_particles, guide_log_density_at


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
    from .contract import is_latent_site

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


class IWAE(ImportanceWeightedELBO):
    r"""The importance-weighted bound :math:`\mathcal L_K` (Burda et al., 2016), per
    data point:

    .. math::

        \text{loss} = -\frac{N}{B} \sum_{i=1}^B \log \frac1K \sum_{k=1}^K
        \frac{p_\theta(x_i, z_{k,i})}{q_\phi(z_{k,i} \mid x_i)},

    differentiated through the reparameterized samples: model and guide gradients
    weight particle :math:`k` by its normalized weight :math:`\tilde w_k = w_k / \sum_j
    w_j`. :class:`DReG` has the same bound with another guide gradient.

    :param int num_particles: :math:`K`, importance samples per data point.
    :param int max_plate_nesting: the pair's plate nesting; guessed by running the
        pair once if omitted.
    """

    def __init__(self, num_particles: int = 2, max_plate_nesting=None):
        super().__init__(num_particles, max_plate_nesting=max_plate_nesting)

    def bound(self, log_w):
        return _log_mean_exp(log_w, 0)


class DReG(PathDerivativeELBO, IWAE):
    r"""The IWAE bound :math:`\mathcal L_K` with the doubly reparameterized guide
    gradient of Tucker et al. (2019, eq. 7-8),

    .. math::

        \nabla_\phi \mathcal L_K = \mathbb E\Big[\sum_k \tilde w_k^2\,
        \frac{\partial \log w_k}{\partial z_k} \frac{\partial z_k}{\partial \phi}\Big],

    where :math:`\partial \log w_k / \partial z_k` holds the guide's parameters fixed,
    and IWAE's model gradient :math:`\sum_k \tilde w_k \nabla_\theta \log p_\theta(x,
    z_k)`. Same expectation as IWAE's, no score-function term: its variance vanishes at
    the exact posterior and its signal-to-noise ratio does not decay with :math:`K`.

    The gradient of the loss at :math:`\log w_k` is :math:`\tilde w_k`; the hook on
    each sample multiplies what reaches it by :math:`\tilde w_k` once more.

    :param int num_particles: :math:`K`, importance samples per data point.
    :param int max_plate_nesting: the pair's plate nesting; guessed if omitted.
    """

    def _gradient_weights(self, log_w):
        normalized = torch.softmax(log_w, 0)
        return normalized, normalized**2

    def _sample_gradient_factor(self, log_w):
        return torch.softmax(log_w, 0)


class MIWAE(ImportanceWeightedELBO):
    r"""The mean of :math:`M` independent IWAE bounds of :math:`K` particles each
    (Rainforth et al., 2018), from :math:`MK` draws per data point:

    .. math::

        \mathcal L_{M,K} = \frac1M \sum_{m=1}^M \log \frac1K \sum_{k=1}^K w_{m,k}.

    :math:`M = 1` is :class:`IWAE`, :math:`K = 1` the ELBO with :math:`M` particles.

    :param int num_estimates: :math:`M`.
    :param int num_particles: :math:`K`, particles per bound.
    """

    def __init__(self, num_estimates: int, num_particles: int, max_plate_nesting=None):
        super().__init__(num_particles, num_estimates, max_plate_nesting)

    def bound(self, log_w):
        return _log_mean_exp(self._grouped(log_w), 1).mean(0)


class CIWAE(ImportanceWeightedELBO):
    r"""A convex combination of the ELBO and the IWAE bound on the same :math:`K`
    draws (Rainforth et al., 2018):

    .. math::

        \mathcal L^\beta_K = \beta\,\frac1K \sum_k \log w_k
        + (1 - \beta) \log \frac1K \sum_k w_k, \qquad 0 \le \beta \le 1.

    :param float beta: weight of the ELBO; 1 is the ELBO, 0 is :class:`IWAE`.
    :param int num_particles: :math:`K`.
    """

    def __init__(self, beta: float, num_particles: int, max_plate_nesting=None):
        if not isinstance(beta, numbers.Real) or not 0.0 <= beta <= 1.0:
            raise ValueError(
                f"beta must be in [0, 1] (1: the ELBO, 0: the IWAE bound), got {beta!r}"
            )
        self.beta = float(beta)
        super().__init__(num_particles, max_plate_nesting=max_plate_nesting)

    def bound(self, log_w):
        return self.beta * log_w.mean(0) + (1.0 - self.beta) * _log_mean_exp(log_w, 0)


class PIWAE(SplitGradientELBO):
    r"""Partially importance-weighted autoencoder (Rainforth et al., 2018): from one
    set of :math:`MK` draws per data point, the model parameters follow the
    gradient of :math:`\mathcal L_{MK}` (:class:`IWAE` with :math:`MK` particles)
    and the guide parameters that of :math:`\mathcal L_{M,K}` (:class:`MIWAE`),
    whose guide gradient has the higher signal-to-noise ratio.

    The reported loss is :math:`-\mathcal L_{MK}`, the model's objective.

    :param int num_estimates: :math:`M`.
    :param int num_particles: :math:`K`, particles per guide bound.
    """

    def __init__(self, num_estimates: int, num_particles: int, max_plate_nesting=None):
        super().__init__(num_particles, num_estimates, max_plate_nesting)

    def bound(self, log_w):
        return _log_mean_exp(log_w, 0)

    def _gradient_weights(self, log_w):
        model = torch.softmax(log_w, 0)
        guide = torch.softmax(self._grouped(log_w), 1) / self.num_estimates
        return model, guide.reshape(log_w.shape)


class STLELBO(PathDerivativeELBO):
    r"""The ELBO with the "sticking the landing" guide gradient (Roeder et al., 2017).

    The reparameterized ELBO gradient splits into a path derivative and a score
    term :math:`-\nabla_\phi \log q_\phi(z)\big|_{z\ \text{fixed}}`, whose
    expectation is zero. Dropping the score term,

    .. math::

        \nabla_\phi \approx \frac1K \sum_k \nabla_z \big[\log p_\theta(x, z_k) -
        \log q_\phi(z_k \mid x)\big] \frac{\partial z_k}{\partial \phi},

    keeps the expectation and makes the guide gradient exactly zero for every
    draw once :math:`q` is the exact posterior. The model gradient and the loss
    are those of :class:`~pyro.infer.Trace_ELBO` with :math:`K` particles.

    :param int num_particles: :math:`K`, samples averaged per data point.
    """

    def __init__(self, num_particles: int = 1, max_plate_nesting=None):
        super().__init__(num_particles, max_plate_nesting=max_plate_nesting)

    def bound(self, log_w):
        return log_w.mean(0)

    def _gradient_weights(self, log_w):
        uniform = torch.full_like(log_w, 1.0 / log_w.shape[0])
        return uniform, uniform
