"""Linear-Gaussian guides :math:`q(z \\mid x) = \\mathcal{N}(V x + c, \\Sigma)`, the
family that contains the exact posterior of factor analysis."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from pyro_aevb.nn import check_flat_input, inverse_softplus
from pyro_aevb.plate import data_plate


class LinearGaussianGuide(nn.Module):
    r"""Base of the guides :math:`q_\phi(z \mid x) = \mathcal{N}(V x + c, \Sigma)` whose
    covariance does not depend on :math:`x`; subclasses say how :math:`\Sigma` is
    parametrized through its Cholesky factor (:meth:`scale_tril`).

    :param x_dim: observed dimension ``D``.
    :param z_dim: latent dimension ``L``.
    :param bias: learn the offset ``c`` (needed when the model has a mean ``b``).
    :param site: name of the latent site.

    ``V`` starts with standard-normal entries (as in Yang's tutorial, section 5.2)
    and :math:`\Sigma` at the identity.
    """

    def __init__(self, x_dim: int = 3, z_dim: int = 2, bias: bool = False, site: str = "z"):
        super().__init__()
        self.x_dim, self.z_dim, self.site = x_dim, z_dim, site
        self.V = nn.Parameter(torch.randn(z_dim, x_dim))
        self.c = nn.Parameter(torch.zeros(z_dim)) if bias else None

    def scale_tril(self) -> torch.Tensor:
        """Lower-triangular Cholesky factor of :math:`\\Sigma`, shape ``(L, L)``."""
        raise NotImplementedError

    @property
    def covariance(self) -> torch.Tensor:
        """:math:`\\Sigma`, shape ``(L, L)``."""
        tril = self.scale_tril()
        return tril @ tril.T

    def loc(self, x: torch.Tensor) -> torch.Tensor:
        """Posterior means :math:`V x + c`, shape ``(B, L)``."""
        loc = x @ self.V.T
        return loc + self.c if self.c is not None else loc

    #: the name under which the guide registers with Pyro's param store (``pyro.module``);
    #: fixed, since checkpoints record the parameter names it makes
    pyro_name = "encoder"

    def distribution(self, x: torch.Tensor) -> dist.MultivariateNormal:
        r""":math:`q_\phi(z \mid x)`, batch shape ``(B,)``, event shape ``(L,)``."""
        return dist.MultivariateNormal(self.loc(x), scale_tril=self.scale_tril())

    def forward(self, x: torch.Tensor) -> None:
        check_flat_input(x, self.x_dim, type(self).__name__)
        pyro.module(self.pyro_name, self)
        with data_plate(x):
            pyro.sample(self.site, self.distribution(x))


class FullCovarianceGuide(LinearGaussianGuide):
    r""":math:`\Sigma = L L^\top` with a free lower-triangular :math:`L` whose diagonal is
    kept positive by a softplus: any covariance, so for factor analysis the family
    contains the exact posterior and AEVB's E-step can close the gap exactly."""

    def __init__(self, x_dim: int = 3, z_dim: int = 2, bias: bool = False, site: str = "z"):
        super().__init__(x_dim, z_dim, bias, site)
        self.raw_tril = nn.Parameter(torch.zeros(z_dim, z_dim))
        self.raw_diag = nn.Parameter(torch.full((z_dim,), inverse_softplus(1.0)))

    def scale_tril(self) -> torch.Tensor:
        return torch.tril(self.raw_tril, -1) + torch.diag(F.softplus(self.raw_diag) + 1e-5)


class DiagonalCovarianceGuide(LinearGaussianGuide):
    r""":math:`\Sigma = \operatorname{diag}(\sigma^2)`: a mean-field family. When the exact
    posterior is correlated it is not in the family, and the gap
    :math:`\log p(x) - \mathrm{ELBO}` stays positive however long the E-step runs."""

    def __init__(self, x_dim: int = 3, z_dim: int = 2, bias: bool = False, site: str = "z"):
        super().__init__(x_dim, z_dim, bias, site)
        self.raw_diag = nn.Parameter(torch.full((z_dim,), inverse_softplus(1.0)))

    def scale_tril(self) -> torch.Tensor:
        return torch.diag(F.softplus(self.raw_diag) + 1e-5)


#: the covariance families by name, for the command line and the pair registry
COVARIANCE_GUIDES = {"full": FullCovarianceGuide, "diagonal": DiagonalCovarianceGuide}
