r"""The Gaussian-mixture VAE's posterior :math:`q(y \mid x)\, q(z \mid x, y)` with a
convolutional encoder shared by both factors."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_aevb.conv import DEFAULT_CHANNELS, ConvEncoder, check_image_input
from pyro_aevb.nn import MLP, DiagonalNormalHead, glorot_normal_
from pyro_aevb.plate import data_plate
from pyro_aevb.relaxed import GumbelSoftmax, TemperatureSchedule

from .gmvae import GMVAEGuide


class ConvGMVAEGuide(GMVAEGuide):
    r""":class:`~pyro_aevb.guides.GMVAEGuide` (the same estimators and eval-mode
    enumeration) on images ``(B, H, W)``: features :math:`h(x)` from
    :class:`pyro_aevb.conv.ConvEncoder` (dense sizes ``hidden``), the cluster logits a
    linear map of :math:`h`, and :math:`q(z \mid x, y)` a diagonal Normal from one dense
    layer on :math:`[h, y]`; for :class:`pyro_aevb.models.ConvGaussianMixtureVAE`.

    :param image_shape: ``(H, W)``, each a multiple of 4.
    :param channels: the two convolutions' output channels.

    The other parameters are those of :class:`~pyro_aevb.guides.GMVAEGuide`.
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (28, 28),
        num_clusters: int = 10,
        z_dim: int = 64,
        hidden: Sequence[int] = (512,),
        estimator: str = "enumerate",
        temperature: TemperatureSchedule | None = None,
        channels: Sequence[int] = DEFAULT_CHANNELS,
    ):
        nn.Module.__init__(self)  # the parent's MLPs are replaced, not built
        self._check_options(estimator, temperature)
        self.features = ConvEncoder(image_shape, hidden, channels)
        self.image_shape = self.features.image_shape
        self.x_dim = self.image_shape[0] * self.image_shape[1]
        self.num_clusters, self.z_dim, self.estimator = num_clusters, z_dim, estimator
        self.schedule = temperature or TemperatureSchedule()
        self.temperature = self.schedule.temperature(0)
        width = hidden[-1]
        self.cluster_logits = nn.Linear(width, num_clusters)
        self.latent_trunk = MLP([width + num_clusters, width], activate_output=True)
        self.latent_head = DiagonalNormalHead(width, z_dim)
        glorot_normal_(self)

    def _check_options(self, estimator, temperature) -> None:
        from .gmvae import ESTIMATORS

        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator '{estimator}'; choose one of {list(ESTIMATORS)}")
        if temperature is not None and estimator != "gumbel":
            raise ValueError("a temperature schedule applies to estimator='gumbel' only")

    def _encode_features(self, h: torch.Tensor, y: torch.Tensor):
        """``(loc, scale)`` of :math:`q(z \\mid x, y)` from features ``h`` ``(B, F)`` and
        codes ``y`` ``(..., B or 1, C)``, batch dims broadcast."""
        batch = torch.broadcast_shapes(h.shape[:-1], y.shape[:-1])
        joint = torch.cat([h.expand(*batch, h.shape[-1]), y.expand(*batch, y.shape[-1])], -1)
        return self.latent_head(self.latent_trunk(joint))

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` of :math:`q(z \\mid x, y)` for images ``x`` ``(B, H, W)``."""
        return self._encode_features(self.features(x), y)

    def forward(self, x: torch.Tensor) -> None:
        check_image_input(x, self.image_shape, type(self).__name__)
        pyro.module(self.pyro_name, self)
        with data_plate(x):
            h = self.features(x)
            logits = self.cluster_logits(h)
            if self.training and self.estimator == "gumbel":
                y = pyro.sample(
                    "y", GumbelSoftmax(logits.new_tensor(self.temperature), logits=logits)
                )
            else:
                y = pyro.sample(
                    "y", dist.OneHotCategorical(logits=logits), infer={"enumerate": "parallel"}
                )
            loc, scale = self._encode_features(h, y)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))
