"""The Gaussian-mixture VAE with a convolutional decoder, for images."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch.nn import functional as F

from pyro_aevb.conv import DEFAULT_CHANNELS, ConvDecoder, check_image_input, check_image_shape
from pyro_aevb.nn import glorot_normal_
from pyro_aevb.plate import data_plate
from pyro_aevb.relaxed import GumbelMaxCategorical

from .gmvae import GaussianMixtureVAE


class ConvGaussianMixtureVAE(GaussianMixtureVAE):
    r""":class:`~pyro_aevb.models.GaussianMixtureVAE` (the same mixture prior
    :math:`p(z) = \frac1C \sum_c \mathcal N(z; \mu_c, \sigma_c^2)`) whose decoder is
    :class:`pyro_aevb.conv.ConvDecoder`, for images ``x`` ``(B, H, W)``; the observed
    site's event is the whole image, and an enumerated ``y``'s leading dimension passes
    through the decoder.

    :param image_shape: ``(H, W)``, each a multiple of 4.
    :param channels: the encoder's two convolution channels (reversed here).

    The other parameters are those of :class:`~pyro_aevb.models.GaussianMixtureVAE`
    (``hidden``: the dense sizes between the latent and the convolutions).
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (28, 28),
        num_clusters: int = 10,
        z_dim: int = 64,
        hidden: Sequence[int] = (512,),
        likelihood: str = "bernoulli",
        channels: Sequence[int] = DEFAULT_CHANNELS,
    ):
        shape = check_image_shape(image_shape, "ConvGaussianMixtureVAE")
        super().__init__(shape[0] * shape[1], num_clusters, z_dim, [1], likelihood)
        self.image_shape = shape
        self.decoder = glorot_normal_(ConvDecoder(shape, z_dim, hidden, channels))

    def forward(self, x: torch.Tensor) -> None:
        """Score a batch of images ``x`` of shape ``(B, H, W)``."""
        check_image_input(x, self.image_shape, "ConvGaussianMixtureVAE")
        pyro.module(self.pyro_name, self)
        with data_plate(x):
            uniform = GumbelMaxCategorical(logits=x.new_zeros(x.shape[0], self.num_clusters))
            y = pyro.sample("y", uniform)
            loc, scale = self.cluster_prior(y)
            z = pyro.sample("z", dist.Normal(loc, scale).to_event(1))
            pyro.sample("x", self.likelihood(self.decoder(z)).to_event(1), obs=x)

    @torch.no_grad()
    def generate(self, clusters: torch.Tensor, mean: bool = True) -> torch.Tensor:
        """Ancestral samples for cluster indices ``clusters`` ``(B,)``; ``(B, H, W)``."""
        weight = self.cluster_prior.loc.weight
        onehot = F.one_hot(clusters.to(weight.device), self.num_clusters).to(weight.dtype)
        loc, scale = self.cluster_prior(onehot)
        z = dist.Normal(loc, scale).sample()
        likelihood = self.likelihood(self.decoder(z)).to_event(1)
        return likelihood.mean if mean else likelihood.sample()
