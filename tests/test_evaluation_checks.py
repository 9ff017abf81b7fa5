"""``evaluate`` at the API: bad arguments and data refused before any work, and estimates
that mathematics rules out refused instead of reported."""

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

from pyro_aevb import data_plate, evaluate, fit
from pyro_aevb.evaluation import Evaluation, ImplausibleEstimateError, ImportanceEstimate
from tests.conftest import GaussianGuide, tiny_vae


def _binary(n=40, d=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((n, d), 0.3), generator=g)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
        ({"batch_size": 2.5}, "batch_size must be a positive integer, got 2.5"),
        ({"num_particles": 0}, "num_particles must be a positive integer"),
        ({"num_particles": True}, "num_particles must be a positive integer"),
        ({"elbo_particles": -1}, "elbo_particles"),
        ({"seed": "abc"}, "seed must be an integer"),
        ({"device": "tpu"}, "unknown device 'tpu'"),
    ],
)
def test_bad_arguments_are_refused(kwargs, message):
    model, guide = tiny_vae()
    with pytest.raises(ValueError, match=message):
        evaluate(model, guide, {"x": _binary()}, **kwargs)


def test_an_evaluation_that_cannot_fit_in_memory_says_how_much_it_needs():
    model, guide = tiny_vae()
    with pytest.raises(MemoryError, match=r"needs about [\d.]+ GiB.*fewer particles"):
        evaluate(model, guide, {"x": _binary()}, num_particles=10**10)


def test_numpy_and_float64_test_data_give_the_float32_tensor_results():
    model, guide = tiny_vae()
    x = _binary()
    reference = evaluate(model, guide, {"x": x}, num_particles=5).metrics()
    for data in ({"x": x.numpy()}, {"x": x.double()}, {"x": x.double().numpy()}):
        assert evaluate(model, guide, data, num_particles=5).metrics() == reference


@pytest.mark.parametrize(
    "data, message",
    [
        ({"x": torch.zeros(0, 64)}, r"N > 0"),
        ({"x": [[0.0] * 64]}, "must be a torch.Tensor or a NumPy array, got list"),
        ({"y": torch.zeros(3, dtype=torch.long)}, "need an 'x' field"),
        ({"x": torch.zeros(4, 64), "y": torch.zeros(3, dtype=torch.long)}, "has 3 rows"),
        ({"x": torch.zeros(4, 64), "y": torch.zeros(4)}, "labels 'y' must be integers"),
    ],
)
def test_bad_test_data_are_named(data, message):
    model, guide = tiny_vae()
    with pytest.raises(ValueError, match=message):
        evaluate(model, guide, data, num_particles=2)


def test_test_labels_outside_the_models_classes(digits):
    from pyro_aevb.pairs import get_pair

    train, test = digits
    model, guide = get_pair("cvae").build(
        train, z_dim=2, hidden=(8,), likelihood="bernoulli", dropout=0.0, factorization="full"
    )
    y = test.y[:20].clone()
    y[13] = 12
    with pytest.raises(ValueError, match=r"0\.\.9 .*1 data point.*index 13 \(label 12\)"):
        evaluate(model, guide, {"x": test.x[:20], "y": y}, transform="dynamic", num_particles=2)


def test_threshold_on_raw_pixel_values_is_refused(tmp_path):
    x = torch.randint(0, 256, (50, 64)).float()  # 0..255, not scaled to [0, 1]
    model, guide = tiny_vae()
    with pytest.raises(ValueError, match=r"\[0, 1\].*\[0, 255\].*divide by 255"):
        fit(model, guide, {"x": x}, transform="threshold", epochs=1, run_dir=tmp_path,
            progress=False)  # fmt: skip
    assert not (tmp_path / "checkpoint.pt").exists()
    with pytest.raises(ValueError, match="divide by 255"):
        evaluate(model, guide, {"x": x}, transform="threshold", num_particles=2)


class _GlobalScale(nn.Module):
    """A model with a global latent scale s outside the data plate."""

    def forward(self, x):
        s = pyro.sample("s", dist.LogNormal(0.0, 1.0))
        with data_plate(x):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1, keepdim=True), s).to_event(1), obs=x)


class _GlobalScaleGuide(nn.Module):
    def forward(self, x):
        pyro.sample("s", dist.LogNormal(0.0, 1.0))
        with data_plate(x):
            pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 2), 1.0).to_event(1))


def test_a_global_latent_site_is_refused_before_any_work():
    with pytest.raises(ValueError, match=r"\['s'\] are global"):
        evaluate(_GlobalScale(), _GlobalScaleGuide(), {"x": torch.randn(10, 1)}, num_particles=2)


class _ForgetfulVAE(nn.Module):
    """A Bernoulli decoder whose prior term is scaled away, a user's bug: the weights
    then lack log p(z), and with a wide guide log w = log p(x|z) - log q(z|x) > 0."""

    def __init__(self):
        super().__init__()
        self.decoder = nn.Linear(8, 64)

    def forward(self, x):
        pyro.module("decoder", self.decoder)
        with data_plate(x):
            with poutine.mask(mask=False):
                z = pyro.sample("z", dist.Normal(x.new_zeros(8), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z) * 0).to_event(1), obs=x)


class _WideGuide(nn.Module):
    def forward(self, x):
        with data_plate(x):
            pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], 8), 1e4).to_event(1))


def test_a_bernoulli_log_likelihood_above_zero_is_an_error():
    """p(x) <= 1 for a discrete likelihood, so log p(x) <= 0: here the estimate is about
    64 log(1/2) + 8 (log 1e4 + 1.42) = +40 nats."""
    with pytest.raises(ImplausibleEstimateError, match="above 0, the most log p") as info:
        evaluate(_ForgetfulVAE(), _WideGuide(), {"x": _binary()}, num_particles=10)
    evaluation = info.value.evaluation
    assert float(evaluation.importance.log_likelihood.mean()) > 30
    unchecked = evaluate(_ForgetfulVAE(), _WideGuide(), {"x": _binary()}, num_particles=10,
                         check=False)  # fmt: skip
    assert unchecked.metrics()["problems"]


def test_no_false_alarm_for_the_exact_posterior_or_a_poor_guide(linear_gaussian):
    """The exact posterior gives log p(x) with zero variance (the check's float32
    tolerance must admit it); a poorer guide stays below the evidence."""
    model, x = linear_gaussian
    for guide in (GaussianGuide(model), GaussianGuide(model, shift=0.5, scale_factor=1.5)):
        metrics = evaluate(model, guide, {"x": x}, num_particles=50).metrics()
        assert "problems" not in metrics
    trained = tiny_vae()
    assert "problems" not in evaluate(*trained, {"x": _binary()}, num_particles=20).metrics()


def test_the_check_uses_the_standard_error():
    """An estimate above the evidence by less than a few standard errors is noise; by
    many it is refused, naming how many."""
    g = torch.Generator().manual_seed(0)
    evidence = torch.full((400,), -50.0)
    noise = torch.randn(400, generator=g, dtype=torch.float64)

    def evaluation(shift):
        ll = (evidence + noise + shift).double()
        estimate = ImportanceEstimate(ll, ll - 1.0, torch.ones(400), None, 10)
        return Evaluation(ll - 1.0, estimate, evidence)

    assert evaluation(0.1).problems() == []  # 2 s.e. above: chance
    problems = evaluation(1.0).problems()  # 20 s.e. above
    assert len(problems) == 1 and "standard errors" in problems[0]
    nan = evaluation(0.0)
    nan.importance.log_likelihood[3] = float("nan")
    assert "not finite for 1 of 400" in nan.problems()[0]


def test_numpy_training_data_for_evaluate_after_fit_matches(digits):
    """A fitted pair evaluated on NumPy data reads the same numbers as on tensors."""
    train, test = digits
    model, guide = tiny_vae()
    fit(model, guide, train, epochs=1, transform="dynamic", progress=False)
    a = evaluate(model, guide, {"x": test.x[:30]}, transform="fixed", num_particles=4)
    b = evaluate(model, guide, {"x": np.asarray(test.x[:30])}, transform="fixed", num_particles=4)
    assert a.metrics() == b.metrics()


@pytest.fixture
def contract_checks(monkeypatch):
    """The batch sizes of every contract check (check_pair, wherever called) from now on."""
    import pyro_aevb.contract.check as check_module

    seen, real = [], check_module.trace_pair

    def spy(model, guide, batch):
        seen.append(next(iter(batch.values())).shape[0])
        return real(model, guide, batch)

    monkeypatch.setattr(check_module, "trace_pair", spy)
    return seen


def test_fit_checks_the_pair_once_and_evaluate_takes_its_summary(contract_checks):
    """Issue 19: the per-epoch test ELBO and evaluate(summary=) use the check fit made,
    instead of checking the pair again on the test set every epoch (before: 1 + 3 checks
    in fit, and 3 in one evaluate)."""
    model, guide = tiny_vae()
    train, test = {"x": _binary(60)}, {"x": _binary(20, seed=1)}
    result = fit(model, guide, train, test, epochs=3, batch_size=20, progress=False)
    assert len(result.history) == 3 and all("test_elbo" in row for row in result.history)
    assert contract_checks == [20]  # the first training batch, once
    given = evaluate(model, guide, test, num_particles=5, summary=result.summary)
    assert contract_checks == [20]
    checked = evaluate(model, guide, test, num_particles=5)
    assert contract_checks == [20, 20]  # evaluate on its own checks once
    # the summary changes no number: the estimates draw the same particles either way
    assert given.metrics() == checked.metrics()
