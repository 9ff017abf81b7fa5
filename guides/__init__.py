"""Amortized posteriors (Pyro guide functions), importable as ``pyro_aevb.guides``."""

from .gaussian import ConditionalDiagonalNormalEncoder, DiagonalNormalEncoder
from .gmvae import GMVAEEncoder
from .linear import (
    COVARIANCE_GUIDES,
    DiagonalCovarianceGuide,
    FullCovarianceGuide,
    LinearGaussianGuide,
)
from .vrnn import VRNNEncoder

__all__ = [
    "COVARIANCE_GUIDES",
    "ConditionalDiagonalNormalEncoder",
    "DiagonalCovarianceGuide",
    "DiagonalNormalEncoder",
    "FullCovarianceGuide",
    "GMVAEEncoder",
    "LinearGaussianGuide",
    "VRNNEncoder",
]
