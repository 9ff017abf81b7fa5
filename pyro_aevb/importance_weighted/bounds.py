"""The importance-weighted objectives: IWAE, DReG, MIWAE, CIWAE, PIWAE and STL."""

from __future__ import annotations

import numbers

import torch

from .base import (
    ImportanceWeightedELBO,
    PathDerivativeELBO,
    SplitGradientELBO,
    _log_mean_exp,
)


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
