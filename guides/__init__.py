"""Guides (amortized variational distributions q), importable as ``pyro_aevb.guides``.

Names: every guide class ends in ``Guide``; ``encode(...)`` returns the parameters of
``q`` (``posterior`` is kept for the exact ``p(z | x)`` of a model, e.g.
:meth:`pyro_aevb.models.FactorAnalysis.posterior`). The old names (``...Encoder``, a
guide's ``posterior``) still work, with a ``FutureWarning``.
"""

from pyro_aevb.deprecation import module_getattr

from .builder import GUIDES, amortized_guide
from .conv import (
    ConvConditionalDiagonalNormalGuide,
    ConvConditionalFlowGuide,
    ConvDiagonalNormalGuide,
    ConvFlowGuide,
)
from .conv_gmvae import ConvGMVAEGuide
from .flow import FLOWS, ConditionalFlowGuide, FlowGuide
from .gaussian import ConditionalDiagonalNormalGuide, DiagonalNormalGuide
from .gmvae import GMVAEGuide
from .linear import (
    COVARIANCE_GUIDES,
    DiagonalCovarianceGuide,
    FullCovarianceGuide,
    LinearGaussianGuide,
)
from .no_latent import NoLatentGuide
from .vrnn import VRNNGuide

#: the names before 0.2, kept as deprecated aliases
_RENAMED = {
    "DiagonalNormalEncoder": lambda: DiagonalNormalGuide,
    "ConditionalDiagonalNormalEncoder": lambda: ConditionalDiagonalNormalGuide,
    "GMVAEEncoder": lambda: GMVAEGuide,
    "VRNNEncoder": lambda: VRNNGuide,
}
__getattr__ = module_getattr(__name__, _RENAMED)

__all__ = [
    "NoLatentGuide",
    "COVARIANCE_GUIDES",
    "FLOWS",
    "GUIDES",
    "ConditionalDiagonalNormalGuide",
    "ConditionalFlowGuide",
    "ConvConditionalDiagonalNormalGuide",
    "ConvConditionalFlowGuide",
    "ConvDiagonalNormalGuide",
    "ConvFlowGuide",
    "ConvGMVAEGuide",
    "DiagonalCovarianceGuide",
    "DiagonalNormalGuide",
    "FlowGuide",
    "FullCovarianceGuide",
    "GMVAEGuide",
    "LinearGaussianGuide",
    "VRNNGuide",
    "amortized_guide",
]
