"""The variational autoencoder's generative model (Kingma & Welling, 2014)."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_aevb.nn import MLP, check_flat_input, get_likelihood
from pyro_aevb.plate import data_plate


class VAE(nn.Module):
    r"""Generative model :math:`p(z) = \mathcal{N}(0, I)`, :math:`p_\theta(x \mid z) =
    \prod_d \mathrm{Lik}(x_d; f_\theta(z)_d)`, with :math:`f_\theta` an MLP decoder.

    Defaults follow Yang Zhi-Han, "Training Latent Variable Models with Auto-encoding
    Variational Bayes: A Tutorial", section 5.3: latent dimension 20,
    two hidden layers of 500 ReLU units.

    :param x_dim: features per data point ``D`` (784 for MNIST).
    :param z_dim: latent dimension ``L``.
    :param hidden: hidden layer sizes of the decoder.
    :param likelihood: ``"bernoulli"`` (binary data) or ``"continuous_bernoulli"``
        (data in [0, 1]); see :data:`pyro_aevb.nn.LIKELIHOODS`.
    :param dropout: dropout rate in the decoder's hidden layers (the paper used 0.1).

    Sites: latent ``z`` of shape ``(B, L)``, observed ``x`` of shape ``(B, D)``,
    both in the data plate.
    """

    def __init__(
        self,
        x_dim: int = 784,
        z_dim: int = 20,
        hidden: Sequence[int] = (500, 500),
        likelihood: str = "bernoulli",
        dropout: float = 0.0,
    ):
        super().__init__()
        self.x_dim, self.z_dim = x_dim, z_dim
        self.likelihood_name = likelihood
        self.likelihood = get_likelihood(likelihood)
        self.decoder = MLP([z_dim, *hidden, x_dim], dropout=dropout)

    #: the name under which the model registers with Pyro's param store (``pyro.module``);
    #: fixed, since checkpoints record the parameter names it makes
    pyro_name = "decoder"  # the decoder network is all it registers

    def forward(self, x: torch.Tensor) -> None:
        """Score a batch ``x`` of shape ``(B, D)``."""
        check_flat_input(x, self.x_dim, "VAE")
        pyro.module(self.pyro_name, self.decoder)
        with data_plate(x):
            prior = dist.Normal(x.new_zeros(self.z_dim), x.new_ones(self.z_dim)).to_event(1)
            z = pyro.sample("z", prior)
            pyro.sample("x", self.likelihood(self.decoder(z)), obs=x)
