r"""Guides with a convolutional encoder (:class:`pyro_aevb.conv.ConvEncoder`), for images
``(B, H, W)``: the diagonal Normal, and it pushed through flow layers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from pyro_aevb.conv import DEFAULT_CHANNELS, ConvEncoder, check_image_input
from pyro_aevb.nn import DiagonalNormalHead, one_hot_labels

from .flow import _FlowPosterior
from .gaussian import DiagonalNormalGuide


class ConvDiagonalNormalGuide(DiagonalNormalGuide):
    r"""Guide :math:`q_\phi(z \mid x) = \mathcal{N}(\mu_\phi(x), \operatorname{diag}
    \sigma^2_\phi(x))` whose encoder is two stride-2 convolutions and dense layers
    (sizes in :mod:`pyro_aevb.conv`); pairs with :class:`pyro_aevb.models.ConvVAE`.

    :param image_shape: ``(H, W)``, each a multiple of 4.
    :param z_dim: latent dimension.
    :param hidden: the dense layer sizes after the convolutions.
    :param dropout: dropout rate after each dense layer.
    :param channels: the two convolutions' output channels.
    :param site: name of the latent site this guide samples.
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (28, 28),
        z_dim: int = 20,
        hidden: Sequence[int] = (500,),
        dropout: float = 0.0,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        site: str = "z",
    ):
        nn.Module.__init__(self)  # the parent's MLP trunk is replaced, not built
        if not hidden:
            raise ValueError(f"{type(self).__name__} needs at least one dense layer")
        self.trunk = ConvEncoder(image_shape, hidden, channels, dropout)
        self.image_shape, self.z_dim, self.site = self.trunk.image_shape, z_dim, site
        self.x_dim = self.image_shape[0] * self.image_shape[1]
        self.head = DiagonalNormalHead(hidden[-1], z_dim)

    def forward(self, x: torch.Tensor) -> None:
        check_image_input(x, self.image_shape, type(self).__name__)
        self._sample(x, x)


class ConvFlowGuide(_FlowPosterior, ConvDiagonalNormalGuide):
    r""":class:`ConvDiagonalNormalGuide`'s Normal pushed through ``num_layers`` conditional
    flow layers (``"iaf"`` or ``"planar"``) conditioned on the encoder's last dense layer,
    as :class:`pyro_aevb.guides.FlowGuide`.

    :param flow: ``"iaf"`` or ``"planar"``.
    :param num_layers: the number of flow layers.
    :param flow_hidden: hidden sizes of each layer's network.

    The other parameters are those of :class:`ConvDiagonalNormalGuide`.
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (28, 28),
        z_dim: int = 20,
        hidden: Sequence[int] = (500,),
        flow: str = "iaf",
        num_layers: int = 4,
        flow_hidden: Sequence[int] | None = None,
        dropout: float = 0.0,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        site: str = "z",
    ):
        super().__init__(image_shape, z_dim, hidden, dropout, channels, site)
        self._init_flows(flow, num_layers, flow_hidden)


class ConvConditionalDiagonalNormalGuide(ConvDiagonalNormalGuide):
    r"""Guide :math:`q_\phi(z \mid x, y)`: :class:`ConvDiagonalNormalGuide` whose dense
    layers read the convolutions' features and the one-hot label side by side, for
    :class:`pyro_aevb.models.ConvConditionalVAE`.

    :param num_classes: number of classes of the integer labels ``y``.

    The other parameters are those of :class:`ConvDiagonalNormalGuide`.
    """

    def __init__(
        self,
        image_shape: Sequence[int] = (28, 28),
        num_classes: int = 10,
        z_dim: int = 20,
        hidden: Sequence[int] = (500,),
        dropout: float = 0.0,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        site: str = "z",
    ):
        super().__init__(image_shape, z_dim, hidden, dropout, channels, site)
        self.num_classes = num_classes
        self.trunk = ConvEncoder(image_shape, hidden, channels, dropout, extra_inputs=num_classes)

    def _encoder_input(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``(B, H * W + C)``: the pixels flattened, then the one-hot label (the trunk
        splits them again: the pixels go through the convolutions)."""
        check_image_input(x, self.image_shape, type(self).__name__)
        onehot = one_hot_labels(y, self.num_classes, x.shape[0], type(self).__name__)
        return torch.cat([x.flatten(1), onehot.to(x)], -1)

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` of ``q(z | x, y)``, each ``(B, z_dim)``."""
        return self.head(self.trunk(self._encoder_input(x, y)))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self._sample(x, self._encoder_input(x, y))


class ConvConditionalFlowGuide(_FlowPosterior, ConvConditionalDiagonalNormalGuide):
    """:class:`ConvConditionalDiagonalNormalGuide`'s Normal pushed through flow layers, as
    :class:`ConvFlowGuide`; the parameters are those two classes'."""

    def __init__(
        self,
        image_shape: Sequence[int] = (28, 28),
        num_classes: int = 10,
        z_dim: int = 20,
        hidden: Sequence[int] = (500,),
        flow: str = "iaf",
        num_layers: int = 4,
        flow_hidden: Sequence[int] | None = None,
        dropout: float = 0.0,
        channels: Sequence[int] = DEFAULT_CHANNELS,
        site: str = "z",
    ):
        super().__init__(image_shape, num_classes, z_dim, hidden, dropout, channels, site)
        self._init_flows(flow, num_layers, flow_hidden)
