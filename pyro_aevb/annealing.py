r"""A weight on the latent sites' terms of the ELBO, and its warm-up (KL annealing).

With weight :math:`\beta` the objective becomes

.. math::

    \mathcal L_\beta(x) = \mathbb E_{q_\phi(z \mid x)}\big[\log p_\theta(x \mid z)\big]
    - \beta\, \mathrm{KL}\big(q_\phi(z \mid x) \,\|\, p_\theta(z)\big),

the :math:`\beta`-VAE objective of Higgins et al. (2017) for a fixed :math:`\beta`, and
KL annealing (Bowman et al., 2016; Sønderby et al., 2016) when :math:`\beta` rises from
near 0 to 1 over a warm-up: early on, the decoder learns to use :math:`z` before the
KL term pulls the guide to the prior. Only :math:`\beta = 1` is a bound on
:math:`\log p_\theta(x)`; evaluation always reports the unweighted ELBO.

It is implemented by scaling every latent sample site, in the model and in the guide
alike, by :math:`\beta` (:class:`LatentScale`): Trace_ELBO's sampled
:math:`\log p(z) - \log q(z)` and TraceMeanField_ELBO's analytic KL both pick the
scale up. Observed sites keep their scale. Which objectives separate that way is a
capability of their spec (``Capabilities.kl_weight``, :mod:`pyro_aevb.objectives`).
"""

from __future__ import annotations

from dataclasses import dataclass

from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample


@dataclass(frozen=True)
class KLAnnealing:
    """:math:`\\beta` at 0-based step ``t``: ``final * min(1, (t + 1) / warmup_steps)``,
    or ``final`` throughout without a warm-up.

    :param final: the weight after the warm-up (1 recovers the ELBO; another value
        gives a :math:`\\beta`-VAE).
    :param warmup_steps: steps of the linear rise from ``final / warmup_steps``.
    """

    final: float = 1.0
    warmup_steps: int = 0

    def __post_init__(self):
        if not self.final >= 0:
            raise ValueError(f"the KL weight must be non-negative, got {self.final}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")

    def weight(self, step: int) -> float:
        if self.warmup_steps == 0:
            return float(self.final)
        return float(self.final) * min(1.0, (step + 1) / self.warmup_steps)

    def describe(self) -> dict:
        """JSON-able settings, stored in checkpoints so a resume can check them."""
        return {"final": self.final, "warmup_steps": self.warmup_steps}


class LatentScale(Messenger):
    """Multiply the scale of every latent sample site by ``weight`` (settable between
    calls); observed sites and plate subsample sites are left alone."""

    def __init__(self, weight: float = 1.0):
        super().__init__()
        self.weight = weight

    def _process_message(self, msg):
        if (
            msg["type"] == "sample"
            and not msg["is_observed"]
            and not site_is_subsample(msg)
            and self.weight != 1.0
        ):
            msg["scale"] = msg["scale"] * self.weight
