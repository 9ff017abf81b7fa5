"""The Gaussian-mixture VAE: a discrete cluster variable above a Gaussian latent."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from pyro_aevb.nn import MLP, DiagonalNormalHead, check_flat_input, get_likelihood, glorot_normal_
from pyro_aevb.plate import data_plate
from pyro_aevb.relaxed import GumbelMaxCategorical


class GaussianMixtureVAE(nn.Module):
    r"""Generative model

    .. math::

        y \sim \mathrm{OneHotCategorical}(1/C), \qquad
        z \mid y \sim \mathcal{N}(\mu_\theta(y), \operatorname{diag}\sigma^2_\theta(y)),
        \qquad x \mid z \sim \prod_d \mathrm{Bernoulli}(f_\theta(z)_d),

    so that :math:`p_\theta(z) = \frac1C \sum_c \mathcal{N}(z; \mu_c, \sigma_c^2)` is a
    mixture of :math:`C` Gaussians (Dilokthanakul et al., 2016; Yang, "Training Latent
    Variable Models with Auto-encoding Variational Bayes", section 5.5). The means
    and softplus scales are linear in the one-hot :math:`y` (a table of per-cluster
    parameters); :math:`f_\theta` is an MLP. Weights are Glorot-normal and biases
    zero, the paper's choice.

    The cluster site ``y`` is a :class:`~pyro_aevb.relaxed.GumbelMaxCategorical`, a
    one-hot categorical that also accepts relaxed codes, so the same model pairs with
    a guide that enumerates ``y`` and with a Gumbel-softmax guide
    (:class:`pyro_aevb.guides.GMVAEGuide`). Under enumeration ``y`` arrives with a
    leading enumeration dimension, ``(C, 1, ..., C)``, and every network below it
    broadcasts over it: the :math:`C` clusters are scored in one batched pass.

    :param x_dim: features per data point ``D``.
    :param num_clusters: :math:`C`.
    :param z_dim: latent dimension ``L``.
    :param hidden: decoder hidden layer sizes.
    :param likelihood: ``"bernoulli"`` (binarized data) or ``"continuous_bernoulli"``.

    Sites, in the data plate: latent ``y`` ``(B, C)`` and ``z`` ``(B, L)``, observed
    ``x`` ``(B, D)``.
    """

    def __init__(
        self,
        x_dim: int = 784,
        num_clusters: int = 10,
        z_dim: int = 64,
        hidden: Sequence[int] = (512, 512),
        likelihood: str = "bernoulli",
    ):
        super().__init__()
        if num_clusters < 2:
            raise ValueError(
                f"a mixture needs at least 2 clusters, got num_clusters={num_clusters}"
            )
        self.x_dim, self.num_clusters, self.z_dim = x_dim, num_clusters, z_dim
        self.likelihood = get_likelihood(likelihood)
        self.cluster_prior = DiagonalNormalHead(num_clusters, z_dim)
        self.decoder = MLP([z_dim, *hidden, x_dim])
        glorot_normal_(self)

    #: the name under which the model registers with Pyro's param store (``pyro.module``);
    #: fixed, since checkpoints record the parameter names it makes
    pyro_name = "gmvae"

    def forward(self, x: torch.Tensor) -> None:
        """Score a batch ``x`` of shape ``(B, D)``."""
        check_flat_input(x, self.x_dim, "GaussianMixtureVAE")
        pyro.module(self.pyro_name, self)
        with data_plate(x):
            uniform = GumbelMaxCategorical(logits=x.new_zeros(x.shape[0], self.num_clusters))
            y = pyro.sample("y", uniform)
            loc, scale = self.cluster_prior(y)
            z = pyro.sample("z", dist.Normal(loc, scale).to_event(1))
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)

    @torch.no_grad()
    def generate(self, clusters: torch.Tensor, mean: bool = True) -> torch.Tensor:
        """Ancestral samples for cluster indices ``clusters`` ``(B,)``: ``z ~ p(z | y)``,
        then the mean of :math:`p(x \\mid z)` (``mean=True``) or a draw; ``(B, D)``."""
        weight = self.decoder[0].weight
        onehot = F.one_hot(clusters.to(weight.device), self.num_clusters).to(weight.dtype)
        loc, scale = self.cluster_prior(onehot)
        likelihood = self.likelihood(self.decoder(dist.Normal(loc, scale).sample()))
        return likelihood.mean if mean else likelihood.sample()
