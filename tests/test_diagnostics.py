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


# -- PSIS k-hat without ArviZ (issue 21 #11) ------------------------------------------------


def _log_weight_rows(seed=0):
    """Rows of log-weights of several tails and sizes: normal log-weights of growing spread
    (light to heavy tails) and log |Student-t| weights, for S = 100, 1000 and 4000."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for s in (100, 1000, 4000):
        rows = [sd * torch.randn(s, generator=g, dtype=torch.float64) for sd in (0.3, 1, 2, 4)]
        t = torch.distributions.StudentT(2.0).sample((3, s)).double().abs().log()
        out.append(torch.cat([torch.stack(rows), t]).numpy())
    return out


def test_pareto_k_hat_equals_arviz_psislw_on_the_same_weights():
    arviz = pytest.importorskip("arviz")
    import warnings

    import numpy as np

    from pyro_aevb.diagnostics import pareto_k_hat

    for log_w in _log_weight_rows():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ArviZ warns on large k-hat
            _, reference = arviz.psislw(log_w, reff=1.0)
        ours = pareto_k_hat(log_w)
        assert ours.shape == (log_w.shape[0],)
        # the same estimator (Zhang & Stephens with Vehtari's prior): equal to round-off
        np.testing.assert_allclose(ours, np.asarray(reference), rtol=0, atol=1e-9)


@pytest.mark.parametrize("xi", [0.3, 0.9])
def test_pareto_k_hat_recovers_the_tail_index_of_pareto_weights(xi):
    """w = U^(-xi) is Pareto with tail index xi, and its exceedances over any threshold
    are exactly GPD(xi): the mean k-hat over 40 rows of S = 4000 weights lies within 4
    standard errors (over the rows) of xi shrunk by the fit's prior, (M xi + 5) / (M + 10)
    with M = 3 sqrt(S) = 190 tail draws."""
    from pyro_aevb.diagnostics import pareto_k_hat
    from pyro_aevb.psis import tail_size

    g = torch.Generator().manual_seed(1)
    u = torch.rand(40, 4000, generator=g, dtype=torch.float64)
    k = torch.as_tensor(pareto_k_hat(-xi * u.log()))
    m = tail_size(4000)
    assert m == 190
    expected = (m * xi + 5) / (m + 10)
    se = float(k.std() / math.sqrt(k.numel()))
    assert abs(float(k.mean()) - expected) < 4 * se, (float(k.mean()), expected, se)
    assert 0.5 * (1 + xi) / math.sqrt(m) < float(k.std()) < 2 * (1 + xi) / math.sqrt(m)


def test_pareto_k_hat_edge_cases_and_bad_input():
    import numpy as np

    from pyro_aevb.diagnostics import pareto_k_hat

    few = np.log(np.arange(1.0, 11.0))[None]  # S = 10: 2 tail draws, too few to fit
    assert np.isinf(pareto_k_hat(few)).all()
    dead = np.full((1, 200), -np.inf)  # every weight zero
    assert np.isnan(pareto_k_hat(dead)).all()
    with pytest.raises(ValueError, match="rows, samples"):
        pareto_k_hat(np.zeros(200))


def test_arviz_is_no_install_requirement():
    import configparser
    from pathlib import Path

    config = configparser.ConfigParser()
    config.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    assert "arviz" not in config["options"]["install_requires"]


# -- what to do when k-hat flags an evaluation (issue 21 #9) ---------------------------------


def _flagged_metrics(**changes):
    metrics = {
        "pareto_k_mean": 1.30,
        "pareto_k_fraction_above_0.7": 0.96,
        "ess_mean": 12.5,
        "log_likelihood_particles": 1000,
    }
    return {**metrics, **changes}


def test_particles_for_ess_and_for_khat():
    from pyro_aevb.psis import particles_for_ess, particles_for_khat

    assert particles_for_ess(1000, 12.5) == 8000  # 1000 * 100 / 12.5
    assert particles_for_ess(1000, 3.0) == 33334  # rounded up
    assert particles_for_ess(100, 250.0) == 100  # never fewer than used
    with pytest.raises(ValueError, match="ess_mean"):
        particles_for_ess(100, 0.0)
    # k < 1 - 1/log10(S)  <=>  S > 10^(1/(1-k))
    assert particles_for_khat(0.7) == pytest.approx(10 ** (10 / 3))
    assert particles_for_khat(0.8) == pytest.approx(1e5)
    assert math.isinf(particles_for_khat(1.0)) and math.isinf(particles_for_khat(1.3))


def test_the_khat_advice_names_the_commands_and_they_parse():
    """The newcomer's case (k-hat mean 1.30, 96% above 0.7, ESS 12.5 of 1000): more
    particles cannot help, and the line says so, with the AIS command; a milder case
    (mean k-hat 0.72, ESS 40) gets the number of particles and its command. The CLI
    accepts every command the advice names."""
    import shlex

    from pyro_aevb.cli.messages import _summary
    from pyro_aevb.cli.parser import build_parser
    from pyro_aevb.psis import khat_advice

    base = dict(
        test_elbo=-100.0,
        test_elbo_se=1.0,
        test_log_likelihood=-95.0,
        test_log_likelihood_se=1.0,
        num_test_points=10,
    )

    def warning_line(metrics):
        text = _summary({**base, **metrics}, None, "runs/my run")
        return next(line for line in text.splitlines() if line.startswith("WARNING: k-hat"))

    def parse(command):
        assert command.startswith("pyro-aevb ")
        args = build_parser().parse_args(shlex.split(command)[1:])
        assert args.run_dir == "runs/my run"
        return args

    line = warning_line(_flagged_metrics())
    assert "more particles will not make it reliable" in line and "K = 8000 if it grew" in line
    assert "--particles" not in line
    ais = "pyro-aevb evaluate 'runs/my run' --method ais"
    assert ais in line and parse(ais).method == "ais"
    line = warning_line(_flagged_metrics(pareto_k_mean=0.72, ess_mean=40.0))
    assert "about K = 3728" in line  # 10^(1/0.28) draws; the ESS alone asks for 2500
    more = "pyro-aevb evaluate 'runs/my run' --particles 3728"
    assert more in line and parse(more).particles == 3728 and ais in line
    calm = {**base, **_flagged_metrics(), "pareto_k_fraction_above_0.7": 0.3}
    assert "WARNING" not in _summary(calm, None, "runs/x")
    python = khat_advice(_flagged_metrics(pareto_k_mean=0.72, ess_mean=40.0))
    assert "evaluate(..., num_particles=3728)" in python and 'method="ais"' in python


def test_evaluate_warns_with_the_advice_when_khat_flags_most_points(linear_gaussian):
    """A guide far narrower than the posterior and off its mean: k-hat above 1 for most
    points, and evaluate says what to do. That more particles will not do is checked: at
    the K the ESS alone would ask for (about 27 times more), the ESS grows less than 4
    times. A guide wider than the posterior gets no warning."""
    import warnings

    from pyro_aevb import evaluate
    from pyro_aevb.psis import UnreliableEstimateWarning, particles_for_ess
    from tests.conftest import GaussianGuide

    model, x = linear_gaussian
    poor = GaussianGuide(model, shift=1.5, scale_factor=0.3)
    with pytest.warns(UnreliableEstimateWarning, match="will not make it reliable") as caught:
        metrics = evaluate(model, poor, {"x": x}, num_particles=200).metrics()
    assert metrics["pareto_k_fraction_above_0.7"] > 0.5 and metrics["pareto_k_mean"] > 1
    assert f"mean ESS {metrics['ess_mean']:.1f} of K = 200" in str(caught[0].message)
    by_ess = particles_for_ess(200, metrics["ess_mean"])
    assert by_ess > 20 * 200
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnreliableEstimateWarning)
        more = evaluate(model, poor, {"x": x}, num_particles=by_ess).metrics()
    assert more["ess_mean"] < 4 * metrics["ess_mean"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnreliableEstimateWarning)
        wide = GaussianGuide(model, scale_factor=1.5)  # lighter-tailed weights than p
        metrics = evaluate(model, wide, {"x": x}, num_particles=200).metrics()
    assert metrics["pareto_k_fraction_above_0.7"] <= 0.5
