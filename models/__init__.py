"""Generative models (Pyro model functions), importable as ``pyro_aevb.models``."""

from .conv import ConvVAE
from .conv_cvae import ConvConditionalVAE
from .conv_gmvae import ConvGaussianMixtureVAE
from .cvae import FACTORIZATIONS, ConditionalVAE
from .factor_analysis import FactorAnalysis
from .flow_density import FlowDensity
from .gmvae import GaussianMixtureVAE
from .vae import VAE
from .vrnn import VRNN

__all__ = [
    "FlowDensity",
    "FACTORIZATIONS",
    "ConditionalVAE",
    "ConvConditionalVAE",
    "ConvGaussianMixtureVAE",
    "ConvVAE",
    "FactorAnalysis",
    "GaussianMixtureVAE",
    "VAE",
    "VRNN",
]
