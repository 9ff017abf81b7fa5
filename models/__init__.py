"""Generative models (Pyro model functions), importable as ``pyro_aevb.models``."""

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
    "FactorAnalysis",
    "GaussianMixtureVAE",
    "VAE",
    "VRNN",
]
