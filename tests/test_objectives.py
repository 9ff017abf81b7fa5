"""Every registered objective: the library's step equals Pyro's SVI step, and trains.

Parametrized over :func:`available_objectives`, so a newly registered objective is
covered without editing this file (add its required options to ``REQUIRED``).
"""

import math

import pyro
import pyro.optim
import pytest
import torch

from pyro_aevb import (
    TrainingStep,
    available_objectives,
    check_pair,
    full_data_size,
    make_objective,
    register_objective,
)
from pyro_aevb.training import bind_pair
from tests.conftest import tiny_vae

#: options an objective cannot do without
REQUIRED = {
    "renyi": {"alpha": 0.5},
    "miwae": {"num_estimates": 2},
    "ciwae": {"beta": 0.5},
    "piwae": {"num_estimates": 2},
}
N = 200


def _batch(digits, n=64):
    train, _ = digits
    return {"x": torch.bernoulli(train.x[:n], generator=torch.Generator().manual_seed(0))}


def _ours(name, particles, batch, optimizer, lr, steps):
    model, guide = tiny_vae()
    objective = make_objective(name, particles, **REQUIRED.get(name, {}))
    with pyro.get_param_store().scope():
        with full_data_size(N):
            summary = check_pair(model, guide, batch, allow_model_enumeration=name == "enum")
        step = TrainingStep(model, guide, objective, summary, batch, N, optimizer=optimizer, lr=lr)
        losses = []
        for t in range(steps):
            pyro.set_rng_seed(t)
            losses.append(step(batch))
    return losses, model, guide, objective.max_plate_nesting


def _pyro_svi(name, particles, batch, optim, steps, max_plate_nesting):
    model, guide = tiny_vae()
    objective = make_objective(name, particles, **REQUIRED.get(name, {}))
    objective.max_plate_nesting = max_plate_nesting  # as ours, so neither guesses (and draws)
    pair = bind_pair(model, guide, batch, N)
    with pyro.get_param_store().scope():
        svi = pyro.infer.SVI(pair.model, pair.guide, optim, objective)
        losses = []
        for t in range(steps):
            pyro.set_rng_seed(t)
            with full_data_size(N):
                losses.append(svi.step(**batch))
    return losses, model, guide


def _assert_close_states(a, b, tol):
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.allclose(x, y, rtol=tol, atol=tol), name


@pytest.mark.parametrize("name", available_objectives())
def test_step_equals_pyro_svi_step_for_the_same_noise(digits, name):
    """SGD makes the update proportional to the gradient, so equal parameters after
    three steps mean equal gradients (to float round-off) at every step."""
    batch = _batch(digits)
    particles = 3
    ours, m1, g1, nesting = _ours(name, particles, batch, "sgd", 1e-2, 3)
    theirs, m2, g2 = _pyro_svi(name, particles, batch, pyro.optim.SGD({"lr": 1e-2}), 3, nesting)
    # Pyro's SVI reports the full-data loss scaled by 1/N, as ours: nats per data point
    assert ours == pytest.approx(theirs, rel=1e-6, abs=1e-6)
    _assert_close_states(m1, m2, 1e-6)
    _assert_close_states(g1, g2, 1e-6)


def test_fused_adam_step_equals_pyro_adam(digits):
    batch = _batch(digits)
    ours, m1, g1, nesting = _ours("elbo", 1, batch, "adam", 1e-2, 5)
    theirs, m2, g2 = _pyro_svi("elbo", 1, batch, pyro.optim.Adam({"lr": 1e-2}), 5, nesting)
    assert ours == pytest.approx(theirs, rel=1e-5)
    _assert_close_states(m1, m2, 1e-5)
    _assert_close_states(g1, g2, 1e-5)


@pytest.mark.parametrize("name", available_objectives())
def test_objective_trains_a_small_vae(digits, name):
    batch = _batch(digits, 200)
    losses, *_ = _ours(name, 3, batch, "adam", 1e-2, 50)
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 2.0  # nats per data point


def test_bad_objective_settings():
    with pytest.raises(ValueError, match="alpha = 1 is the ELBO"):
        make_objective("renyi", 5, alpha=1.0)
    with pytest.raises(ValueError, match="num_particles must be at least 1"):
        make_objective("elbo", 0)
    with pytest.raises(ValueError, match="already registered"):
        register_objective("elbo")(lambda num_particles=1: None)
