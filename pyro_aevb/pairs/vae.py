"""The default VAE: the tutorial paper's architecture (section 5.3), Gaussian encoder
and decoder MLPs, on the bundled MNIST subset with dynamic binarization."""

from __future__ import annotations

from typing import Annotated

from ..data.dataset import Dataset
from .options import ARCHITECTURE, DROPOUT, FLOW_LAYERS, GUIDE, HIDDEN, LATENT_DIM, LIKELIHOOD
from .registry import register_pair
from .spec import TRAINING_DEFAULTS, PairSpec


def build(
    train: Dataset,
    z_dim: Annotated[int, LATENT_DIM] = 20,
    hidden: Annotated[tuple[int, ...], HIDDEN] = (500, 500),
    likelihood: Annotated[str | None, LIKELIHOOD] = None,
    dropout: Annotated[float, DROPOUT] = 0.0,
    guide: Annotated[str, GUIDE] = "diagonal",
    flow_layers: Annotated[int, FLOW_LAYERS] = 4,
    architecture: Annotated[str, ARCHITECTURE] = "mlp",
):
    """``VAE`` with a guide of the same hidden sizes: a ``DiagonalNormalGuide``, or a
    ``FlowGuide`` of ``flow_layers`` IAF or planar layers (``guide="iaf"``, ``"planar"``);
    with ``architecture="conv"`` the ``ConvVAE`` and the conv guides, on images
    ``(N, H, W)`` (``train`` in the view :func:`view_for` names)."""
    from ..guides import amortized_guide
    from ..models import VAE, ConvVAE

    x_dim = train.num_features
    if architecture == "conv":
        shape = tuple(train.x.shape[1:])
        model = ConvVAE(shape, z_dim, hidden, likelihood=likelihood, dropout=dropout)
        guide_net = amortized_guide(guide, x_dim, z_dim, hidden, flow_layers, dropout,
                                    image_shape=shape)  # fmt: skip
        return model, guide_net
    model = VAE(x_dim, z_dim, hidden, likelihood=likelihood, dropout=dropout)
    return model, amortized_guide(guide, x_dim, z_dim, hidden, flow_layers, dropout)


def view_for(architecture: dict) -> str:
    """Convolutions read the images, the MLPs flattened pixels."""
    return "image" if architecture.get("architecture") == "conv" else "flat"


#: The default VAE: the tutorial paper's architecture (section 5.3), trained on the
#: bundled MNIST subset with dynamic binarization; 100 epochs take about a minute
#: on two CPU cores.
PAIR = register_pair(
    PairSpec(
        name="vae",
        build=build,
        view="flat",
        description="variational autoencoder with a diagonal Gaussian encoder",
        training=dict(TRAINING_DEFAULTS),  # the defaults are this pair's settings
        view_for=view_for,
    )
)
