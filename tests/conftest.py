"""Shared fixtures: small real data, a tiny VAE, and a linear-Gaussian model whose
evidence and posterior are known in closed form."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro_aevb.guides import DiagonalNormalGuide
from pyro_aevb.models import VAE
from torch import nn

from pyro_aevb import data_plate
from pyro_aevb.data import load_digits

torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def _fresh_param_store():
    pyro.clear_param_store()
    yield
    pyro.clear_param_store()


@pytest.fixture(scope="session")
def digits():
    """scikit-learn's 8x8 digits, flattened: (1437, 64) train, (360, 64) test."""
    train, test = load_digits()
    return train.flat(), test.flat()


def tiny_vae(x_dim=64, z_dim=4, hidden=(32,), dropout=0.0, likelihood="bernoulli", seed=0):
    torch.manual_seed(seed)
    model = VAE(x_dim, z_dim, hidden, likelihood=likelihood, dropout=dropout)
    guide = DiagonalNormalGuide(x_dim, z_dim, hidden, dropout=dropout)
    return model, guide


class LinearGaussian(nn.Module):
    r"""``z ~ N(0, I_L)``, ``x | z ~ N(W z + b, sigma^2 I_D)``, fixed parameters.

    ``log p(x) = log N(x; b, W W^T + sigma^2 I)`` and the posterior is Gaussian with
    covariance ``(I + W^T W / sigma^2)^{-1}`` and mean ``Sigma W^T (x - b) / sigma^2``.
    """

    def __init__(self, W, b, sigma):
        super().__init__()
        self.register_buffer("W", W)
        self.register_buffer("b", b)
        self.sigma = sigma

    def forward(self, x):
        L = self.W.shape[1]
        with data_plate(x):
            z = pyro.sample("z", dist.Normal(x.new_zeros(L), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.sigma).to_event(1), obs=x)

    def log_evidence(self, x):
        cov = self.W @ self.W.T + self.sigma**2 * torch.eye(self.W.shape[0], dtype=x.dtype)
        return dist.MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x)

    def posterior(self, x):
        L = self.W.shape[1]
        precision = torch.eye(L, dtype=x.dtype) + self.W.T @ self.W / self.sigma**2
        cov = torch.linalg.inv(precision)
        mean = (x - self.b) @ self.W @ cov / self.sigma**2
        return mean, cov


class GaussianGuide(nn.Module):
    """``q(z | x) = N(mean(x) + shift, scale_factor^2 * Sigma)`` with the model's exact
    posterior ``(mean, Sigma)``: exact for ``shift = 0, scale_factor = 1``."""

    def __init__(self, model: LinearGaussian, shift=0.0, scale_factor=1.0):
        super().__init__()
        self.model, self.shift, self.scale_factor = model, shift, scale_factor

    def forward(self, x):
        mean, cov = self.model.posterior(x)
        tril = self.scale_factor * torch.linalg.cholesky(cov)
        with data_plate(x):
            pyro.sample("z", dist.MultivariateNormal(mean + self.shift, scale_tril=tril))


@pytest.fixture
def linear_gaussian():
    """A 2-latent, 5-observed linear-Gaussian model (float64) and 50 data points from it."""
    g = torch.Generator().manual_seed(1)
    W = torch.randn(5, 2, generator=g, dtype=torch.float64)
    b = torch.randn(5, generator=g, dtype=torch.float64)
    model = LinearGaussian(W, b, sigma=0.5)
    z = torch.randn(50, 2, generator=g, dtype=torch.float64)
    x = z @ W.T + b + 0.5 * torch.randn(50, 5, generator=g, dtype=torch.float64)
    return model, x
