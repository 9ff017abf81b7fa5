"""The flow density model (issue 22): exact log-likelihood by change of variables, the
ELBO with a latent-free guide is that log-likelihood, and a fit approaches the true
density from below in expectation (Gibbs' inequality)."""

from __future__ import annotations

import math

import pytest
import torch
from pyro_aevb.guides import NoLatentGuide
from pyro_aevb.models import FlowDensity

from pyro_aevb import fit

#: x = z M, z ~ N(0, I): a correlated Gaussian with covariance M^T M
M = torch.tensor([[1.0, 0.8], [0.0, 0.6]])


def _true_log_density(x: torch.Tensor) -> torch.Tensor:
    cov = M.T @ M
    return torch.distributions.MultivariateNormal(torch.zeros(2), cov).log_prob(x)


def test_log_evidence_is_the_change_of_variables_written_by_hand():
    """log p(x) = log N(z; 0, I) - sum_k log|det J_k| with z = f^{-1}(x), inverted layer
    by layer here: an affine coupling y = (x1, x2 exp(s(x1)) + t(x1)) inverts to
    x2 = (y2 - t(y1)) exp(-s(y1)), with log|det dx/dy| = -sum s(y1)."""
    torch.manual_seed(1)
    flow = FlowDensity(4, num_layers=3, hidden=(8,))
    for p in flow.parameters():  # away from the identity at initialisation
        p.data.normal_(0, 0.3)
    x = torch.randn(5, 4)
    y, log_det = x, torch.zeros(5)
    for i in reversed(range(len(flow.couplings))):
        coupling = flow.couplings[i]
        d = coupling.split_dim
        y1, y2 = y[:, :d], y[:, d:]
        shift, log_scale = coupling.nn(y1)
        log_scale = log_scale.clamp(coupling.log_scale_min_clip, coupling.log_scale_max_clip)
        y = torch.cat([y1, (y2 - shift) * torch.exp(-log_scale)], dim=-1)
        log_det = log_det - log_scale.sum(-1)
        if i > 0:
            y = y.flip(-1)  # the reversal between layers is its own inverse
    base = torch.distributions.Normal(0.0, 1.0).log_prob(y).sum(-1)
    torch.testing.assert_close(flow.log_evidence(x), base + log_det)


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    train = torch.randn(4000, 2) @ M
    test = torch.randn(2000, 2) @ M
    flow = FlowDensity(2, num_layers=4, hidden=(32,))
    result = fit(flow, NoLatentGuide(), {"x": train}, {"x": test}, epochs=5,
                 batch_size=100, lr=5e-3, seed=0, progress=False)  # fmt: skip
    return flow, test, result


def test_the_elbo_of_a_latent_free_pair_is_the_exact_log_likelihood(fitted):
    _, _, result = fitted
    for row in result.history:
        assert row["test_elbo"] == pytest.approx(row["test_log_evidence"], abs=1e-5)


def test_the_fitted_density_approaches_the_true_one_from_below(fitted):
    """E_p[log q - log p] = -KL(p || q) <= 0 for any density q: per test point
    d = log q(x) - log p(x); its mean is below 2 s.e. above zero, and the fit is close
    (KL < 0.05 nats)."""
    flow, test, _ = fitted
    with torch.no_grad():
        d = flow.log_evidence(test) - _true_log_density(test)
    mean, se = float(d.mean()), float(d.std() / math.sqrt(len(d)))
    assert mean < 2 * se
    assert mean > -0.05 - 2 * se


def test_evaluate_reports_the_exact_log_likelihood_not_an_importance_estimate(fitted):
    """With no latent sites there is nothing to sample: evaluate says the log-likelihood
    is exact (no particle count, ESS or k-hat, no reliability warning) and it equals
    the model's log_evidence."""
    import warnings

    from pyro_aevb import evaluate

    flow, test, _ = fitted
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no k-hat warning for an exact quantity
        metrics = evaluate(flow, NoLatentGuide(), {"x": test}, num_particles=500).metrics()
    assert metrics["log_likelihood_exact"] is True
    assert not {"ess_mean", "log_likelihood_particles", "pareto_k_mean"} & set(metrics)
    with torch.no_grad():
        exact = float(flow.log_evidence(test).mean())
    assert metrics["test_log_likelihood"] == pytest.approx(exact, abs=1e-5)
    assert metrics["test_elbo"] == pytest.approx(exact, abs=1e-5)
