"""One builder for the VAE-like guides: diagonal or flow posterior, MLP or conv encoder."""

from __future__ import annotations

from collections.abc import Sequence

from .conv import (
    ConvConditionalDiagonalNormalGuide,
    ConvConditionalFlowGuide,
    ConvDiagonalNormalGuide,
    ConvFlowGuide,
)
from .flow import FLOWS, ConditionalFlowGuide, FlowGuide
from .gaussian import ConditionalDiagonalNormalGuide, DiagonalNormalGuide

#: the guides :func:`amortized_guide` builds: the diagonal Normal, or it pushed through flows
GUIDES = ("diagonal", *FLOWS)


def amortized_guide(
    kind: str,
    x_dim: int,
    z_dim: int,
    hidden: Sequence[int],
    flow_layers: int = 4,
    dropout: float = 0.0,
    num_classes: int | None = None,
    flow_hidden: Sequence[int] | None = None,
    image_shape: Sequence[int] | None = None,
):
    """The guide named ``kind`` (one of :data:`GUIDES`) for a VAE-like model:
    :class:`DiagonalNormalGuide` for ``"diagonal"``, else a :class:`FlowGuide` with
    ``flow_layers`` layers of that flow; the conditional forms when ``num_classes`` is
    given (the encoder then also reads the label); the convolutional encoder's
    (:class:`ConvDiagonalNormalGuide`, :class:`ConvFlowGuide`, reading images
    ``(B, H, W)``) when ``image_shape`` is given.

    :raises ValueError: for an unknown ``kind``, naming the choices.
    """
    if kind not in GUIDES:
        raise ValueError(f"unknown guide '{kind}'; choose one of {list(GUIDES)}")
    if image_shape is not None:
        return _conv_guide(kind, image_shape, z_dim, hidden, flow_layers, dropout, num_classes,
                           flow_hidden)  # fmt: skip
    if kind == "diagonal":
        if num_classes is None:
            return DiagonalNormalGuide(x_dim, z_dim, hidden, dropout=dropout)
        return ConditionalDiagonalNormalGuide(x_dim, num_classes, z_dim, hidden, dropout)
    if num_classes is None:
        return FlowGuide(x_dim, z_dim, hidden, kind, flow_layers, flow_hidden, dropout)
    return ConditionalFlowGuide(
        x_dim, num_classes, z_dim, hidden, kind, flow_layers, flow_hidden, dropout
    )


def _conv_guide(kind, image_shape, z_dim, hidden, flow_layers, dropout, num_classes, flow_hidden):
    """The conv encoder's guides (:func:`amortized_guide` with ``image_shape``)."""
    if num_classes is None:
        if kind == "diagonal":
            return ConvDiagonalNormalGuide(image_shape, z_dim, hidden, dropout)
        return ConvFlowGuide(image_shape, z_dim, hidden, kind, flow_layers, flow_hidden, dropout)
    if kind == "diagonal":
        return ConvConditionalDiagonalNormalGuide(image_shape, num_classes, z_dim, hidden, dropout)
    return ConvConditionalFlowGuide(
        image_shape, num_classes, z_dim, hidden, kind, flow_layers, flow_hidden, dropout
    )
