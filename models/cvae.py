"""The conditional VAE (Sohn et al., 2015) and its two simpler factorizations."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_aevb.nn import MLP, DiagonalNormalHead, check_flat_input, get_likelihood, one_hot_labels
from pyro_aevb.plate import data_plate

#: factorization name -> (the prior of z depends on y, the decoder reads y)
FACTORIZATIONS = {
    "full": (True, True),  # p(z | y) p(x | y, z): the full decomposition
    "prior": (True, False),  # p(z | y) p(x | z): the label acts through the prior only
    "decoder": (False, True),  # p(z) p(x | y, z): a standard-normal prior
}


class ConditionalVAE(nn.Module):
    r"""A latent variable model of :math:`p_\theta(x \mid y)` for labelled data.

    With ``factorization="full"`` (the default) the joint is the full decomposition

    .. math::

        p_\theta(x, z \mid y) = p_\theta(x \mid y, z)\, p_\theta(z \mid y), \qquad
        p_\theta(z \mid y) = \mathcal{N}(\mu_\theta(y), \operatorname{diag}
        \sigma^2_\theta(y)),

    ``"prior"`` drops :math:`y` from the decoder, :math:`p_\theta(x \mid z)\,
    p_\theta(z \mid y)`, and ``"decoder"`` uses a standard-normal prior,
    :math:`p_\theta(x \mid y, z)\, \mathcal{N}(z; 0, I)` (Yang, "Training Latent
    Variable Models with Auto-encoding Variational Bayes", section 5.4, lists all
    three). The conditional prior is a linear map of the one-hot label (a table of
    per-class means and softplus scales: any function of a one-hot vector is one);
    the decoder is an MLP on :math:`[z, y]`.

    The labels ``y`` are observed inputs, not sample sites, so the importance-sampled
    log-likelihood of :func:`pyro_aevb.evaluate` estimates :math:`\log p_\theta(x
    \mid y)`.

    :param x_dim: features per data point ``D``.
    :param num_classes: number of classes of the integer labels.
    :param z_dim: latent dimension.
    :param hidden: decoder hidden layer sizes.
    :param likelihood: ``"continuous_bernoulli"`` (dequantized data, the paper's
        choice) or ``"bernoulli"`` (binarized data).
    :param dropout: dropout rate in the decoder.
    :param factorization: ``"full"``, ``"prior"`` or ``"decoder"`` (see above).

    Sites: latent ``z`` ``(B, L)`` and observed ``x`` ``(B, D)``, in the data plate.
    """

    def __init__(
        self,
        x_dim: int = 784,
        num_classes: int = 10,
        z_dim: int = 20,
        hidden: Sequence[int] = (500, 500),
        likelihood: str = "continuous_bernoulli",
        dropout: float = 0.0,
        factorization: str = "full",
    ):
        super().__init__()
        if factorization not in FACTORIZATIONS:
            raise ValueError(
                f"unknown factorization '{factorization}'; choose one of {sorted(FACTORIZATIONS)}"
            )
        self.x_dim, self.num_classes, self.z_dim = x_dim, num_classes, z_dim
        self.factorization = factorization
        conditional_prior, conditional_decoder = FACTORIZATIONS[factorization]
        self.likelihood = get_likelihood(likelihood)
        self.prior_net = DiagonalNormalHead(num_classes, z_dim) if conditional_prior else None
        self.decoder_reads_label = conditional_decoder
        decoder_in = z_dim + (num_classes if conditional_decoder else 0)
        self.decoder = MLP([decoder_in, *hidden, x_dim], dropout=dropout)

    def prior(self, onehot: torch.Tensor) -> dist.Distribution:
        """:math:`p_\\theta(z \\mid y)` (or :math:`p(z)`) for one-hot labels ``(B, C)``."""
        if self.prior_net is None:
            zeros = onehot.new_zeros(onehot.shape[0], self.z_dim)
            return dist.Normal(zeros, 1.0).to_event(1)
        loc, scale = self.prior_net(onehot)
        return dist.Normal(loc, scale).to_event(1)

    def observation(self, z: torch.Tensor, onehot: torch.Tensor) -> dist.Distribution:
        """:math:`p_\\theta(x \\mid y, z)` (or :math:`p_\\theta(x \\mid z)`)."""
        if self.decoder_reads_label:
            z = torch.cat([z, onehot.expand(*z.shape[:-1], onehot.shape[-1])], -1)
        return self.likelihood(self.decoder(z))

    #: the name under which the model registers with Pyro's param store (``pyro.module``);
    #: fixed, since checkpoints record the parameter names it makes
    pyro_name = "cvae"

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Score a batch: ``x`` ``(B, D)``, integer labels ``y`` ``(B,)``."""
        check_flat_input(x, self.x_dim, "ConditionalVAE")
        onehot = one_hot_labels(y, self.num_classes, x.shape[0], "ConditionalVAE").to(x)
        pyro.module(self.pyro_name, self)
        with data_plate(x):
            z = pyro.sample("z", self.prior(onehot))
            pyro.sample("x", self.observation(z, onehot), obs=x)

    @torch.no_grad()
    def generate(self, y: torch.Tensor, mean: bool = True) -> torch.Tensor:
        """Ancestral samples for labels ``y`` ``(B,)``: ``z ~ p(z | y)``, then the mean of
        :math:`p(x \\mid y, z)` (``mean=True``) or a draw from it; shape ``(B, D)``."""
        device = next(self.parameters()).device
        onehot = one_hot_labels(y, self.num_classes, y.shape[0], "ConditionalVAE").to(device)
        z = self.prior(onehot).sample()
        likelihood = self.observation(z, onehot)
        return likelihood.mean if mean else likelihood.sample()
