"""Importance-sampled evaluation against closed-form evidence and the ordering of bounds."""

import math

import pyro
import torch
from pyro import poutine
from torch.nn import functional as F

from pyro_aevb import check_pair, elbo_per_datapoint, importance_log_likelihood
from pyro_aevb.evaluation import log_importance_weights
from tests.conftest import GaussianGuide, tiny_vae


def test_exact_posterior_gives_exact_evidence_with_zero_variance(linear_gaussian):
    model, x = linear_gaussian
    guide = GaussianGuide(model)
    exact = model.log_evidence(x)
    summary = check_pair(model, guide, {"x": x})
    log_w = log_importance_weights(model, guide, {"x": x}, 64, summary)
    # p(x, z) / q(z | x) = p(x) for every z when q is the exact posterior.
    assert log_w.shape == (64, 50)
    assert torch.allclose(log_w, exact.expand(64, 50), atol=1e-9)
    for k in (1, 10, 100):
        est = importance_log_likelihood(
            model, guide, {"x": x}, num_particles=k, pareto=False, particle_chunk=3
        )
        assert torch.allclose(est.log_likelihood.double(), exact, atol=1e-9)
        assert torch.allclose(est.ess.double(), torch.full((50,), float(k), dtype=torch.float64))


def _replicated_bounds(model, guide, x, ks, reps):
    """Per-replicate means over data points of IWAE_K - log p(x), for each K."""
    exact = model.log_evidence(x)
    out = {k: [] for k in ks}
    for r in range(reps):
        for k in ks:
            est = importance_log_likelihood(
                model, guide, {"x": x}, num_particles=k, pareto=False, seed=1000 * r + k
            )
            out[k].append(float((est.log_likelihood - exact).mean()))
    return {k: torch.tensor(v, dtype=torch.float64) for k, v in out.items()}


def _mean_se(values):
    return float(values.mean()), float(values.std() / math.sqrt(values.numel()))


def test_bounds_order_and_rise_with_particles(linear_gaussian):
    model, x = linear_gaussian
    guide = GaussianGuide(model, shift=0.4, scale_factor=1.6)
    gaps = _replicated_bounds(model, guide, x, ks=(1, 10, 100), reps=60)
    # Each IWAE_K is a lower bound: its mean gap to log p(x) cannot be positive
    # beyond noise (3 standard errors), and IWAE_1 is the ELBO.
    for k, gap in gaps.items():
        mean, se = _mean_se(gap)
        assert mean < 3 * se, (k, mean, se)
    # The bound rises with K: paired differences are positive beyond 3 standard errors.
    for lo, hi in ((1, 10), (10, 100)):
        mean, se = _mean_se(gaps[hi] - gaps[lo])
        assert mean > 3 * se, (lo, hi, mean, se)
    # And the guide is bad enough that the bound is still well below log p(x) at K = 1.
    assert _mean_se(gaps[1])[0] < -0.1


def test_elbo_matches_closed_form(linear_gaussian):
    """E_q[log w] = log p(x) - KL(q || p(z | x)), with the Gaussian KL in closed form."""
    model, x = linear_gaussian
    shift, factor = 0.4, 1.6
    guide = GaussianGuide(model, shift=shift, scale_factor=factor)
    mean, cov = model.posterior(x)
    q = torch.distributions.MultivariateNormal(
        mean + shift, scale_tril=factor * torch.linalg.cholesky(cov)
    )
    p = torch.distributions.MultivariateNormal(mean, covariance_matrix=cov)
    closed_form = model.log_evidence(x) - torch.distributions.kl_divergence(q, p)
    draws = 2000
    estimate = elbo_per_datapoint(model, guide, {"x": x}, num_particles=draws, batch_size=50)
    # Standard error of the per-point mean of `draws` log-weights.
    log_w = log_importance_weights(
        model, guide, {"x": x}, draws, check_pair(model, guide, {"x": x})
    )
    se = log_w.std(0) / math.sqrt(draws)
    z_scores = (estimate.double() - closed_form) / se
    assert z_scores.abs().max() < 4.5, z_scores.abs().max()  # 50 points: a 4.5-sigma bound


def test_vae_log_weights_match_hand_written_computation(digits):
    """log p(x|z) + log p(z) - log q(z|x) written out by hand, for the same z."""
    train, _ = digits
    model, guide = tiny_vae()
    x = torch.bernoulli(train.x[:20], generator=torch.Generator().manual_seed(0))
    summary = check_pair(model, guide, {"x": x})
    pyro.set_rng_seed(3)
    log_w = log_importance_weights(model, guide, {"x": x}, 1, summary)[0]
    pyro.set_rng_seed(3)
    z = poutine.trace(guide).get_trace(x).nodes["z"]["value"]
    loc, scale = guide.encode(x)
    log_q = (-0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)
    log_prior = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
    logits = model.decoder(z)
    log_lik = -F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
    assert torch.allclose(log_w, log_lik + log_prior - log_q, atol=1e-4)
