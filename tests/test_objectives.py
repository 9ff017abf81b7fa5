"""Every registered objective trains a small VAE with finite, decreasing loss."""

import math

import pyro
import pytest
import torch

from pyro_aevb import available_objectives, full_data_size, make_objective, register_objective
from pyro_aevb.steps import svi_step
from pyro_aevb.training import _bind
from tests.conftest import tiny_vae

OPTIONS = {"elbo": {}, "meanfield": {}, "enum": {}, "renyi": {"alpha": 0.0}}


def test_registry_lists_the_builtin_objectives():
    assert set(OPTIONS) <= set(available_objectives())


@pytest.mark.parametrize("name", sorted(OPTIONS))
@pytest.mark.parametrize("particles", [1, 4])
def test_objective_trains_a_small_vae(digits, name, particles):
    if name == "renyi" and particles == 1:
        pytest.skip("renyi needs at least two particles")
    train, _ = digits
    x = torch.bernoulli(train.x[:200], generator=torch.Generator().manual_seed(0))
    model, guide = tiny_vae()
    elbo = make_objective(name, particles, **OPTIONS[name])
    optim = pyro.optim.Adam({"lr": 1e-2})
    pyro.set_rng_seed(0)
    losses = []
    with pyro.get_param_store().scope(), full_data_size(200):
        for step in range(60):
            losses.append(
                svi_step(elbo, optim, _bind(model, ["x"]), _bind(guide, ["x"]), {"x": x}, 1, step)
                / 200
            )
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10 - 2.0  # nats per data point


def test_bad_objective_settings():
    with pytest.raises(ValueError, match="alpha = 1 is the ELBO"):
        make_objective("renyi", 5, alpha=1.0)
    with pytest.raises(ValueError, match="num_particles must be at least 1"):
        make_objective("elbo", 0)
    with pytest.raises(ValueError, match="already registered"):
        register_objective("elbo")(lambda num_particles=1: None)
