"""Shared building blocks: MLPs, a diagonal-Gaussian head, and likelihood heads.

Models and guides are assembled from these so that no architecture is written
twice. Likelihood heads map decoder outputs (logits) to a Pyro distribution
over one data point's features (``event_dim = 1``).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F


class MLP(nn.Sequential):
    """``Linear -> act (-> Dropout)`` for each hidden layer, then a final ``Linear``.

    :param sizes: ``(in, hidden_1, ..., hidden_k, out)``.
    :param activation: module class applied after each hidden layer.
    :param dropout: dropout rate after each hidden activation (0 disables it).
    :param activate_output: also apply the activation (and dropout) after the
        last layer, for a trunk that feeds a separate head.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        activation: type[nn.Module] = nn.ReLU,
        dropout: float = 0.0,
        activate_output: bool = False,
    ):
        if len(sizes) < 2:
            raise ValueError(f"an MLP needs at least input and output sizes, got {sizes}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(n_in, n_out))
            if activate_output or i < len(sizes) - 2:
                layers.append(activation())
                if dropout > 0:
                    layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class DiagonalNormalHead(nn.Module):
    """``h -> (loc, scale)`` with ``scale = softplus(.) + min_scale`` (Loaiza-Ganem &
    Cunningham, 2019, the tutorial paper's encoder), shapes ``(..., out_dim)``."""

    def __init__(self, in_dim: int, out_dim: int, min_scale: float = 1e-4):
        super().__init__()
        self.loc = nn.Linear(in_dim, out_dim)
        self.scale = nn.Linear(in_dim, out_dim)
        self.min_scale = min_scale

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc(h), F.softplus(self.scale(h)) + self.min_scale


def glorot_normal_(module: nn.Module) -> nn.Module:
    """Glorot-normal weights and zero biases for every ``Linear`` in ``module`` (Glorot &
    Bengio, 2010), the initialization the GMVAE needs to start using its clusters
    (see github.com/RuiShu/vae-clustering/issues/10); returns ``module``."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_normal_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


def inverse_softplus(y: float) -> float:
    """The ``x`` with ``softplus(x) = y > 0``: initial values of softplus-parametrized scales."""
    if not y > 0:
        raise ValueError(f"softplus only takes positive values, got {y}")
    return float(torch.tensor(float(y)).expm1().log())


def check_flat_input(x: torch.Tensor, x_dim: int, owner: str) -> None:
    """Raise ``ValueError`` unless ``x`` is a batch of vectors ``(B, x_dim)``."""
    if x.dim() != 2 or x.shape[-1] != x_dim:
        hint = (
            "flatten images with Dataset.flat()"
            if x.dim() > 2
            else f"build {owner} with x_dim={x.shape[-1]} for this data"
        )
        raise ValueError(
            f"{owner} expects x of shape (batch, {x_dim}), got {tuple(x.shape)}; {hint}"
        )


def one_hot_labels(y: torch.Tensor, num_classes: int, batch_size: int, owner: str) -> torch.Tensor:
    """Class indices ``y`` ``(B,)`` as one-hot floats ``(B, num_classes)``.

    :raises ValueError: unless ``y`` holds ``batch_size`` integer labels in
        ``[0, num_classes)``.
    """
    if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.dtype == torch.bool:
        what = y.dtype if isinstance(y, torch.Tensor) else type(y).__name__
        raise ValueError(f"{owner} expects integer class labels y, got {what}")
    if y.shape != (batch_size,):
        raise ValueError(
            f"{owner} expects one label per data point, shape ({batch_size},), "
            f"got {tuple(y.shape)}"
        )
    if batch_size and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"{owner} was built for {num_classes} classes, but the labels range over "
            f"[{int(y.min())}, {int(y.max())}]; build it with num_classes={int(y.max()) + 1} "
            "or map the labels to 0..num_classes-1"
        )
    return F.one_hot(y, num_classes).to(torch.get_default_dtype())


def bernoulli_likelihood(logits: torch.Tensor) -> dist.Distribution:
    """Independent Bernoulli pixels, for binarized data in {0, 1}."""
    return dist.Bernoulli(logits=logits).to_event(1)


def continuous_bernoulli_likelihood(logits: torch.Tensor) -> dist.Distribution:
    """Independent continuous Bernoulli pixels (Loaiza-Ganem & Cunningham, 2019), for
    continuous data in [0, 1]; properly normalized, unlike a Bernoulli on grey values."""
    return dist.ContinuousBernoulli(logits=logits).to_event(1)


#: likelihood heads by name: logits of shape (..., D) -> distribution with event_dim 1
LIKELIHOODS = {
    "bernoulli": bernoulli_likelihood,
    "continuous_bernoulli": continuous_bernoulli_likelihood,
}


def get_likelihood(name: str):
    """The likelihood head registered as ``name``."""
    try:
        return LIKELIHOODS[name]
    except KeyError:
        raise ValueError(
            f"unknown likelihood '{name}'; choose one of {sorted(LIKELIHOODS)}"
        ) from None
