"""The default VAE: the tutorial paper's architecture (section 5.3), Gaussian encoder
and decoder MLPs, on the bundled MNIST subset with dynamic binarization."""

from __future__ import annotations

from typing import Annotated

from ..data.dataset import Dataset
from .options import DROPOUT, FLOW_LAYERS, GUIDE, HIDDEN, LATENT_DIM, LIKELIHOOD
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
):
    """``VAE`` with a guide of the same hidden sizes: a ``DiagonalNormalGuide``, or a
    ``FlowGuide`` of ``flow_layers`` IAF or planar layers (``guide="iaf"``, ``"planar"``)."""
    from ..guides import amortized_guide
    from ..models import VAE

    x_dim = train.num_features
    model = VAE(x_dim, z_dim, hidden, likelihood=likelihood, dropout=dropout)
    return model, amortized_guide(guide, x_dim, z_dim, hidden, flow_layers, dropout)


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
    )
)
