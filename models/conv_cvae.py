"""The conditional VAE with a convolutional decoder, for labelled images."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch

from pyro_aevb.conv import DEFAULT_CHANNELS, ConvDecoder, check_image_input, check_image_shape
from pyro_aevb.nn import one_hot_labels
from pyro_aevb.plate import data_plate

from .cvae import ConditionalVAE


class ConvConditionalVAE(ConditionalVAE):
    r""":class:`~pyro_aevb.models.ConditionalVAE` (same factorizations and conditional prior)
    whose decoder is :class:`pyro_aevb.conv.ConvDecoder` on :math:`[z, y]` (or :math:`z`),
    for images ``x`` ``(B, H, W)``; the observed site's event is the whole image.

    :param image_shape: ``(H, W)``, each a multiple of 4.
    :param channels: the encoder's two convolution channels (reversed here).

    The other parameters are those of :class:`~pyro_aevb.models.ConditionalVAE`
    (``hidden``: the dense sizes between the latent and the convolutions).
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (28, 28),
        num_classes: int = 10,
        z_dim: int = 20,
        hidden: Sequence[int] = (500,),
        likelihood: str = "continuous_bernoulli",
        dropout: float = 0.0,
        factorization: str = "full",
        channels: Sequence[int] = DEFAULT_CHANNELS,
    ):
        shape = check_image_shape(image_shape, "ConvConditionalVAE")
        super().__init__(
            shape[0] * shape[1], num_classes, z_dim, [1], likelihood, dropout, factorization
        )
        self.image_shape = shape
        decoder_in = z_dim + (num_classes if self.decoder_reads_label else 0)
        self.decoder = ConvDecoder(shape, decoder_in, hidden, channels, dropout)

    def observation(self, z: torch.Tensor, onehot: torch.Tensor) -> dist.Distribution:
        r""":math:`p_\theta(x \mid y, z)`, event ``(H, W)``."""
        return super().observation(z, onehot).to_event(1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Score a batch: images ``x`` ``(B, H, W)``, integer labels ``y`` ``(B,)``."""
        check_image_input(x, self.image_shape, "ConvConditionalVAE")
        onehot = one_hot_labels(y, self.num_classes, x.shape[0], "ConvConditionalVAE").to(x)
        pyro.module(self.pyro_name, self)
        with data_plate(x):
            z = pyro.sample("z", self.prior(onehot))
            pyro.sample("x", self.observation(z, onehot), obs=x)
