"""Factor analysis against its closed forms: evidence, posterior, the EM view of AEVB."""

import copy
import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro_aevb.guides import DiagonalCovarianceGuide, FullCovarianceGuide
from pyro_aevb.models import FactorAnalysis
from torch.distributions import kl_divergence

from pyro_aevb import fit, importance_log_likelihood
from pyro_aevb.data import synthetic_factor_analysis
from pyro_aevb.schedules import AlternatingSchedule

# 25 steps per epoch; the tutorial paper's Adam 1e-2
SETTINGS = dict(batch_size=40, lr=1e-2, progress=False, seed=0)


@pytest.fixture(scope="module")
def fa_data():
    train, test, truth = synthetic_factor_analysis(1000, 1000, latent_dim=2, obs_dim=3, seed=0)
    return train, test, truth


def _pair(guide_cls=FullCovarianceGuide, seed=0):
    torch.manual_seed(seed)
    return FactorAnalysis(3, 2), guide_cls(3, 2)


@pytest.fixture(scope="module")
def joint_aevb(fa_data):
    """The parameters of ``_pair()`` after 20 epochs of joint AEVB: the starting point of
    two tests, fitted once (the fit is deterministic, so each test gets exactly the pair it
    fitted itself before)."""
    train, _, _ = fa_data
    model, guide = _pair()
    fit(model, guide, train, epochs=20, **SETTINGS)
    return copy.deepcopy(model.state_dict()), copy.deepcopy(guide.state_dict())


def _joint_aevb_pair(states):
    model, guide = _pair()
    model.load_state_dict(states[0])
    guide.load_state_dict(states[1])
    return model, guide


def _exact_gap(model, guide, x):
    """Mean KL(q(z|x) || p(z|x)) = log p(x) - ELBO(x), in closed form, nats per point."""
    with torch.no_grad():
        return float(kl_divergence(guide.distribution(x), model.posterior(x)).mean())


@pytest.mark.parametrize("bias", [False, True])
def test_evidence_and_posterior_satisfy_bayes_rule(bias):
    """log p(x, z) - log p(z | x) = log p(x) for every z: checks the closed-form
    evidence and posterior against the joint density of the Pyro model itself."""
    torch.manual_seed(3)
    model = FactorAnalysis(5, 2, bias=bias).double()
    with torch.no_grad():
        model.raw_noise_scale.normal_()
        if bias:
            model.b.normal_()
    x = torch.randn(20, 5, dtype=torch.float64) * 2
    z = torch.randn(20, 2, dtype=torch.float64) * 3  # anywhere, not only near the posterior
    trace = poutine.trace(poutine.condition(model, data={"z": z})).get_trace(x)
    joint = sum(
        trace.nodes[name]["fn"].log_prob(trace.nodes[name]["value"]) for name in ("z", "x")
    )
    identity = joint - model.posterior(x).log_prob(z)
    torch.testing.assert_close(identity, model.log_evidence(x), atol=1e-9, rtol=1e-12)


def test_exact_evidence_matches_importance_sampling_on_a_trained_model(fa_data, joint_aevb):
    _, test, _ = fa_data
    model, guide = _joint_aevb_pair(joint_aevb)
    exact = model.log_evidence(test.x)
    est = importance_log_likelihood(model, guide, {"x": test.x}, num_particles=5000, seed=1)
    exact = exact.detach()
    assert abs(float(est.log_likelihood.mean() - exact.mean())) < 0.02
    # and per point: the K = 5000 estimate is a lower bound that is nearly tight here
    assert float((est.log_likelihood - exact).abs().max()) < 0.05


def test_e_step_closes_the_gap_and_leaves_the_evidence_unchanged(fa_data, joint_aevb):
    train, test, truth = fa_data
    model, guide = _joint_aevb_pair(joint_aevb)  # joint AEVB first
    model_before = {k: v.clone() for k, v in model.state_dict().items()}
    gap_before = _exact_gap(model, guide, test.x)

    # 1000 guide-only steps (40 epochs of 25 steps): an approximate E-step
    e_step = AlternatingSchedule(guide_steps=1000, model_steps=1000, rounds=1)
    result = fit(model, guide, train, test, epochs=40, schedule=e_step, eval_every=100, **SETTINGS)
    assert [row["phase"] for row in result.history] == ["guide"] * 10
    for k, v in model.state_dict().items():
        assert torch.equal(v, model_before[k]), k
    evidence = {row["test_log_evidence"] for row in result.history}
    assert len(evidence) == 1  # exactly flat
    assert evidence.pop() == pytest.approx(float(model.log_evidence(test.x).mean()))

    gap = _exact_gap(model, guide, test.x)
    assert gap_before > 0.02 and gap < 0.01
    # The same gap seen through Monte Carlo: at (nearly) the exact posterior the log-weights
    # are (nearly) constant, so 100 particles per point pin the ELBO down.
    est = importance_log_likelihood(model, guide, {"x": test.x}, num_particles=100, seed=2)
    elbo, se = est.elbo.mean(), est.elbo.std() / math.sqrt(est.elbo.numel())
    mc_gap = float(model.log_evidence(test.x).mean() - elbo)
    assert mc_gap < 0.01 + 3 * float(se)


def test_m_step_after_an_e_step_raises_the_evidence_and_leaves_the_guide_unchanged(fa_data):
    """EM's guarantee: after an exact E-step, log p_new(x) >= ELBO_new >= ELBO_old =
    log p_old(x); with an approximate one, up to the remaining gap."""
    train, test, _ = fa_data
    model, guide = _pair()
    e_step = AlternatingSchedule(guide_steps=1000, model_steps=1000, rounds=1)
    fit(model, guide, train, epochs=40, schedule=e_step, **SETTINGS)
    evidence_before = float(model.log_evidence(test.x).mean())
    gap_before = _exact_gap(model, guide, test.x)
    guide_before = {k: v.clone() for k, v in guide.state_dict().items()}

    m_step = AlternatingSchedule(guide_steps=1, model_steps=500, rounds=1, first="model")
    result = fit(model, guide, train, test, epochs=20, schedule=m_step, eval_every=100, **SETTINGS)
    assert [row["phase"] for row in result.history] == ["model"] * 5
    for k, v in guide.state_dict().items():
        assert torch.equal(v, guide_before[k]), k
    evidence_after = float(model.log_evidence(test.x).mean())
    elbo_before = evidence_before - gap_before
    elbo_after = evidence_after - _exact_gap(model, guide, test.x)
    assert elbo_after > elbo_before + 0.1  # the M-step raised the bound ...
    assert evidence_after > evidence_before + 0.1  # ... and the evidence with it


def test_diagonal_guide_keeps_a_gap_when_the_posterior_is_correlated(fa_data):
    """The best diagonal Gaussian q has the posterior's mean and precisions Lambda_ii, and
    KL(q || p) = (sum_i log Lambda_ii - log det Lambda) / 2 > 0 unless Lambda is diagonal."""
    train, test, _ = fa_data
    e_step = AlternatingSchedule(guide_steps=1000, model_steps=1, rounds=1)
    gaps = {}
    for guide_cls in (DiagonalCovarianceGuide, FullCovarianceGuide):
        # A fixed model whose posterior is correlated; only the guide learns.
        # (Trained jointly, a model paired with a diagonal guide rotates W until its
        # posterior is nearly uncorrelated: W is identifiable only up to rotation.)
        model, guide = _pair(guide_cls)
        with torch.no_grad():
            # nearly parallel factors: a strongly correlated posterior
            model.W.copy_(torch.tensor([[2.0, 1.8], [1.0, 1.2], [0.5, 0.4]]))
            model.raw_noise_scale.fill_(0.0)
        fit(model, guide, train, epochs=40, schedule=e_step, **SETTINGS)  # 1000 E steps
        gaps[guide_cls] = _exact_gap(model, guide, test.x)

    with torch.no_grad():
        posterior_cov = model.posterior(test.x[:1]).covariance_matrix[0]
        precision = torch.linalg.inv(posterior_cov)
    correlation = posterior_cov[0, 1] / (posterior_cov[0, 0] * posterior_cov[1, 1]).sqrt()
    assert abs(float(correlation)) > 0.5
    min_gap = 0.5 * float(precision.diagonal().log().sum() - torch.logdet(precision))
    assert min_gap > 0.1
    assert gaps[DiagonalCovarianceGuide] >= min_gap - 1e-5  # no diagonal q does better
    # the full family is not held back: it ends far below the diagonal family's floor
    assert gaps[FullCovarianceGuide] < 0.1 * min_gap

    # The bound is attained: the posterior's mean map with variances 1 / Lambda_ii.
    best = DiagonalCovarianceGuide(3, 2)
    with torch.no_grad():
        noise_precision = model.noise_scale**-2
        best.V.copy_(posterior_cov @ model.W.T * noise_precision)
        scale = precision.diagonal().rsqrt() - 1e-5
        best.raw_diag.copy_(scale.expm1().log())
    assert _exact_gap(model, best, test.x) == pytest.approx(min_gap, abs=1e-4)


def test_joint_aevb_approaches_the_true_evidence(fa_data):
    """Experiment 1 of the tutorial paper, shortened: the exact test evidence climbs to
    within 0.05 nats of the true model's; the sampled ELBO stays below the evidence."""
    train, test, truth = fa_data
    model, guide = _pair()
    result = fit(model, guide, train, test, objective="meanfield", epochs=80, **SETTINGS)
    true_evidence = float(truth.log_evidence(test.x).mean())
    final = result.history[-1]["test_log_evidence"]
    assert true_evidence - 0.05 < final < true_evidence + 0.05
    assert result.history[0]["test_log_evidence"] < true_evidence - 0.5
    # the evidence can exceed the truth's on a finite test set, but the ELBO is below
    # the fitted model's own evidence: single-particle noise is ~ 0.01 nats per point here
    for row in result.history:
        assert row["test_elbo"] < row["test_log_evidence"] + 0.02


def test_schedule_needs_parameters_on_both_sides(fa_data):
    train, _, _ = fa_data

    class FixedGuide(FullCovarianceGuide):
        def forward(self, x):  # no pyro.module: the guide registers no parameters
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", self.distribution(x).to_event(0))

    model = FactorAnalysis(3, 2)
    with pytest.raises(ValueError, match="needs guide parameters"):
        fit(model, FixedGuide(3, 2), train, epochs=1,
            schedule=AlternatingSchedule(10, 10), **SETTINGS)
