"""The Gaussian-mixture VAE's amortized posterior q(y | x) q(z | x, y)."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from pyro_aevb.deprecation import module_getattr, renamed_method
from pyro_aevb.nn import MLP, check_flat_input, glorot_normal_
from pyro_aevb.plate import data_plate
from pyro_aevb.relaxed import GumbelSoftmax, TemperatureSchedule

from .gaussian import DiagonalNormalGuide

#: how the guide treats the cluster variable during training
ESTIMATORS = ("enumerate", "gumbel")


class GMVAEGuide(nn.Module):
    r"""Guide :math:`q_\phi(y \mid x)\, q_\phi(z \mid x, y)`: a categorical over the
    :math:`C` clusters from an MLP on :math:`x`, and a diagonal Gaussian from an MLP on
    :math:`[x, y]` (Yang, "Training Latent Variable Models with Auto-encoding
    Variational Bayes", section 5.5), for :class:`pyro_aevb.models.GaussianMixtureVAE`.

    Two estimators of the ELBO's cluster sum, chosen with ``estimator``:

    * ``"enumerate"`` (default): ``y`` is marked for parallel enumeration, so
      ``TraceEnum_ELBO`` (objective ``enum``) sums it out exactly,
      :math:`\sum_c q(c \mid x)\, \mathbb{E}_{q(z \mid x, c)}[\ldots]`, in one batched
      pass over a leading dimension of size :math:`C` (one :math:`z` draw per cluster);
    * ``"gumbel"``: ``y`` is a reparameterized Gumbel-softmax draw whose temperature
      follows ``temperature`` over the training steps (:func:`pyro_aevb.fit` reports
      each step through :meth:`set_training_step`); train with ``meanfield`` for the
      analytic cluster KL (see :mod:`pyro_aevb.relaxed`). Its cost per step does not
      grow with :math:`C`.

    In eval mode (``guide.eval()``, as every evaluation of the library sets) both
    estimators use the exact categorical marked for enumeration, so test ELBOs and
    log-likelihoods are those of the discrete model and comparable across estimators.

    :param x_dim: features per data point.
    :param num_clusters: :math:`C`.
    :param z_dim: latent dimension.
    :param hidden: hidden layer sizes of both MLPs.
    :param estimator: ``"enumerate"`` or ``"gumbel"``.
    :param temperature: the Gumbel-softmax temperature schedule (``"gumbel"`` only).
    """

    def __init__(
        self,
        x_dim: int = 784,
        num_clusters: int = 10,
        z_dim: int = 64,
        hidden: Sequence[int] = (512, 512),
        estimator: str = "enumerate",
        temperature: TemperatureSchedule | None = None,
    ):
        super().__init__()
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator '{estimator}'; choose one of {list(ESTIMATORS)}")
        if temperature is not None and estimator != "gumbel":
            raise ValueError("a temperature schedule applies to estimator='gumbel' only")
        self.x_dim, self.num_clusters, self.z_dim = x_dim, num_clusters, z_dim
        self.estimator = estimator
        self.schedule = temperature or TemperatureSchedule()
        self.temperature = self.schedule.temperature(0)
        self.cluster_logits = MLP([x_dim, *hidden, num_clusters])
        self.latent = DiagonalNormalGuide(x_dim + num_clusters, z_dim, hidden)
        glorot_normal_(self)

    #: the name under which the guide registers with Pyro's param store (``pyro.module``);
    #: fixed, since checkpoints record the parameter names it makes
    pyro_name = "gmvae_encoder"

    def set_training_step(self, step: int) -> None:
        """Set the Gumbel-softmax temperature for training step ``step`` (0-based)."""
        self.temperature = self.schedule.temperature(step)

    def forward(self, x: torch.Tensor) -> None:
        check_flat_input(x, self.x_dim, type(self).__name__)
        pyro.module(self.pyro_name, self)
        with data_plate(x):
            logits = self.cluster_logits(x)
            if self.training and self.estimator == "gumbel":
                y = pyro.sample(
                    "y", GumbelSoftmax(logits.new_tensor(self.temperature), logits=logits)
                )
            else:
                y = pyro.sample(
                    "y", dist.OneHotCategorical(logits=logits), infer={"enumerate": "parallel"}
                )
            loc, scale = self.encode(x, y)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` of :math:`q(z \\mid x, y)`, the MLP on :math:`[x, y]`, for ``x``
        ``(B, D)`` and codes ``y`` ``(..., B or 1, C)`` (all C clusters under enumeration),
        batch dims broadcast.

        The first layer is applied as :math:`W_x x + W_y y + b` on the two blocks of its
        weight: ``x`` is multiplied once per batch instead of once per cluster, which saves
        a tenth of an enumerated training step (C = 10, MNIST); the same function as the
        layer on the concatenation.
        """
        first, *rest = self.latent.trunk
        weight_x, weight_y = first.weight.split([self.x_dim, self.num_clusters], -1)
        hidden = F.linear(x, weight_x, first.bias) + F.linear(y, weight_y)
        for layer in rest:
            hidden = layer(hidden)
        return self.latent.head(hidden)

    latent_posterior = renamed_method("encode", "latent_posterior")


__getattr__ = module_getattr(__name__, {"GMVAEEncoder": lambda: GMVAEGuide})
