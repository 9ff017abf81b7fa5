r"""Conditional flow layers for flow posteriors, built from :mod:`pyro.distributions.transforms`.

Each layer maps a point :math:`u \in \mathbb R^L` to :math:`f(u; h)`, a bijection whose
parameters come from a context :math:`h` (the encoder's hidden features for one data point,
shape ``(B, C)``). Pushed through layers :math:`f_K \circ \dots \circ f_1`, a base density
:math:`q_0` becomes, by the change of variables,

.. math::

    \log q(z_K \mid x) = \log q_0(z_0 \mid x) - \sum_{k=1}^K \log\left|\det
    \frac{\partial f_k(z_{k-1}; h)}{\partial z_{k-1}}\right|,

which :class:`pyro.distributions.TransformedDistribution` computes exactly.

* ``"iaf"``: Pyro's affine autoregressive layer (Kingma et al., 2016),
  :math:`z_i = \mu_i(u_{<i}, h) + \sigma_i(u_{<i}, h)\, u_i` in the layer's order, so
  :math:`\log|\det J| = \sum_i \log \sigma_i`; its inverse is exact (``L`` passes).
* ``"planar"``: :class:`InvertiblePlanar`, Pyro's planar layer (Rezende & Mohamed, 2015)
  :math:`z = u + \hat u \tanh(w^\top u + b)` with :math:`w^\top \hat u \ge -1`,
  :math:`\log|\det J| = \log|1 + (1 - \tanh^2(w^\top u + b))\, w^\top \hat u|`, with an
  inverse at any point (Pyro's only scores its own samples), so that ``log q`` can be
  evaluated at points the guide did not draw (AIS from the guide, replayed guides).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive, ConditionalPlanar
from pyro.distributions.transforms.planar import ConditionedPlanar
from pyro.nn import ConditionalAutoRegressiveNN, DenseNN
from torch import nn

#: the flow layers a flow guide can stack, by name
FLOWS = ("iaf", "planar")

#: bisection steps of the planar inverse: each halves the bracket, of width 2 |w^T u_hat|
_BISECTION_STEPS = 60


class InvertiblePlanar(ConditionedPlanar):
    r"""Pyro's conditioned planar layer with an inverse at any point.

    For :math:`y = x + \hat u \tanh(w^\top x + b)` the scalar :math:`a = w^\top x` solves
    :math:`g(a) = a + c \tanh(a + b) - w^\top y = 0`, :math:`c = w^\top \hat u \ge -1`;
    :math:`g' = 1 + c (1 - \tanh^2) > 0`, so the root is unique and lies in
    :math:`[w^\top y - |c|, w^\top y + |c|]`. It is found by bisection without gradients,
    then one Newton step with gradients, which at the root gives the implicit-function
    derivative, and :math:`x = y - \hat u \tanh(a + b)` (Rezende & Mohamed, 2015, appendix).
    """

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        bias, u, w = self._params() if callable(self._params) else self._params
        u_hat = self.u_hat(u, w)
        c = (w * u_hat).sum(-1, keepdim=True)
        target = (w * y).sum(-1, keepdim=True)
        with torch.no_grad():
            low, high = target - c.abs(), target + c.abs()
            for _ in range(_BISECTION_STEPS):
                mid = (low + high) / 2
                above = mid + c * torch.tanh(mid + bias) > target
                high, low = torch.where(above, mid, high), torch.where(above, low, mid)
            a = ((low + high) / 2).detach()
        act = torch.tanh(a + bias)
        a = a - (a + c * act - target) / (1 + c * (1 - act.pow(2)))
        return y - u_hat * torch.tanh(a + bias)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``log|det df/dx|`` computed from ``x`` (not a cache that an inverse leaves stale)."""
        bias, u, w = self._params() if callable(self._params) else self._params
        u_hat = self.u_hat(u, w)
        act = torch.tanh((w * x).sum(-1, keepdim=True) + bias)
        return torch.log(torch.abs(1 + ((1 - act.pow(2)) * w * u_hat).sum(-1)))


class ConditionalInvertiblePlanar(ConditionalPlanar):
    """Pyro's conditional planar layer whose conditioned layers are :class:`InvertiblePlanar`."""

    def condition(self, context: torch.Tensor) -> InvertiblePlanar:
        # a partial, as Pyro's own: deep copies (pyro's detach) then detach the parameters
        return InvertiblePlanar(partial(self._params, context))


def flow_layers(
    flow: str, z_dim: int, context_dim: int, num_layers: int, hidden: Sequence[int]
) -> nn.ModuleList:
    """``num_layers`` conditional layers of kind ``flow`` on ``R^z_dim``.

    The autoregressive layers alternate between the natural order and its reverse (a fixed
    order, so a rebuilt guide loads a checkpoint's weights into the same structure);
    their networks have hidden sizes ``hidden`` (each at least ``z_dim``). A planar layer's
    ``(b, u, w)`` come from a dense network of the context with hidden sizes ``hidden``.

    :raises ValueError: for an unknown ``flow``, fewer than one layer, or hidden sizes
        smaller than ``z_dim`` (an autoregressive network cannot then reach every output).
    """
    if flow not in FLOWS:
        raise ValueError(f"unknown flow '{flow}'; choose one of {list(FLOWS)}")
    if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
        raise ValueError(f"a flow needs at least one layer, got num_layers={num_layers!r}")
    hidden = [int(h) for h in hidden]
    if not hidden or min(hidden) < 1:
        raise ValueError(f"the flow networks need positive hidden sizes, got {hidden}")
    layers = []
    for k in range(num_layers):
        if flow == "iaf":
            if min(hidden) < z_dim:
                raise ValueError(
                    f"IAF networks need hidden sizes of at least the latent dimension "
                    f"{z_dim}, got {hidden}; pass larger flow hidden sizes"
                )
            order = torch.arange(z_dim) if k % 2 == 0 else torch.arange(z_dim - 1, -1, -1)
            network = ConditionalAutoRegressiveNN(z_dim, context_dim, hidden, permutation=order)
            layers.append(ConditionalAffineAutoregressive(network))
        else:
            network = DenseNN(context_dim, hidden, param_dims=[1, z_dim, z_dim])
            layers.append(ConditionalInvertiblePlanar(network))
    return nn.ModuleList(layers)
