"""KL weight and warm-up: the weighted loss is exactly linear in the weight, recovers the
ELBO at 1, and fit records the weight while reporting the unweighted test ELBO."""

import pyro
import pytest
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_aevb import elbo_per_datapoint, fit
from pyro_aevb.annealing import KLAnnealing, LatentScale
from pyro_aevb.evaluation import prepare_fields
from tests.conftest import tiny_vae

SETTINGS = dict(transform="dynamic", batch_size=60, lr=3e-3, seed=0, progress=False)


def test_warmup_rises_linearly_to_the_final_weight():
    annealing = KLAnnealing(final=0.5, warmup_steps=4)
    assert [annealing.weight(t) for t in range(6)] == [0.125, 0.25, 0.375, 0.5, 0.5, 0.5]
    assert KLAnnealing(2.0).weight(0) == 2.0
    with pytest.raises(ValueError, match="non-negative"):
        KLAnnealing(-1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        KLAnnealing(1.0, warmup_steps=-3)


@pytest.mark.parametrize("elbo_cls", [Trace_ELBO, TraceMeanField_ELBO])
def test_weighted_loss_is_reconstruction_plus_weighted_kl(digits, elbo_cls):
    """On the same noise, loss(beta) = loss(0) + beta * (loss(1) - loss(0)), and loss(1)
    is the unweighted objective: the weight multiplies exactly the KL part."""
    train, _ = digits
    x = torch.bernoulli(train.x[:40], generator=torch.Generator().manual_seed(0))
    model, guide = tiny_vae()
    model, guide = model.double(), guide.double()
    x = x.double()

    def loss(weight):
        scale = LatentScale(weight)
        pyro.set_rng_seed(1)
        return elbo_cls().loss(scale(model), scale(guide), x)

    pyro.set_rng_seed(1)
    plain = elbo_cls().loss(model, guide, x)
    l0, l1, l03 = loss(0.0), loss(1.0), loss(0.3)
    assert l1 == pytest.approx(plain, rel=1e-12)
    assert l03 == pytest.approx(l0 + 0.3 * (l1 - l0), rel=1e-10)
    assert l1 - l0 > 0  # the KL (or its one-sample estimate) is positive here


def test_fit_records_the_weight_and_reports_the_unweighted_test_elbo(digits):
    train, test = digits
    train, test = train.subset(range(300)), test.subset(range(100))  # 5 steps per epoch
    model, guide = tiny_vae()
    result = fit(
        model, guide, train, test, epochs=4, objective="meanfield",
        kl_annealing=KLAnnealing(1.0, warmup_steps=10), **SETTINGS,
    )
    assert [row["kl_weight"] for row in result.history] == [0.5, 1.0, 1.0, 1.0]
    fields = prepare_fields(test, "dynamic")
    unweighted = elbo_per_datapoint(model, guide, fields, seed=0).mean()
    assert result.history[-1]["test_elbo"] == pytest.approx(float(unweighted), abs=1e-9)


def test_kl_weight_is_refused_for_importance_weighted_objectives(digits):
    train, _ = digits
    with pytest.raises(ValueError, match="KL weight applies to the objectives"):
        fit(*tiny_vae(), train, epochs=1, objective="iwae", num_particles=4,
            kl_annealing=KLAnnealing(0.5), **SETTINGS)
