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
:class:`IWAE`      :math:`\mathcal L_K`; ``estimator="dreg"``: doubly
                   reparameterized guide gradient (Tucker et al., 2019)
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

Requirements (checked on every call, see :mod:`pyro_aevb.particles`): every latent
site inside ``pyro.plate("data")`` and sampled by the guide with a
reparameterizable distribution; no enumeration. DReG and STL also re-run the
guide on the drawn latents and need it to be deterministic given them.

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

from .particles import draw_particles, guide_log_density_at, rng_state


def _count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _log_mean_exp(log_w: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.logsumexp(log_w, dim) - math.log(log_w.shape[dim])


class _ImportanceWeighted(ELBO):
    """Shared machinery: draw ``num_estimates * num_particles`` particles per data
    point, form the per-point bound, and build the gradient surrogate.

    Subclasses define :meth:`bound`. Those whose gradient is not the plain
    reparameterized gradient of the bound set ``_split`` and define
    :meth:`_gradient_weights`, see :meth:`differentiable_loss`.
    """

    #: the gradient is not that of the bound: use the split surrogate
    _split = False
    #: the guide gradient keeps only the path derivative through the latents
    _path_only = False

    def __init__(self, num_particles: int, num_estimates: int = 1, max_plate_nesting=None):
        self.num_estimates = _count(num_estimates, "num_estimates")
        super().__init__(
            num_particles=_count(num_particles, "num_particles"),
            max_plate_nesting=float("inf") if max_plate_nesting is None else max_plate_nesting,
        )

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError(
            f"{type(self).__name__} draws all particles in one vectorized pass; "
            "it has no per-particle traces"
        )

    def _draw(self, model, guide, args, kwargs, detach_latents=False):
        self._ensure_plate_nesting(model, guide, args, kwargs)
        total = self.num_estimates * self.num_particles
        return draw_particles(
            model, guide, args, kwargs, total, int(self.max_plate_nesting), detach_latents
        )

    def _ensure_plate_nesting(self, model, guide, args, kwargs):
        if self.max_plate_nesting == float("inf"):
            self._guess_max_plate_nesting(model, guide, args, kwargs)

    def _grouped(self, log_w: torch.Tensor) -> torch.Tensor:
        """``(M * K, B) -> (M, K, B)``: particle ``m * K + k`` is draw ``k`` of bound ``m``."""
        return log_w.reshape(self.num_estimates, self.num_particles, -1)

    def bound(self, log_w: torch.Tensor) -> torch.Tensor:
        """Per-data-point bound ``(B,)`` from log-weights ``(num_estimates * K, B)``."""
        raise NotImplementedError

    def _gradient_weights(self, log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def loss(self, model, guide, *args, **kwargs) -> float:
        """Minus the bound, summed over the data plate and scaled to the full data set.

        :rtype: float
        """
        draws = self._draw(model, guide, args, kwargs)
        loss = -float(draws.scale * self.bound(draws.log_w).sum())
        warn_if_nan(loss, "loss")
        return loss

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        r"""The loss as a tensor whose gradient is the objective's gradient estimate.

        Standard estimators differentiate the bound through the reparameterized
        samples. The others need different weights for the model gradient and for
        the guide gradient. With :math:`h_k = \log p_\theta(x, z_k)`,
        :math:`F_k = \log q_\phi(z_k \mid x)` and detached weights :math:`a_k`
        (model), :math:`b_k` (guide), the model is replayed on leaf copies
        :math:`\bar z_k` of the samples and the surrogate is

        .. math::

            S = \sum_k a_k h_k(\theta, \bar z_k)
              + \sum_k \Big\langle \frac{\partial}{\partial \bar z_k}
                  \sum_j b_j \big(h_j - [F_j(\bar z_j)]\big), z_k(\phi) \Big\rangle
              - \Big[\sum_k b_k F_k(z_k(\phi), \phi)\Big],

        where path-derivative estimators (DReG, STL) take the first bracket, with
        :math:`F` re-evaluated by re-running the guide on the leaves, and the
        others the second. So :math:`\nabla_\theta S = \sum_k a_k \nabla_\theta h_k`
        and :math:`\nabla_\phi S` is either the path derivative
        :math:`\sum_k b_k \nabla_z (h_k - F_k) \partial z_k / \partial\phi` or
        the full reparameterized gradient weighted by :math:`b`. Taking the
        derivative at independent leaves keeps a hierarchical guide's
        :math:`z_1 \to z_2` dependence in :math:`\partial z_2/\partial\phi` only,
        and re-running the guide (rather than copying each site's distribution
        with detached parameters) keeps the dependence of a later site's
        parameters on earlier latents, which is part of :math:`\nabla_z F`; both
        without knowing which parameters belong to the model or the guide.
        """
        if not self._split:
            draws = self._draw(model, guide, args, kwargs)
            loss = -(draws.scale * self.bound(draws.log_w)).sum()
            warn_if_nan(loss, "loss")
            return loss
        # The random state the guide draws from, for re-running it (after the guess
        # of the plate nesting, which runs the guide too).
        self._ensure_plate_nesting(model, guide, args, kwargs)
        state = rng_state()
        draws = self._draw(model, guide, args, kwargs, detach_latents=True)
        log_w = draws.log_w.detach()
        loss = -(draws.scale * self.bound(log_w)).sum()
        warn_if_nan(loss, "loss")
        if not torch.is_grad_enabled() or not draws.log_p.requires_grad:
            return loss
        a, b = self._gradient_weights(log_w)
        target = (b * draws.log_p).sum()
        if self._path_only:
            log_q = guide_log_density_at(guide, draws, args, kwargs, state)
            target = target - (b * log_q).sum()
        names = list(draws.latents)
        leaves = [draws.latents[n][1] for n in names]
        grads = torch.autograd.grad(target, leaves, retain_graph=True, allow_unused=True)
        surrogate = (a * draws.log_p).sum()
        for name, grad in zip(names, grads, strict=True):
            if grad is not None:
                surrogate = surrogate + (grad * draws.latents[name][0]).sum()
        if not self._path_only:
            surrogate = surrogate - (b * draws.log_q).sum()
        surrogate_loss = -draws.scale * surrogate
        return loss + (surrogate_loss - surrogate_loss.detach())

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """:meth:`loss`, and ``backward()`` of :meth:`differentiable_loss` to fill the
        gradients of the model's and guide's parameters.

        :rtype: float
        """
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return loss.item()


class IWAE(_ImportanceWeighted):
    r"""The importance-weighted bound :math:`\mathcal L_K` (Burda et al., 2016), per
    data point:

    .. math::

        \text{loss} = -\frac{N}{B} \sum_{i=1}^B \log \frac1K \sum_{k=1}^K
        \frac{p_\theta(x_i, z_{k,i})}{q_\phi(z_{k,i} \mid x_i)}.

    ``estimator="iwae"`` differentiates it through the reparameterized samples:
    model and guide gradients weight particle :math:`k` by its normalized weight
    :math:`\tilde w_k = w_k / \sum_j w_j`. ``estimator="dreg"`` keeps that model
    gradient and replaces the guide gradient by the doubly reparameterized one of
    Tucker et al. (2019),

    .. math::

        \nabla_\phi \mathcal L_K = \mathbb E\Big[\sum_k \tilde w_k^2\,
        \frac{\partial \log w_k}{\partial z_k} \frac{\partial z_k}{\partial \phi}\Big],

    where :math:`\partial \log w_k / \partial z_k` holds the guide's parameters
    fixed. Same expectation, no score-function term: its variance vanishes at the
    exact posterior and its signal-to-noise ratio does not decay with :math:`K`.

    :param int num_particles: :math:`K`, importance samples per data point.
    :param str estimator: ``"iwae"`` or ``"dreg"``.
    :param int max_plate_nesting: the pair's plate nesting; guessed by running the
        pair once if omitted.
    """

    def __init__(self, num_particles: int = 2, estimator: str = "iwae", max_plate_nesting=None):
        if estimator not in ("iwae", "dreg"):
            raise ValueError(
                f"estimator must be 'iwae' or 'dreg', got {estimator!r}; for the "
                "sticking-the-landing ELBO use STLELBO"
            )
        self.estimator = estimator
        self._split = self._path_only = estimator == "dreg"
        super().__init__(num_particles, max_plate_nesting=max_plate_nesting)

    def bound(self, log_w):
        return _log_mean_exp(log_w, 0)

    def _gradient_weights(self, log_w):
        normalized = torch.softmax(log_w, 0)
        return normalized, normalized**2


class MIWAE(_ImportanceWeighted):
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


class CIWAE(_ImportanceWeighted):
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


class PIWAE(_ImportanceWeighted):
    r"""Partially importance-weighted autoencoder (Rainforth et al., 2018): from one
    set of :math:`MK` draws per data point, the model parameters follow the
    gradient of :math:`\mathcal L_{MK}` (:class:`IWAE` with :math:`MK` particles)
    and the guide parameters that of :math:`\mathcal L_{M,K}` (:class:`MIWAE`),
    whose guide gradient has the higher signal-to-noise ratio.

    The reported loss is :math:`-\mathcal L_{MK}`, the model's objective.

    :param int num_estimates: :math:`M`.
    :param int num_particles: :math:`K`, particles per guide bound.
    """

    _split = True

    def __init__(self, num_estimates: int, num_particles: int, max_plate_nesting=None):
        super().__init__(num_particles, num_estimates, max_plate_nesting)

    def bound(self, log_w):
        return _log_mean_exp(log_w, 0)

    def _gradient_weights(self, log_w):
        model = torch.softmax(log_w, 0)
        guide = torch.softmax(self._grouped(log_w), 1) / self.num_estimates
        return model, guide.reshape(log_w.shape)


class STLELBO(_ImportanceWeighted):
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

    _split = _path_only = True

    def __init__(self, num_particles: int = 1, max_plate_nesting=None):
        super().__init__(num_particles, max_plate_nesting=max_plate_nesting)

    def bound(self, log_w):
        return log_w.mean(0)

    def _gradient_weights(self, log_w):
        uniform = torch.full_like(log_w, 1.0 / log_w.shape[0])
        return uniform, uniform
