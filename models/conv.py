"""The variational autoencoder with a convolutional decoder, for images."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_aevb.conv import DEFAULT_CHANNELS, ConvDecoder, check_image_input, check_image_shape
from pyro_aevb.nn import get_likelihood
from pyro_aevb.plate import data_plate


class ConvVAE(nn.Module):
    r"""Generative model :math:`p(z) = \mathcal{N}(0, I)`, :math:`p_\theta(x \mid z) =
    \prod_{h, w} \mathrm{Lik}(x_{hw}; f_\theta(z)_{hw})` with :math:`f_\theta` the
    transposed-convolution decoder :class:`pyro_aevb.conv.ConvDecoder` (layer sizes for
    28 x 28 images in :mod:`pyro_aevb.conv`).

    :param image_shape: ``(H, W)``, each a multiple of 4.
    :param z_dim: latent dimension ``L``.
    :param hidden: the dense layer sizes between the latent and the convolutions (the
        encoder's order; the decoder runs them in reverse).
    :param likelihood: ``"bernoulli"`` or ``"continuous_bernoulli"``
        (:data:`pyro_aevb.nn.LIKELIHOODS`).
    :param dropout: dropout rate after the decoder's dense layers.
    :param channels: the encoder's two convolution channels (reversed here).

    Sites: latent ``z`` ``(B, L)``, observed ``x`` ``(B, H, W)`` (event of both image
    dimensions), in the data plate.
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (28, 28),
        z_dim: int = 20,
        hidden: Sequence[int] = (500,),
        likelihood: str = "bernoulli",
        dropout: float = 0.0,
        channels: Sequence[int] = DEFAULT_CHANNELS,
    ):
        super().__init__()
        self.image_shape = check_image_shape(image_shape, "ConvVAE")
        self.z_dim = z_dim
        self.likelihood_name = likelihood
        self.likelihood = get_likelihood(likelihood)
        self.decoder = ConvDecoder(self.image_shape, z_dim, hidden, channels, dropout)

    #: registered with Pyro's param store under the MLP VAE's name: the decoder is all it has
    pyro_name = "decoder"

    def forward(self, x: torch.Tensor) -> None:
        """Score a batch of images ``x`` of shape ``(B, H, W)``."""
        check_image_input(x, self.image_shape, "ConvVAE")
        pyro.module(self.pyro_name, self.decoder)
        with data_plate(x):
            prior = dist.Normal(x.new_zeros(self.z_dim), x.new_ones(self.z_dim)).to_event(1)
            z = pyro.sample("z", prior)
            # the heads give one row's event (W); one more event dim makes the image's
            pyro.sample("x", self.likelihood(self.decoder(z)).to_event(1), obs=x)
