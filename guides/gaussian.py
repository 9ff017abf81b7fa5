"""Amortized diagonal-Gaussian guides."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_aevb.deprecation import module_getattr, renamed_method
from pyro_aevb.nn import MLP, DiagonalNormalHead, check_flat_input, one_hot_labels
from pyro_aevb.plate import data_plate


class DiagonalNormalGuide(nn.Module):
    r"""Guide :math:`q_\phi(z \mid x) = \mathcal{N}(\mu_\phi(x), \operatorname{diag}
    \sigma^2_\phi(x))` from an MLP encoder (Kingma & Welling, 2014).

    Pairs with any model whose only latent site is ``site`` of shape ``(B, z_dim)``
    in the data plate, e.g. :class:`pyro_aevb.models.VAE`.

    :param x_dim: features per data point.
    :param z_dim: latent dimension.
    :param hidden: hidden layer sizes (the tutorial paper: two of 500).
    :param dropout: dropout rate after each hidden layer.
    :param site: name of the latent site this guide samples.
    """

    def __init__(
        self,
        x_dim: int = 784,
        z_dim: int = 20,
        hidden: Sequence[int] = (500, 500),
        dropout: float = 0.0,
        site: str = "z",
    ):
        super().__init__()
        if not hidden:
            raise ValueError("DiagonalNormalGuide needs at least one hidden layer")
        self.x_dim, self.z_dim, self.site = x_dim, z_dim, site
        self.trunk = MLP([x_dim, *hidden], dropout=dropout, activate_output=True)
        self.head = DiagonalNormalHead(hidden[-1], z_dim)

    #: the name under which the guide registers with Pyro's param store (``pyro.module``);
    #: fixed, since checkpoints record the parameter names it makes
    pyro_name = "encoder"

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` of ``q(z | x)``, each ``(B, z_dim)``."""
        return self.head(self.trunk(x))

    posterior = renamed_method("encode", "posterior")

    def forward(self, x: torch.Tensor) -> None:
        check_flat_input(x, self.x_dim, type(self).__name__)
        self._sample(x, x)

    def _sample(self, x: torch.Tensor, encoder_input: torch.Tensor) -> None:
        pyro.module(self.pyro_name, self)
        with data_plate(x):
            loc, scale = self.head(self.trunk(encoder_input))
            pyro.sample(self.site, dist.Normal(loc, scale).to_event(1))


class ConditionalDiagonalNormalGuide(DiagonalNormalGuide):
    r"""Guide :math:`q_\phi(z \mid x, y) = \mathcal{N}(\mu_\phi(x, y),
    \operatorname{diag} \sigma^2_\phi(x, y))`: the encoder reads the data and the
    one-hot label side by side (Sohn et al., 2015), for conditional models such as
    :class:`pyro_aevb.models.ConditionalVAE`.

    :param num_classes: number of classes of the integer labels ``y``.

    The other parameters are those of :class:`DiagonalNormalGuide`.
    """

    def __init__(
        self,
        x_dim: int = 784,
        num_classes: int = 10,
        z_dim: int = 20,
        hidden: Sequence[int] = (500, 500),
        dropout: float = 0.0,
        site: str = "z",
    ):
        super().__init__(x_dim + num_classes, z_dim, hidden, dropout, site)
        self.x_dim, self.num_classes = x_dim, num_classes

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loc, scale)`` of ``q(z | x, y)``, each ``(B, z_dim)``."""
        return self.head(self.trunk(self._encoder_input(x, y)))

    def _encoder_input(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        check_flat_input(x, self.x_dim, type(self).__name__)
        onehot = one_hot_labels(y, self.num_classes, x.shape[0], type(self).__name__)
        return torch.cat([x, onehot.to(x)], -1)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self._sample(x, self._encoder_input(x, y))


__getattr__ = module_getattr(
    __name__,
    {
        "DiagonalNormalEncoder": lambda: DiagonalNormalGuide,
        "ConditionalDiagonalNormalEncoder": lambda: ConditionalDiagonalNormalGuide,
    },
)
