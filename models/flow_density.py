r"""A normalizing-flow density model: :math:`x = f(z)`, :math:`z \sim \mathcal N(0, I)`,
trained by exact log-likelihood.

The lecture notes' invertible model: a stack of RealNVP affine coupling layers
(Dinh, Sohl-Dickstein and Bengio, 2017) with a reversal of the coordinates between
layers, so that every coordinate is transformed. With :math:`f = f_K \circ \dots \circ
f_1` invertible and differentiable,

.. math:: \log p(x) = \log \mathcal N\big(f^{-1}(x); 0, I\big)
          + \sum_k \log \big|\det \partial f_k^{-1} / \partial y_k\big|,

which Pyro's ``TransformedDistribution`` computes exactly. The model has no latent
sites: its guide is :class:`~pyro_aevb.guides.NoLatentGuide`, the ELBO is then
:math:`\log p(x)` itself (no gap, no Monte Carlo noise), and :meth:`log_evidence` gives
the same number to the history and to evaluation.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import Permute, affine_coupling
from torch import nn

from pyro_aevb.plate import data_plate


class FlowDensity(nn.Module):
    """RealNVP density of ``x`` (continuous, shape ``(N, x_dim)``, ``x_dim >= 2``).

    :param x_dim: the data's dimension.
    :param num_layers: affine coupling layers (each transforms the second half of the
        coordinates given the first; the coordinates are reversed between layers).
    :param hidden: hidden widths of each coupling layer's network (ReLU).
    """

    pyro_name = "flow_density"

    def __init__(self, x_dim: int, num_layers: int = 4, hidden: Sequence[int] = (64, 64)):
        super().__init__()
        if x_dim < 2:
            raise ValueError(f"a coupling flow needs x_dim >= 2 (it splits x), got {x_dim}")
        self.x_dim = x_dim
        self.couplings = nn.ModuleList(
            affine_coupling(x_dim, hidden_dims=list(hidden)) for _ in range(num_layers)
        )
        self.register_buffer("loc", torch.zeros(x_dim))
        self.register_buffer("scale", torch.ones(x_dim))
        self.register_buffer("reverse", torch.arange(x_dim - 1, -1, -1))

    def _transforms(self) -> list:
        transforms = []
        for i, coupling in enumerate(self.couplings):
            if i > 0:
                transforms.append(Permute(self.reverse))
            transforms.append(coupling)
        return transforms

    def distribution(self) -> dist.TransformedDistribution:
        """:math:`p(x)`, an event of ``x_dim`` coordinates."""
        base = dist.Normal(self.loc, self.scale).to_event(1)
        return dist.TransformedDistribution(base, self._transforms())

    def forward(self, x: torch.Tensor) -> None:
        pyro.module(self.pyro_name, self)
        with data_plate(x):
            pyro.sample("x", self.distribution(), obs=x)

    def log_evidence(self, x: torch.Tensor) -> torch.Tensor:
        """The exact :math:`\\log p(x)` per data point, shape ``(N,)`` (nats)."""
        return self.distribution().log_prob(x)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """``n`` draws of :math:`x = f(z)`, shape ``(n, x_dim)``."""
        return self.distribution().sample((n,))
