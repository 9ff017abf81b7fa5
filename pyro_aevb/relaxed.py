r"""The Gumbel-softmax relaxation of a one-hot categorical latent, and its temperature.

A discrete latent :math:`y` (a one-hot code over :math:`C` values) can be summed
out exactly by enumeration (``TraceEnum_ELBO``), at :math:`C` times the cost of a
continuous latent. The Gumbel-softmax (Concrete) relaxation (Jang et al., 2017;
Maddison et al., 2017) instead draws one reparameterized point of the simplex,

.. math::

    \tilde y = \operatorname{softmax}\big((\log \pi + g) / \tau\big), \qquad
    g_c \sim \mathrm{Gumbel}(0, 1),

which the networks downstream of :math:`y` read in place of the one-hot code; its
argmax is an exact draw from :math:`\mathrm{Cat}(\pi)` at every temperature
:math:`\tau` (the Gumbel-max trick), and :math:`\tilde y` tends to that one-hot code
as :math:`\tau \to 0`.

The cluster variable's own ELBO term is kept discrete, as in the estimator of Yang
("Training Latent Variable Models with Auto-encoding Variational Bayes", section
5.5, "another context"): :class:`GumbelSoftmax` scores a relaxed code by the
categorical mass of its argmax, and its KL divergence to a one-hot categorical
prior is the analytic :math:`\mathrm{KL}(q(y \mid x) \,\|\, p(y))`, which
``TraceMeanField_ELBO`` (objective ``meanfield``) uses. The per-example estimate is
then

.. math::

    \log p(x \mid z) - \mathrm{KL}\big(q(z \mid x, \tilde y) \,\|\, p(z \mid \tilde y)\big)
    - \mathrm{KL}\big(q(y \mid x) \,\|\, p(y)\big), \qquad z \sim q(z \mid x, \tilde y),

biased for :math:`\tau > 0` (the decoder sees a soft code) and equal in expectation
to the enumerated ELBO as :math:`\tau \to 0`, where its gradient variance grows.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import pyro.distributions as dist
import torch
from torch.distributions import constraints, kl_divergence, register_kl

# Relaxed codes are validated coordinate-wise: at low temperatures a float32 draw can
# miss the simplex's sum-to-one tolerance (1e-6) although only its argmax is scored.
_RELAXED_CODES = constraints.independent(constraints.unit_interval, 1)


def _argmax_mass(log_probs: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``log_probs`` at each code's largest coordinate, batch dims broadcast."""
    log_probs, value = torch.broadcast_tensors(log_probs, value)
    return log_probs.gather(-1, value.max(-1, keepdim=True)[1]).squeeze(-1)


class GumbelMaxCategorical(dist.OneHotCategorical):
    """A one-hot categorical that also scores relaxed codes (points of the simplex).

    On one-hot codes it is :class:`~pyro.distributions.OneHotCategorical`; a relaxed
    code is scored by its largest coordinate, the category the Gumbel-max trick
    draws. Models use it for a discrete latent so that a Gumbel-softmax guide can be
    paired with them without changing the model.
    """

    support = _RELAXED_CODES

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return _argmax_mass(self.logits, value)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(GumbelMaxCategorical, _instance)
        return super().expand(batch_shape, _instance=new)


class GumbelSoftmax(dist.RelaxedOneHotCategorical):
    r"""Gumbel-softmax draws :math:`\tilde y` of :math:`\mathrm{Cat}(\text{logits})`,
    scored by the categorical log-mass of their argmax (see the module docstring).

    :param temperature: :math:`\tau > 0`.
    :param logits: unnormalized log-probabilities, shape ``(..., C)``.
    """

    support = _RELAXED_CODES

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return _argmax_mass(self.logits.log_softmax(-1), value)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(GumbelSoftmax, _instance)
        return super().expand(batch_shape, _instance=new)


@register_kl(GumbelSoftmax, dist.OneHotCategorical)
def _kl_gumbel_softmax_categorical(q: GumbelSoftmax, p: dist.OneHotCategorical):
    """The discrete :math:`\\mathrm{KL}(\\mathrm{Cat}(q) \\,\\|\\, \\mathrm{Cat}(p))`."""
    categorical = dist.OneHotCategorical(logits=q.logits)
    return kl_divergence(categorical, p)


@dataclass(frozen=True)
class TemperatureSchedule:
    r"""Exponential annealing :math:`\tau_t = \max(\tau_{\min}, \tau_0 e^{-r t})` over
    training steps :math:`t` (Jang et al., 2017, used :math:`\tau_0 = 1`,
    :math:`\tau_{\min} = 0.5` and :math:`r \in [10^{-5}, 10^{-4}]`).

    :param initial: :math:`\tau_0 > 0`.
    :param final: the floor :math:`\tau_{\min} \in (0, \tau_0]`.
    :param rate: decay :math:`r \ge 0` per step (0 keeps :math:`\tau_0`).
    """

    initial: float = 1.0
    final: float = 0.5
    rate: float = 1e-4

    def __post_init__(self):
        if not (0 < self.final <= self.initial) or self.rate < 0:
            raise ValueError(
                "a temperature schedule needs 0 < final <= initial and rate >= 0, got "
                f"initial={self.initial}, final={self.final}, rate={self.rate}"
            )

    def temperature(self, step: int) -> float:
        """:math:`\\tau` at training step ``step`` (0-based)."""
        return max(self.final, self.initial * math.exp(-self.rate * step))

    def describe(self) -> dict:
        return asdict(self)
