r"""Flow posteriors: amortized guides whose :math:`q(z \mid x)` is a diagonal Normal from the
encoder pushed through conditional flow layers (:mod:`pyro_aevb.guides.transforms`).

With the encoder's hidden features :math:`h = h_\phi(x)` (``(B, C)``, the last hidden
layer), the base :math:`z_0 \sim \mathcal N(\mu_\phi(x), \operatorname{diag}
\sigma_\phi^2(x))` and :math:`z = f_K(\dots f_1(z_0; h) \dots; h)`,

.. math::

    \log q(z \mid x) = \log \mathcal N(z_0; \mu, \sigma^2) - \sum_k \log|\det J_{f_k}|,

exactly, as a :class:`pyro.distributions.TransformedDistribution` with event shape
``(L,)``: every objective, the importance-sampled evaluation, its ESS and Pareto
:math:`\hat k`, and AIS started from the guide use it unchanged. Densities that couple the
latent dimensions have no per-dimension KL, so :func:`pyro_aevb.collapse.collapse_report`
refuses them (only the active units can still be read from a diagonal guide).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch

from pyro_aevb.nn import check_flat_input
from pyro_aevb.plate import data_plate

from .gaussian import ConditionalDiagonalNormalGuide, DiagonalNormalGuide
from .transforms import FLOWS, flow_layers


def default_flow_hidden(z_dim: int) -> tuple[int, ...]:
    """One hidden layer of ``max(64, 2 L)`` units for each flow layer's network."""
    return (max(64, 2 * z_dim),)


class _FlowPosterior:
    """What both flow guides add to their diagonal-Normal parent: the layers and ``q``."""

    def _init_flows(self, flow: str, num_layers: int, flow_hidden: Sequence[int] | None):
        hidden = tuple(flow_hidden) if flow_hidden else default_flow_hidden(self.z_dim)
        context_dim = self.head.loc.in_features
        self.flow, self.num_layers, self.flow_hidden = flow, num_layers, hidden
        self.flows = flow_layers(flow, self.z_dim, context_dim, num_layers, hidden)

    def distribution(self, encoder_input: torch.Tensor) -> dist.TransformedDistribution:
        r""":math:`q(z \mid x)`: batch shape ``(B,)``, event shape ``(L,)``."""
        h = self.trunk(encoder_input)
        loc, scale = self.head(h)
        base = dist.Normal(loc, scale).to_event(1)
        return dist.TransformedDistribution(base, [layer.condition(h) for layer in self.flows])

    def _sample(self, x: torch.Tensor, encoder_input: torch.Tensor) -> None:
        pyro.module(self.pyro_name, self)
        with data_plate(x):
            pyro.sample(self.site, self.distribution(encoder_input))


class FlowGuide(_FlowPosterior, DiagonalNormalGuide):
    r"""Guide :math:`q_\phi(z \mid x)`: the MLP encoder's diagonal Normal pushed through
    ``num_layers`` conditional flow layers of kind ``flow`` (``"iaf"``: Kingma et al.,
    2016; ``"planar"``: Rezende & Mohamed, 2015), conditioned on the encoder's last hidden
    layer. Pairs with any model whose only latent site is ``site`` of shape ``(B, L)`` in
    the data plate, e.g. :class:`pyro_aevb.models.VAE`.

    :param x_dim: features per data point.
    :param z_dim: latent dimension ``L``.
    :param hidden: the encoder's hidden layer sizes; the last is the flows' context size.
    :param flow: ``"iaf"`` or ``"planar"``.
    :param num_layers: the number ``K`` of flow layers.
    :param flow_hidden: hidden sizes of each layer's network (default
        :func:`default_flow_hidden`; for IAF each at least ``z_dim``).
    :param dropout: dropout rate after each hidden layer of the encoder.
    :param site: name of the latent site this guide samples.
    """

    def __init__(
        self,
        x_dim: int = 784,
        z_dim: int = 20,
        hidden: Sequence[int] = (500, 500),
        flow: str = "iaf",
        num_layers: int = 4,
        flow_hidden: Sequence[int] | None = None,
        dropout: float = 0.0,
        site: str = "z",
    ):
        super().__init__(x_dim, z_dim, hidden, dropout, site)
        self._init_flows(flow, num_layers, flow_hidden)

    def forward(self, x: torch.Tensor) -> None:
        check_flat_input(x, self.x_dim, type(self).__name__)
        self._sample(x, x)


class ConditionalFlowGuide(_FlowPosterior, ConditionalDiagonalNormalGuide):
    r"""Guide :math:`q_\phi(z \mid x, y)` of :class:`FlowGuide`'s form whose encoder reads the
    data and the one-hot label (as :class:`ConditionalDiagonalNormalGuide`), for
    conditional models such as :class:`pyro_aevb.models.ConditionalVAE`.

    :param num_classes: number of classes of the integer labels ``y``.

    The other parameters are those of :class:`FlowGuide`.
    """

    def __init__(
        self,
        x_dim: int = 784,
        num_classes: int = 10,
        z_dim: int = 20,
        hidden: Sequence[int] = (500, 500),
        flow: str = "iaf",
        num_layers: int = 4,
        flow_hidden: Sequence[int] | None = None,
        dropout: float = 0.0,
        site: str = "z",
    ):
        super().__init__(x_dim, num_classes, z_dim, hidden, dropout, site)
        self._init_flows(flow, num_layers, flow_hidden)


__all__ = ["FLOWS", "ConditionalFlowGuide", "FlowGuide", "default_flow_hidden"]
