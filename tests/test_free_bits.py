"""Free bits against hand-computed gradients and values on a tiny Gaussian pair; lambda = 0
is TraceMeanField_ELBO / Trace_ELBO; the option reaches the command line; fit's test ELBO
stays the unmodified bound."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_aevb import data_plate, make_objective
from pyro_aevb.cli import build_parser
from pyro_aevb.objectives.free_bits import FreeBitsELBO
from tests.conftest import tiny_vae

D, L, B = 4, 2, 8


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.decoder = nn.Linear(L, D)

    def forward(self, x):
        pyro.module("decoder", self.decoder)
        with data_plate(x):
            z = pyro.sample("z", dist.Normal(x.new_zeros(L), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(self.decoder(z), 0.5).to_event(1), obs=x)


class Guide(nn.Module):
    """``q(z | x) = N(x A^T, diag(exp(2 log_s)))``: dim 0 far from the prior, dim 1 near it."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.A = nn.Parameter(torch.randn(L, D, generator=g) * torch.tensor([[1.0], [0.05]]))
        self.log_s = nn.Parameter(torch.tensor([-1.0, -0.05]))

    def forward(self, x):
        pyro.module("encoder", self)
        with data_plate(x):
            pyro.sample("z", dist.Normal(x @ self.A.T, self.log_s.exp()).to_event(1))


@pytest.fixture
def pair():
    torch.manual_seed(3)
    x = torch.randn(B, D, generator=torch.Generator().manual_seed(1))
    return Model(), Guide(), x


def _loss_and_grads(objective, model, guide, x, seed=7):
    pyro.set_rng_seed(seed)
    loss = objective.differentiable_loss(model, guide, x=x)
    params = [guide.A, guide.log_s, *model.decoder.parameters()]
    return loss.detach(), torch.autograd.grad(loss, params)


def _kl_sums(guide, x):
    """Sum over the batch of KL(q(z_j | x_i) || N(0, 1)) per dim: -log s + (s^2 + mu^2)/2 - 1/2."""
    with torch.no_grad():
        mu, s = x @ guide.A.T, guide.log_s.exp()
        return (-torch.log(s) + (s**2 + mu**2) / 2 - 0.5).sum(0)


def test_free_bits_remove_the_kl_gradient_of_dims_below_the_floor(pair):
    """The difference from the ELBO's gradient is minus the KL gradient of the dims below
    the floor, by hand: d/dA_1 sum_i KL_i1 = sum_i mu_i1 x_i, d/dlog s_1 = B (s_1^2 - 1)."""
    model, guide, x = pair
    kl = _kl_sums(guide, x) / B  # minibatch averages, nats per point
    free_bits = float(kl.mean())
    assert kl[0] > free_bits > kl[1]  # dim 0 above the floor, dim 1 below
    loss_fb, grads_fb = _loss_and_grads(FreeBitsELBO(free_bits), model, guide, x)
    loss_mf, grads_mf = _loss_and_grads(pyro.infer.TraceMeanField_ELBO(), model, guide, x)
    with torch.no_grad():
        mu1, s1 = x @ guide.A[1], guide.log_s[1].exp()
        expected_a = torch.zeros(L, D)
        expected_a[1] = -(mu1.unsqueeze(-1) * x).sum(0)
        expected_log_s = torch.tensor([0.0, -B * (s1**2 - 1)])
    diff = [a - b for a, b in zip(grads_fb, grads_mf, strict=True)]
    assert torch.allclose(diff[0], expected_a, atol=1e-5)
    assert torch.allclose(diff[1], expected_log_s, atol=1e-5)
    for d in diff[2:]:  # the decoder's gradient is the ELBO's
        assert torch.equal(d, torch.zeros_like(d))
    # the value: dim 1 pays B * lambda instead of its KL
    assert float(loss_fb - loss_mf) == pytest.approx(float(B * free_bits - B * kl[1]), rel=1e-5)


def test_a_floor_above_every_dim_leaves_no_kl_gradient(pair):
    model, guide, x = pair
    loss, grads = _loss_and_grads(FreeBitsELBO(100.0), model, guide, x)
    _, grads_elbo = _loss_and_grads(pyro.infer.TraceMeanField_ELBO(), model, guide, x)
    kl = _kl_sums(guide, x)
    with torch.no_grad():
        mu, s = x @ guide.A.T, guide.log_s.exp()
    # ELBO gradient = reconstruction gradient + KL gradient; free bits keep the first only
    assert torch.allclose(grads[0], grads_elbo[0] - mu.T @ x, atol=1e-4)
    assert torch.allclose(grads[1], grads_elbo[1] - B * (s**2 - 1), atol=1e-4)
    assert float(loss) == pytest.approx(
        float(_loss_and_grads(pyro.infer.TraceMeanField_ELBO(), model, guide, x)[0])
        - float(kl.sum())
        + 100.0 * B * L,
        rel=1e-6,
    )


@pytest.mark.parametrize("particles", [1, 3])
@pytest.mark.parametrize(
    "analytic, reference",
    [(True, pyro.infer.TraceMeanField_ELBO), (False, pyro.infer.Trace_ELBO)],
)
def test_lambda_zero_is_the_elbo(pair, particles, analytic, reference):
    model, guide, x = pair
    options = {"num_particles": particles, "vectorize_particles": particles > 1}
    ours = _loss_and_grads(FreeBitsELBO(0.0, analytic_kl=analytic, **options), model, guide, x)
    theirs = _loss_and_grads(reference(**options), model, guide, x)
    assert float(ours[0]) == pytest.approx(float(theirs[0]), rel=1e-6)
    for a, b in zip(ours[1], theirs[1], strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_floor_is_per_data_point_under_fit_scaling(pair):
    """Inside fit the sites weigh 1/B each: the floor is then lambda nats per point."""
    from pyro_aevb.training import bind_pair

    model, guide, x = pair
    bound = bind_pair(model, guide, {"x": x}, num_data=100)
    kl = _kl_sums(guide, x) / B
    losses = []
    for objective in (FreeBitsELBO(100.0), pyro.infer.TraceMeanField_ELBO()):
        pyro.set_rng_seed(7)
        losses.append(objective.loss(bound.model, bound.guide, x=x))
    assert losses[0] - losses[1] == pytest.approx(100.0 * L - float(kl.sum()), rel=1e-5)


def test_bad_settings_and_the_command_line():
    with pytest.raises(ValueError, match="needs the option free_bits"):
        make_objective("free_bits", 1)
    with pytest.raises(ValueError, match="finite number of nats >= 0"):
        make_objective("free_bits", 1, free_bits=-0.5)
    assert make_objective("free_bits", 2, free_bits=0.5).free_bits == 0.5
    fit_parser = build_parser()._subparsers._group_actions[0].choices["fit"]
    vae_parser = fit_parser._subparsers._group_actions[0].choices["vae"]
    args = vae_parser.parse_args(["--objective", "free_bits", "--free-bits", "0.25"])
    assert vars(args)["objective_option__free_bits"] == 0.25


def test_a_full_covariance_guide_is_refused(pair):
    model, _, x = pair

    def guide(x):
        with data_plate(x):
            pyro.sample("z", dist.MultivariateNormal(x.new_zeros(L), torch.eye(L)))

    with pytest.raises(ValueError, match="MultivariateNormal couples them"):
        FreeBitsELBO(0.5).differentiable_loss(model, guide, x)


def test_fit_reports_the_unmodified_bound(digits):
    """The history's test ELBO is the ELBO of the trained pair, not the free-bits objective."""
    from pyro_aevb import fit
    from pyro_aevb.evaluation import elbo_per_datapoint

    train, test = digits
    model, guide = tiny_vae()
    result = fit(
        model,
        guide,
        train,
        test,
        objective="free_bits",
        objective_options={"free_bits": 2.0},
        epochs=2,
        batch_size=100,
        lr=1e-2,
        transform="threshold",
        seed=0,
    )
    last = result.history[-1]
    x_test = (test.x > 0.5).to(test.x.dtype)
    elbo = elbo_per_datapoint(model, guide, {"x": x_test}, seed=0)
    assert math.isfinite(last["test_elbo"])
    assert last["test_elbo"] == pytest.approx(float(elbo.mean()), abs=0.5)
    # the training objective pays at least the floor: below the ELBO (here 4 dims x 2 nats)
    assert last["train_elbo"] < last["test_elbo"]
