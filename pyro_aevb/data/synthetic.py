"""Synthetic data from a factor-analysis model, with the true parameters."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .dataset import Dataset


@dataclass(frozen=True)
class FactorAnalysisParams:
    """True parameters of ``z ~ N(0, I_L)``, ``x | z ~ N(W z + b, diag(psi))``.

    ``W`` is ``(D, L)``, ``b`` and ``psi`` are ``(D,)``.
    """

    W: torch.Tensor
    b: torch.Tensor
    psi: torch.Tensor

    @property
    def covariance(self) -> torch.Tensor:
        """Marginal covariance of ``x``: ``W W^T + diag(psi)``, shape ``(D, D)``."""
        return self.W @ self.W.T + torch.diag(self.psi)

    def log_evidence(self, x: torch.Tensor) -> torch.Tensor:
        """Exact ``log p(x) = log N(x; b, W W^T + diag(psi))``, nats, shape ``(N,)``."""
        mvn = torch.distributions.MultivariateNormal(self.b, covariance_matrix=self.covariance)
        return mvn.log_prob(x)


def synthetic_factor_analysis(
    num_train: int = 1000,
    num_test: int = 1000,
    latent_dim: int = 2,
    obs_dim: int = 3,
    seed: int = 0,
) -> tuple[Dataset, Dataset, FactorAnalysisParams]:
    """Draw train and test sets from a random factor-analysis model.

    ``W`` has standard-normal entries, ``b = 0`` and the noise variances ``psi``
    are uniform on ``[0.1, 0.5]``. Returns ``(train, test, true_params)``;
    ``true_params.log_evidence(test.x).mean()`` is the ceiling any fitted model
    can reach in expectation.
    """
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(obs_dim, latent_dim, generator=g)
    b = torch.zeros(obs_dim)
    psi = 0.1 + 0.4 * torch.rand(obs_dim, generator=g)
    params = FactorAnalysisParams(W, b, psi)
    n = num_train + num_test
    z = torch.randn(n, latent_dim, generator=g)
    x = z @ W.T + b + psi.sqrt() * torch.randn(n, obs_dim, generator=g)
    name = f"factor-analysis-L{latent_dim}-D{obs_dim}"
    full = Dataset(x, None, None, (obs_dim,), name)
    return full.subset(range(num_train)), full.subset(range(num_train, n)), params
