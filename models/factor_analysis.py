"""Factor analysis, the linear-Gaussian latent variable model with exact evidence."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn import functional as F

from pyro_aevb.nn import check_flat_input, inverse_softplus
from pyro_aevb.plate import data_plate


class FactorAnalysis(nn.Module):
    r"""Factor analysis: :math:`z \sim \mathcal{N}(0, I_L)`,
    :math:`x \mid z \sim \mathcal{N}(W z + b, \Phi)` with diagonal :math:`\Phi`.

    The evidence is Gaussian in closed form,

    .. math::

        \log p_\theta(x) = \log \mathcal{N}(x;\, b,\, W W^\top + \Phi),

    which :meth:`log_evidence` returns; :func:`pyro_aevb.fit` and
    :func:`pyro_aevb.evaluate` report it next to the ELBO and the
    importance-sampled estimate. The exact posterior is Gaussian with covariance
    :math:`(I + W^\top \Phi^{-1} W)^{-1}` (independent of :math:`x`) and a mean
    linear in :math:`x` (Murphy, 2012, section 12.1.2): :meth:`posterior` gives it.
    Yang, "Training Latent Variable Models with Auto-encoding Variational Bayes",
    section 5.2, fits this model with AEVB.

    :param x_dim: observed dimension ``D``.
    :param z_dim: latent dimension ``L``.
    :param bias: learn the mean ``b`` (the paper assumes de-meaned data, ``b = 0``).
    :param init_noise_scale: initial standard deviation of each noise dimension.

    ``W`` is initialized with standard-normal entries, as in the paper; the noise
    standard deviations are ``softplus`` of free parameters, kept above 1e-3.
    Sites: ``z`` ``(B, L)`` and observed ``x`` ``(B, D)``, in the data plate.
    """

    MIN_SCALE = 1e-3

    def __init__(
        self, x_dim: int = 3, z_dim: int = 2, bias: bool = False, init_noise_scale: float = 1.0
    ):
        super().__init__()
        if init_noise_scale <= self.MIN_SCALE:
            raise ValueError(f"init_noise_scale must exceed {self.MIN_SCALE}")
        self.x_dim, self.z_dim = x_dim, z_dim
        self.W = nn.Parameter(torch.randn(x_dim, z_dim))
        self.b = nn.Parameter(torch.zeros(x_dim)) if bias else None
        raw = inverse_softplus(init_noise_scale - self.MIN_SCALE)
        self.raw_noise_scale = nn.Parameter(torch.full((x_dim,), raw))

    @property
    def noise_scale(self) -> torch.Tensor:
        """Standard deviations :math:`\\sqrt{\\Phi_{dd}}`, shape ``(D,)``."""
        return F.softplus(self.raw_noise_scale) + self.MIN_SCALE

    @property
    def mean(self) -> torch.Tensor:
        """``b``, shape ``(D,)`` (zeros without ``bias``)."""
        return self.b if self.b is not None else self.W.new_zeros(self.x_dim)

    @property
    def covariance(self) -> torch.Tensor:
        """Marginal covariance :math:`W W^\\top + \\Phi` of ``x``, shape ``(D, D)``."""
        return self.W @ self.W.T + torch.diag(self.noise_scale**2)

    #: the name under which the model registers with Pyro's param store (``pyro.module``);
    #: fixed, since checkpoints record the parameter names it makes
    pyro_name = "factor_analysis"

    def forward(self, x: torch.Tensor) -> None:
        """Score a batch ``x`` of shape ``(B, D)``."""
        check_flat_input(x, self.x_dim, "FactorAnalysis")
        pyro.module(self.pyro_name, self)
        with data_plate(x):
            # A multivariate normal prior, so that TraceMeanField_ELBO finds the
            # analytic KL to the guides of guides/linear.py (also multivariate normal).
            eye = torch.eye(self.z_dim, dtype=x.dtype, device=x.device)
            z = pyro.sample("z", dist.MultivariateNormal(x.new_zeros(self.z_dim), scale_tril=eye))
            loc = z @ self.W.T + self.mean
            pyro.sample("x", dist.Normal(loc, self.noise_scale).to_event(1), obs=x)

    def log_evidence(self, x: torch.Tensor) -> torch.Tensor:
        """Exact :math:`\\log p_\\theta(x)` per data point, nats, shape ``(B,)``."""
        check_flat_input(x, self.x_dim, "FactorAnalysis")
        mvn = dist.MultivariateNormal(self.mean, covariance_matrix=self.covariance)
        return mvn.log_prob(x)

    def posterior(self, x: torch.Tensor) -> dist.MultivariateNormal:
        r"""Exact posterior :math:`p_\theta(z \mid x)`, batch shape ``(B,)``, event ``(L,)``."""
        precision_noise = self.noise_scale**-2
        precision = torch.eye(self.z_dim, dtype=x.dtype, device=x.device)
        precision = precision + (self.W.T * precision_noise) @ self.W
        cov = torch.linalg.inv(precision)
        mean = ((x - self.mean) * precision_noise) @ self.W @ cov
        return dist.MultivariateNormal(mean, covariance_matrix=cov)

    @torch.no_grad()
    def sample(self, num_samples: int, generator: torch.Generator | None = None):
        """``num_samples`` draws of ``x`` from the model, shape ``(num_samples, D)``."""
        z = torch.randn(num_samples, self.z_dim, generator=generator, device=self.W.device)
        eps = torch.randn(num_samples, self.x_dim, generator=generator, device=self.W.device)
        return z @ self.W.T + self.mean + eps * self.noise_scale
