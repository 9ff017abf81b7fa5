"""The conditional VAE: generation, label usage, and each factorization training."""

import math

import pytest
import torch
from pyro_aevb.guides import ConditionalDiagonalNormalGuide
from pyro_aevb.models import FACTORIZATIONS, ConditionalVAE

from pyro_aevb import fit, importance_log_likelihood
from pyro_aevb.evaluation import prepare_fields

SETTINGS = dict(batch_size=50, lr=3e-3, seed=0, progress=False)


def _pair(factorization="full", likelihood="bernoulli", seed=0):
    torch.manual_seed(seed)
    model = ConditionalVAE(64, 10, 4, (64,), likelihood=likelihood, factorization=factorization)
    guide = ConditionalDiagonalNormalGuide(64, 10, 4, (64,))
    return model, guide


@pytest.mark.parametrize("factorization", sorted(FACTORIZATIONS))
@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous_bernoulli"])
def test_conditional_samples_have_the_right_shape_and_support(factorization, likelihood):
    model, _ = _pair(factorization, likelihood)
    y = torch.arange(10).repeat(3)
    draws = model.generate(y, mean=False)
    means = model.generate(y, mean=True)
    assert draws.shape == means.shape == (30, 64)
    if likelihood == "bernoulli":
        assert set(draws.unique().tolist()) <= {0.0, 1.0}
    else:
        assert bool(((draws >= 0) & (draws <= 1)).all())
    assert bool(((means > 0) & (means < 1)).all())


@pytest.mark.parametrize("factorization", sorted(FACTORIZATIONS))
@pytest.mark.parametrize("objective", ["elbo", "meanfield"])
def test_each_factorization_trains(digits, factorization, objective):
    train, test = digits
    model, guide = _pair(factorization)
    result = fit(
        model, guide, train.subset(range(500)), test.subset(range(100)),
        transform="dynamic", objective=objective, epochs=6, **SETTINGS,
    )
    losses = [-row["train_elbo"] for row in result.history]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 3  # nats per data point
    assert result.history[-1]["test_elbo"] > result.history[0]["test_elbo"]


def test_true_labels_beat_shuffled_labels(digits):
    """log p(x | y) with the true labels against a seeded shuffle of them, paired per point;
    the margin is three standard errors of the paired difference."""
    train, test = digits
    model, guide = _pair("full")
    fit(model, guide, train, transform="dynamic", epochs=10, **SETTINGS)
    fields = prepare_fields(test, "dynamic")
    perm = torch.randperm(len(test), generator=torch.Generator().manual_seed(0))
    shuffled = dict(fields, y=fields["y"][perm])
    true = importance_log_likelihood(model, guide, fields, 200, seed=1).log_likelihood
    other = importance_log_likelihood(model, guide, shuffled, 200, seed=1).log_likelihood
    diff = true - other
    assert float(diff.mean()) > 3 * float(diff.std() / math.sqrt(diff.numel()))
    assert float(diff.mean()) > 1.0  # nats per digit: the label carries real information


@pytest.mark.parametrize(
    "labels, message",
    [
        (lambda y: y.float(), "integer class labels"),
        (lambda y: y + 10, "built for 10 classes"),
        (lambda y: y[:, None], "one label per data point"),
    ],
)
def test_bad_labels_are_rejected_before_training(digits, labels, message):
    train, _ = digits
    fields = {"x": train.x[:200], "y": labels(train.y[:200])}
    model, guide = _pair("full")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        fit(model, guide, fields, transform="threshold", epochs=1, **SETTINGS)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])


def test_unknown_factorization_is_rejected():
    with pytest.raises(ValueError, match="unknown factorization 'joint'"):
        ConditionalVAE(64, 10, factorization="joint")
