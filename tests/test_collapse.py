"""Posterior-collapse diagnostics against mathematics: closed-form KLs of Gaussian guides
set to known parameters, active units by construction, the ELBO-surgery identity and the
log N bound on the mutual information."""

import math
import warnings

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_aevb import data_plate
from pyro_aevb.collapse import UnsupportedPairError, collapse_report
from tests.conftest import GaussianGuide

D, L, N = 5, 3, 120


class Decoder(nn.Module):
    """``z ~ prior``, ``x | z ~ N(W z, 0.5^2 I)``, with a Normal or a Laplace prior."""

    def __init__(self, prior="normal"):
        super().__init__()
        self.register_buffer("W", torch.randn(D, L, generator=torch.Generator().manual_seed(2)))
        self.prior = prior

    def forward(self, x):
        zeros = x.new_zeros(L)
        p = dist.Normal(zeros, 1.0) if self.prior == "normal" else dist.Laplace(zeros, 1.5)
        with data_plate(x):
            z = pyro.sample("z", p.to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T, 0.5).to_event(1), obs=x)


class FixedGuide(nn.Module):
    """``q(z | x) = N(x A^T + c, diag(s^2))`` with given ``A (L, D)``, ``c (L,)``, ``s (L,)``."""

    def __init__(self, A, c, s):
        super().__init__()
        self.register_buffer("A", A)
        self.register_buffer("c", c)
        self.register_buffer("s", s)

    def mean(self, x):
        return x @ self.A.T + self.c

    def forward(self, x):
        with data_plate(x):
            pyro.sample("z", dist.Normal(self.mean(x), self.s).to_event(1))


@pytest.fixture
def x():
    return torch.randn(N, D, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _guide(active_dims=L, spread=1.0, s=(0.5, 0.8, 1.2)):
    g = torch.Generator().manual_seed(1)
    A = spread * torch.randn(L, D, generator=g, dtype=torch.float64)
    A[active_dims:] = 0.0
    c = torch.tensor([0.3, -0.5, 0.1], dtype=torch.float64)
    return FixedGuide(A, c, torch.tensor(s, dtype=torch.float64))


def _report(model, guide, x, **options):
    options.setdefault("warn", False)
    return collapse_report(model.double(), guide, {"x": x}, **options)


def test_analytic_kl_per_dim_is_the_closed_form(x):
    guide = _guide()
    report = _report(Decoder(), guide, x)
    mu, s = guide.mean(x), guide.s
    # KL(N(mu, s^2) || N(0, 1)) = -log s + (s^2 + mu^2) / 2 - 1/2, averaged over x
    expected = (-torch.log(s) + (s**2 + mu**2) / 2 - 0.5).mean(0)
    assert report.kl_method == "analytic"
    assert torch.allclose(report.kl_per_dim, expected, rtol=1e-10, atol=1e-12)
    assert report.units == ["z[0]", "z[1]", "z[2]"]


def test_monte_carlo_kl_matches_the_closed_form(x):
    """An x-independent guide away from the prior: the s.e. is the Monte Carlo noise."""
    guide = _guide(active_dims=0)
    report = _report(Decoder(), guide, x, analytic_kl=False, num_samples=20)
    s, c = guide.s, guide.c
    expected = -torch.log(s) + (s**2 + c**2) / 2 - 0.5
    assert report.kl_method == "monte carlo"
    assert ((report.kl_per_dim - expected).abs() < 4 * report.kl_per_dim_se).all()


def test_monte_carlo_kl_to_a_laplace_prior(x):
    r"""KL(N(mu, s^2) || Laplace(0, b)) = -1/2 log(2 pi e s^2) + log 2b + E|z| / b, with
    E|z| = s sqrt(2/pi) exp(-mu^2 / 2 s^2) + mu (1 - 2 Phi(-mu / s))."""
    guide, b = _guide(), 1.5
    report = _report(Decoder("laplace"), guide, x, num_samples=50)
    mu, s = guide.mean(x), guide.s
    phi = torch.distributions.Normal(0.0, 1.0).cdf(-mu / s)
    abs_mean = s * math.sqrt(2 / math.pi) * torch.exp(-(mu**2) / (2 * s**2)) + mu * (1 - 2 * phi)
    expected = -0.5 * torch.log(2 * math.pi * math.e * s**2) + math.log(2 * b) + abs_mean / b
    assert report.kl_method == "monte carlo"
    # the s.e. over points also holds the spread over x, which the difference lacks: lenient
    assert ((report.kl_per_dim - expected.mean(0)).abs() < 4 * report.kl_per_dim_se).all()


def test_a_guide_equal_to_the_prior_has_no_active_units_kl_or_information(x):
    guide = FixedGuide(
        torch.zeros(L, D, dtype=torch.float64),
        torch.zeros(L, dtype=torch.float64),
        torch.ones(L, dtype=torch.float64),
    )
    with pytest.warns(UserWarning, match="only 0 of 3 latent units are active.*free bits"):
        report = collapse_report(Decoder().double(), guide, {"x": x})
    assert report.active_units == 0 and report.num_units == L
    assert torch.equal(report.kl_per_dim, torch.zeros(L, dtype=torch.float64))
    assert torch.equal(report.mean_variance, torch.zeros(L, dtype=torch.float64))
    assert abs(report.mutual_information) <= 4 * report.mutual_information_se + 1e-12
    assert abs(report.marginal_kl) <= 4 * report.average_kl_mc_se + 1e-12


@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_units_whose_mean_moves_with_x_are_the_active_ones(x, k):
    report = _report(Decoder(), _guide(active_dims=k), x)
    assert report.active_units == k
    assert report.active.tolist() == [j < k for j in range(L)]
    # the inactive units' posterior means do not move at all
    assert torch.equal(report.mean_variance[k:], torch.zeros(L - k, dtype=torch.float64))
    assert report.to_dict()["active_units"] == k


def test_the_threshold_is_a_parameter(x):
    report = _report(Decoder(), _guide(spread=0.1), x)
    variance = report.mean_variance
    between = float(variance.min() + variance.max()) / 2
    assert _report(Decoder(), _guide(spread=0.1), x, threshold=between).active_units == int(
        (variance > between).sum()
    )
    with pytest.raises(ValueError, match="threshold must be"):
        _report(Decoder(), _guide(), x, threshold=-1.0)


def test_information_plus_marginal_kl_is_the_average_kl(x):
    report = _report(Decoder(), _guide(), x, num_samples=20)
    # by construction, from the same draws
    total = report.mutual_information + report.marginal_kl
    assert total == pytest.approx(report.average_kl_mc, rel=1e-10)
    # and the Monte Carlo average KL estimates the closed form
    exact = float(report.kl_per_dim.sum())  # analytic
    assert abs(total - exact) < 4 * report.average_kl_mc_se
    assert 0 < report.mutual_information < math.log(N)
    assert report.marginal_kl > -4 * report.average_kl_mc_se


def test_information_is_at_most_log_n(x):
    """Codes far apart relative to their spread: I(x; z) approaches, never passes, log N."""
    report = _report(Decoder(), _guide(spread=5.0, s=(0.01, 0.01, 0.01)), x, num_samples=5)
    assert report.mutual_information <= math.log(N) + 1e-9
    assert report.mutual_information > math.log(N) - 0.05
    sub = _report(Decoder(), _guide(spread=5.0, s=(0.01, 0.01, 0.01)), x, max_points=30)
    assert sub.num_points == 30 and sub.mutual_information <= math.log(30) + 1e-9


def test_a_full_covariance_guide_is_refused(linear_gaussian):
    model, x = linear_gaussian
    with pytest.raises(UnsupportedPairError, match="MultivariateNormal couples them"):
        collapse_report(model, GaussianGuide(model), {"x": x})


class ConditionalPrior(nn.Module):
    """``z | y ~ N(y, 1)``: a prior that depends on the data."""

    def forward(self, x, y):
        with data_plate(x):
            z = pyro.sample("z", dist.Normal(y.unsqueeze(-1).expand(-1, L), 1.0).to_event(1))
            loc = z.sum(-1, keepdim=True).expand(*z.shape[:-1], D)
            pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)


def test_a_data_dependent_prior_has_no_marginal_kl(x):
    y = torch.linspace(-1, 1, N, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = collapse_report(ConditionalPrior(), _guide(), {"x": x, "y": y}, warn=False)
    assert report.mutual_information is None and report.marginal_kl is None
    assert "p(z) depends on the data" in report.unavailable["mutual_information"]
    assert "collapse_unavailable" in report.to_dict()
    assert report.kl_per_dim.shape == (L,)


def test_the_callers_random_state_is_left_alone(x):
    torch.manual_seed(5)
    before = torch.rand(1)
    torch.manual_seed(5)
    _report(Decoder(), _guide(), x)
    assert torch.equal(torch.rand(1), before)
