"""Pyro's own example code through ``fit`` and ``evaluate``, unchanged.

:class:`ExampleVAE` has the structure and the idioms of Pyro's ``examples/vae/vae.py``
(written here in our own words): an ``Encoder`` and a ``Decoder`` with softplus hidden
layers, one ``nn.Module`` whose ``model`` and ``guide`` methods register them with
``pyro.module``, a plain ``pyro.plate("data", x.shape[0])`` (no subsample scale),
sites named ``latent`` and ``obs``, ``x.reshape(-1, 784)`` inside the networks, and a
Bernoulli likelihood with its own validation off. The example trains it with
``SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), Trace_ELBO())``, sums ``svi.step(x)``
over an epoch and divides by the number of training points, and reports the test loss
``sum(svi.evaluate_loss(x)) / N_test``. Here it runs on the bundled 8x8 digits
(binarized) with 64 pixels instead of 784.

The facts checked: the example's own test-loss estimate and :func:`evaluate`'s test
ELBO measure the same per-data-point quantity (the same trained model, two
estimators, within their standard errors); ``fit``'s history reports the training
loss per data point, as the example's epoch loss divided by ``N`` is (the issue's
"9.3 nats where the per-data-point value is 148.5" was ``B / N`` times it); and a pair
trained by ``fit`` reaches the test ELBO of the one trained by the example's loop,
within the spread between two runs of that loop with different seeds.
"""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torch import nn

from pyro_aevb import fit

PIXELS, Z_DIM, HIDDEN = 64, 4, 64
EPOCHS, BATCH = 8, 100


class Encoder(nn.Module):
    def __init__(self, z_dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(PIXELS, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, z_dim)
        self.fc22 = nn.Linear(hidden_dim, z_dim)
        self.softplus = nn.Softplus()

    def forward(self, x):
        x = x.reshape(-1, PIXELS)
        hidden = self.softplus(self.fc1(x))
        return self.fc21(hidden), torch.exp(self.fc22(hidden))


class Decoder(nn.Module):
    def __init__(self, z_dim, hidden_dim):
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden_dim)
        self.fc21 = nn.Linear(hidden_dim, PIXELS)
        self.softplus, self.sigmoid = nn.Softplus(), nn.Sigmoid()

    def forward(self, z):
        return self.sigmoid(self.fc21(self.softplus(self.fc1(z))))


class ExampleVAE(nn.Module):
    def __init__(self, z_dim=Z_DIM, hidden_dim=HIDDEN):
        super().__init__()
        self.encoder = Encoder(z_dim, hidden_dim)
        self.decoder = Decoder(z_dim, hidden_dim)
        self.z_dim = z_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample(
                "obs",
                dist.Bernoulli(loc_img, validate_args=False).to_event(1),
                obs=x.reshape(-1, PIXELS),
            )

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


@pytest.fixture(scope="module")
def binary_digits(digits):
    train, test = digits
    return (train.x > 0.5).float(), (test.x > 0.5).float()


def _example_loop(x_train, x_test, seed):
    """The example's training loop and its test loss, per data point (nats)."""
    pyro.clear_param_store()
    torch.manual_seed(seed)
    vae = ExampleVAE()
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), loss=Trace_ELBO())
    shuffle = torch.Generator().manual_seed(seed)
    for _ in range(EPOCHS):
        epoch_loss = 0.0
        for idx in torch.randperm(len(x_train), generator=shuffle).split(BATCH):
            epoch_loss += svi.step(x_train[idx])
        train_loss = epoch_loss / len(x_train)
    test_loss = [svi.evaluate_loss(x) for x in x_test.split(BATCH)]
    return vae, train_loss, sum(test_loss) / len(x_test)


@pytest.fixture(scope="module")
def example_runs(binary_digits):
    x_train, x_test = binary_digits
    return [_example_loop(x_train, x_test, seed) for seed in (0, 1)]


def _per_point_elbo(vae, x_test, particles, seed):
    """evaluate's per-data-point ELBO estimate (nats), averaged over ``particles``."""
    from pyro_aevb.evaluation import elbo_per_datapoint

    return elbo_per_datapoint(vae.model, vae.guide, {"x": x_test}, particles, seed=seed).double()


def test_the_examples_pair_fits_and_evaluates_as_its_own_svi_loop(binary_digits, example_runs):
    x_train, x_test = binary_digits
    pyro.clear_param_store()
    torch.manual_seed(0)
    vae = ExampleVAE()
    result = fit(
        vae.model,
        vae.guide,
        {"x": x_train},
        {"x": x_test},
        epochs=EPOCHS,
        batch_size=BATCH,
        lr=1e-3,
        seed=0,
        progress=False,
    )
    (reference, ref_train, ref_test_loss), (other, other_train, _) = example_runs

    # 1. One model, two estimators of its per-point test ELBO: the example's one-sample
    #    svi.evaluate_loss, point by point, and evaluate's 10-sample mean; paired over
    #    the test points, their difference is within 4 standard errors of 0.
    pyro.clear_param_store()
    svi = SVI(reference.model, reference.guide, Adam({"lr": 1e-3}), loss=Trace_ELBO())
    pyro.set_rng_seed(7)
    example = -torch.tensor([svi.evaluate_loss(x[None]) for x in x_test], dtype=torch.float64)
    assert float(example.mean()) == pytest.approx(-ref_test_loss, abs=0.5)
    ours = _per_point_elbo(reference, x_test, 10, seed=3)
    d = example - ours
    assert abs(float(d.mean())) < 4 * float(d.std()) / math.sqrt(d.numel())

    # 2. fit's history is per data point, the scale of the example's epoch loss / N (not
    #    B / N times it): the same within the two example seeds' spread and the
    #    minibatch noise of an epoch's average (its steps' spread / sqrt(steps)).
    assert abs(-result.history[-1]["train_elbo"] - ref_train) < 3 * abs(
        ref_train - other_train
    ) + 4 * float(example.std()) / math.sqrt(len(x_train))

    # 3. The fitted pair's test ELBO is the example's: paired over test points, within
    #    4 standard errors of (estimator noise, run-to-run spread of the example's loop).
    fitted = _per_point_elbo(vae, x_test, 10, seed=3)
    run_to_run = float((ours - _per_point_elbo(other, x_test, 10, seed=3)).mean())
    gap = fitted - ours
    se = math.hypot(float(gap.std()) / math.sqrt(gap.numel()), run_to_run)
    assert abs(float(gap.mean())) < 4 * se
    assert result.summary.data_plate == "data" and result.summary.particle_mode == "vectorized"
