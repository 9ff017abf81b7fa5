"""Options that several pairs share, declared once: use them in a builder's annotations,
``z_dim: Annotated[int, LATENT_DIM] = 20``, each pair with its own default."""

from __future__ import annotations

import argparse

from ..nn import LIKELIHOODS
from .spec import Option


def hidden_sizes(text: str) -> list[int]:
    """Parse ``--hidden 500,500`` into ``[500, 500]``."""
    try:
        sizes = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--hidden takes comma-separated sizes, got '{text}'"
        ) from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"--hidden needs positive sizes, got '{text}'")
    return sizes


#: L, the dimension of the continuous latent z (per step for sequence models)
LATENT_DIM = Option("dimension L of the latent z", flag="--latent-dim", type=int, minimum=1)
#: the widths of the hidden layers of the networks
HIDDEN = Option("hidden layer sizes, e.g. 500,500", type=hidden_sizes)
#: the likelihood p(x | z) of each observed value
LIKELIHOOD = Option(
    "the likelihood of each pixel; default: bernoulli for binarized data, else "
    "continuous_bernoulli",
    choices=sorted(LIKELIHOODS),
)
#: dropout before each hidden layer of the networks
DROPOUT = Option("dropout probability of the hidden layers", type=float, interval=(0.0, 1.0))
#: the posterior family q(z | x) of a VAE-like pair
GUIDE = Option(
    "the posterior q(z|x): a diagonal Normal, or it pushed through IAF (affine "
    "autoregressive) or planar flow layers",
    choices=["diagonal", "iaf", "planar"],
    added="0.2",
)
#: K, the flow layers of a flow guide
FLOW_LAYERS = Option(
    "number K of flow layers of an iaf or planar guide",
    flag="--flow-layers",
    type=int,
    minimum=1,
    added="0.2",
)
#: the networks of an image pair: MLPs on flattened pixels, or convolutions on the images
ARCHITECTURE = Option(
    "mlp (dense layers on the flattened pixels) or conv (two stride-2 convolutions, then "
    "dense layers of the --hidden sizes, on the images; sizes in pyro_aevb.conv)",
    choices=["mlp", "conv"],
    added="0.2",
)
