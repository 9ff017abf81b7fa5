"""Gradient SNR diagnostics and the score-function guide wrapper."""

import math

import pyro
import pytest
import torch
from pyro import poutine

from pyro_aevb.diagnostics import gradient_snr, score_function
from tests.conftest import tiny_vae
from tests.test_importance_weighted import LinearGuide

NEST = {"max_plate_nesting": 1}


def _guide_gradients(guide_fn, guide, model, x, repeats, particles=20):
    # Each repeat averages `particles` independent one-sample estimates (vectorized),
    # which divides both estimators' variances by the same factor.
    elbo = pyro.infer.Trace_ELBO(num_particles=particles, vectorize_particles=True, **NEST)
    params = list(guide.parameters())
    out = []
    for r in range(repeats):
        pyro.set_rng_seed(r)
        grads = torch.autograd.grad(elbo.differentiable_loss(model, guide_fn, x), params)
        out.append(torch.cat([g.flatten() for g in grads]))
    return torch.stack(out)


def test_score_function_guide_is_unbiased_and_noisier(linear_gaussian):
    """Trace_ELBO with the wrapped guide uses the score-function estimator: samples carry
    no gradient, the expectation is the reparameterized one, the variance is larger."""
    model, x = linear_gaussian
    x = x[:5]
    guide = LinearGuide(model, shift=0.5, scale_factor=1.5)
    trace = poutine.trace(score_function(guide)).get_trace(x)
    assert not trace.nodes["z"]["fn"].has_rsample
    assert not trace.nodes["z"]["value"].requires_grad

    repeats = 100
    reparam = _guide_gradients(guide, guide, model, x, repeats)
    score = _guide_gradients(score_function(guide), guide, model, x, repeats)
    varying = reparam.std(0) > 0  # the Cholesky factor's upper triangle never moves
    # independent draws: difference of means over its standard error
    se = (reparam.var(0) / repeats + score.var(0) / repeats).sqrt()[varying]
    z = (score.mean(0) - reparam.mean(0))[varying] / se
    assert z.abs().max() < 4.0, z  # 15 elements: P(any |z| > 4) ~ 1e-3
    # The variance ratio's relative standard error is about sqrt(2 / repeats) = 14%.
    ratio = score.var(0).sum() / reparam.var(0).sum()
    assert ratio > 2, ratio  # measured: about 40


def test_gradient_snr_reports_model_guide_and_modules(digits):
    train, _ = digits
    x = torch.bernoulli(train.x[:20], generator=torch.Generator().manual_seed(0))
    model, guide = tiny_vae()
    elbo = pyro.infer.Trace_ELBO(**NEST)
    state = torch.get_rng_state()
    result = gradient_snr(model, guide, {"x": x}, elbo, num_repeats=50, seed=0)
    assert torch.equal(torch.get_rng_state(), state)  # private random stream
    assert set(result.modules) == {"decoder", "encoder"}
    n_model = sum(p.numel() for p in model.parameters())
    assert result.model.num_elements == n_model
    assert result.modules["decoder"] == result.model
    assert result.modules["encoder"] == result.guide
    assert 0 < result.guide.mean and 0 < result.model.median
    assert all(math.isfinite(v) for v in (result.model.mean, result.guide.median))
    # same seed, same estimate
    again = gradient_snr(model, guide, {"x": x}, elbo, num_repeats=50, seed=0)
    assert again.model == result.model and again.guide == result.guide
    # the reparameterized guide gradient has a higher SNR than the score-function one
    sf = gradient_snr(model, score_function(guide), {"x": x}, elbo, num_repeats=50, seed=0)
    assert sf.model.num_elements == n_model
    assert sf.guide.mean < result.guide.mean
    with pytest.raises(ValueError, match="num_repeats must be at least 2"):
        gradient_snr(model, guide, {"x": x}, elbo, num_repeats=1)


def test_gradient_snr_of_a_known_estimator():
    """One parameter, gradient = theta + noise with unit-variance noise: SNR = |theta|."""
    theta = torch.nn.Parameter(torch.tensor([3.0, -0.5]))

    class Quadratic(pyro.infer.Trace_ELBO):
        def differentiable_loss(self, model, guide, *args, **kwargs):
            noise = torch.randn(2)
            return (0.5 * theta**2 + noise * theta).sum()

    def model(x):
        pyro.param("theta", theta)

    result = gradient_snr(model, lambda x: None, {"x": torch.zeros(1)}, Quadratic(), 2000, seed=1)
    snr = result.parameters["theta"]
    # the SNR estimate's standard error is about sqrt((1 + snr^2 / 2) / n)
    se = ((1 + torch.tensor([3.0, 0.5]) ** 2 / 2) / 2000).sqrt()
    assert ((snr - torch.tensor([3.0, 0.5])).abs() < 4 * se).all(), snr


def test_a_decaying_average_baseline_keeps_the_score_function_unbiased_and_quieter(
    linear_gaussian,
):
    """Under TraceGraph_ELBO, Pyro's decaying-average baseline subtracts a running mean of the
    downstream cost: the guide gradient's expectation is unchanged, its variance falls."""
    model, x = linear_gaussian
    x = x[:5]
    guide = LinearGuide(model, shift=0.5, scale_factor=1.5)
    elbo = pyro.infer.TraceGraph_ELBO(num_particles=20, vectorize_particles=True, **NEST)
    params = list(guide.parameters())
    baseline = {"use_decaying_avg_baseline": True, "baseline_beta": 0.9}

    def gradients(guide_fn, repeats=60, warmup=10):
        out = []
        for r in range(warmup + repeats):  # the baseline's running mean settles first
            pyro.set_rng_seed(r)
            for p in params:
                p.grad = None
            elbo.loss_and_grads(model, guide_fn, x)
            if r >= warmup:
                out.append(torch.cat([p.grad.flatten() for p in params]))
        return torch.stack(out)

    plain = gradients(score_function(guide))
    with_baseline = gradients(score_function(guide, baseline))
    varying = plain.std(0) > 0
    se = (plain.var(0) / len(plain) + with_baseline.var(0) / len(with_baseline)).sqrt()[varying]
    z = (plain.mean(0) - with_baseline.mean(0))[varying] / se
    assert z.abs().max() < 4.0, z
    ratio = plain.var(0).sum() / with_baseline.var(0).sum()
    assert ratio > 1.5, ratio


def test_gradient_snr_runs_objectives_without_a_differentiable_loss(linear_gaussian):
    model, x = linear_gaussian
    guide = LinearGuide(model, shift=0.5, scale_factor=1.5)
    baseline = {"use_decaying_avg_baseline": True}
    elbo = pyro.infer.TraceGraph_ELBO(**NEST)
    snr = gradient_snr(model, score_function(guide, baseline), {"x": x[:5]}, elbo, num_repeats=5)
    assert snr.guide.num_elements > 0 and math.isfinite(snr.guide.mean)


def test_score_function_guide_finds_its_module_behind_stale_param_store_entries(digits):
    """A second encoder registered under the same Pyro name leaves the first one's tensors in
    the param store; the wrapped guide's gradients still reach its own parameters."""
    train, _ = digits
    x = torch.bernoulli(train.x[:20], generator=torch.Generator().manual_seed(0))
    elbo = pyro.infer.Trace_ELBO(**NEST)
    stale_model, stale_guide = tiny_vae(seed=1)
    gradient_snr(stale_model, stale_guide, {"x": x}, elbo, num_repeats=2)  # fills the store
    model, guide = tiny_vae(seed=2)
    snr = gradient_snr(model, score_function(guide), {"x": x}, elbo, num_repeats=4)
    assert snr.guide.num_elements > 0 and math.isfinite(snr.guide.median)
