"""Flow posteriors (pyro_aevb.guides.flow, pyro_aevb.guides.transforms): log q against the
change of variables done by hand, the planar inverse, a flow guide beating the diagonal
guide on a banana posterior with known evidence, and --guide iaf through the command line."""

from __future__ import annotations

import json
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro_aevb.guides import DiagonalNormalGuide, FlowGuide, amortized_guide
from pyro_aevb.guides.transforms import flow_layers
from torch import nn
from torch.nn import functional as F

from pyro_aevb import data_plate, evaluate
from pyro_aevb.cli import main


@pytest.fixture(autouse=True)
def _one_thread():
    """These networks are tiny: a second intra-op thread only contends (20x slower on a
    loaded two-core machine), so each test runs on one and restores the setting."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _encoder_output(guide, x):
    h = guide.trunk(x)
    loc, scale = guide.head(h)
    return h, loc, scale


def _planar_by_hand(z0, bias, u, w):
    """Rezende & Mohamed (2015), eq. 10-12, with u made invertible as in their appendix:
    u_hat = u + (m(w.u) - w.u) w / |w|^2, m(a) = -1 + softplus(a)."""
    wu = (w * u).sum(-1, keepdim=True)
    u_hat = u + (-1 + F.softplus(wu) - wu) * w / (w * w).sum(-1, keepdim=True)
    a = (w * z0).sum(-1, keepdim=True) + bias
    z = z0 + u_hat * torch.tanh(a)
    psi = (1 - torch.tanh(a) ** 2) * w
    log_det = torch.log(torch.abs(1 + (psi * u_hat).sum(-1)))
    return z, log_det


def _jacobian_log_det(f, z0):
    """log|det df/dz0| per row of z0, by autograd (independent of any formula)."""
    out = []
    for row in z0:
        jac = torch.autograd.functional.jacobian(lambda v: f(v.unsqueeze(0)).squeeze(0), row)
        out.append(torch.linalg.slogdet(jac.double()).logabsdet)
    return torch.stack(out)


def test_planar_log_q_is_the_change_of_variables_by_hand():
    torch.manual_seed(0)
    guide = FlowGuide(5, 3, (16,), flow="planar", num_layers=2).double()
    x = torch.rand(4, 5, dtype=torch.double)
    h, loc, scale = _encoder_output(guide, x)
    eps = torch.randn(4, 3, dtype=torch.double)
    z, log_det_total = loc + scale * eps, 0.0
    base_log_q = dist.Normal(loc, scale).log_prob(z).sum(-1)
    for layer in guide.flows:
        bias, u, w = layer.nn(h)
        layer_map = lambda v, b=bias, u=u, w=w: _planar_by_hand(v, b, u, w)[0]  # noqa: E731
        z_next, log_det = _planar_by_hand(z, bias, u, w)
        # the hand formula for log|det J| is the autograd Jacobian's (one point at a time)
        for i in range(4):
            jac_log_det = _jacobian_log_det(
                lambda v, i=i, b=bias, uu=u, ww=w: _planar_by_hand(v, b[i], uu[i], ww[i])[0],
                z[i : i + 1],
            )
            assert float(jac_log_det[0]) == pytest.approx(float(log_det[i].detach()), abs=1e-10)
        assert torch.allclose(layer_map(z), z_next)
        z, log_det_total = z_next, log_det_total + log_det
    by_hand = base_log_q - log_det_total
    q = guide.distribution(x)
    # z is a new tensor, not the layers' cached output: log_prob inverts each planar map
    assert torch.allclose(q.log_prob(z.detach().clone()), by_hand, atol=1e-8)
    # and the guide's own draws score the same way through Pyro's cache
    trace = poutine.trace(guide).get_trace(x)
    site = trace.nodes["z"]
    fresh = q.log_prob(site["value"].detach().clone())
    assert torch.allclose(site["fn"].log_prob(site["value"]), fresh, atol=1e-8)


def test_planar_inverse_recovers_the_input_with_the_implicit_gradient():
    torch.manual_seed(1)
    layers = flow_layers("planar", 4, 6, 1, (12,)).double()
    context = torch.randn(10, 6, dtype=torch.double)
    layer = layers[0].condition(context)
    x = 3 * torch.randn(10, 4, dtype=torch.double)
    y = layer(x)
    y_new = y.detach().clone().requires_grad_()
    x_back = layer.inv(y_new)
    assert torch.allclose(x_back, x, atol=1e-10)
    # d x / d y of the inverse is the inverse of the forward Jacobian
    jac_inverse = torch.autograd.functional.jacobian(lambda v: layer.inv(v)[0], y_new[0].detach())
    jac_forward = torch.autograd.functional.jacobian(lambda v: layer(v.expand(10, 4))[0], x[0])
    assert torch.allclose(jac_inverse @ jac_forward, torch.eye(4, dtype=torch.double), atol=1e-8)


def test_affine_autoregressive_log_q_is_the_change_of_variables_by_hand():
    torch.manual_seed(2)
    guide = FlowGuide(5, 3, (16,), flow="iaf", num_layers=1).double()
    x = torch.rand(4, 5, dtype=torch.double)
    h, loc, scale = _encoder_output(guide, x)
    z0 = loc + scale * torch.randn(4, 3, dtype=torch.double)
    network = guide.flows[0].nn
    mean, log_scale = network(z0, context=h)
    log_scale = log_scale.clamp(-5.0, 3.0)  # Pyro's clip of log sigma
    z = mean + log_scale.exp() * z0  # Kingma et al. (2016), eq. 10
    log_det = log_scale.sum(-1)
    # autoregressive in the natural order: the Jacobian is lower triangular with
    # diagonal sigma, so its log-determinant is sum log sigma
    for i in range(4):
        jac = torch.autograd.functional.jacobian(
            lambda v, i=i: (
                network(v.unsqueeze(0), context=h[i : i + 1])[0].squeeze(0)
                + network(v.unsqueeze(0), context=h[i : i + 1])[1].clamp(-5, 3).exp().squeeze(0) * v
            ),
            z0[i],
        )
        assert torch.allclose(jac.triu(1), torch.zeros_like(jac))
        log_abs_det = float(torch.linalg.slogdet(jac).logabsdet)
        assert log_abs_det == pytest.approx(float(log_det[i].detach()))
    by_hand = dist.Normal(loc, scale).log_prob(z0).sum(-1) - log_det
    q = guide.distribution(x)
    assert torch.allclose(q.transforms[0](z0), z)
    assert torch.allclose(q.log_prob(z.detach().clone()), by_hand, atol=1e-8)


class BananaModel(nn.Module):
    r"""``z ~ N(0, I_2)``, ``x_1 | z ~ N(z_1, s_1^2)``, ``x_2 | z ~ N(z_2 + b z_1^2, s_2^2)``.

    The posterior lies along the parabola :math:`z_2 \approx x_2 - b z_1^2` (a banana, not
    Gaussian for ``b != 0``). Integrating :math:`z_2` out in closed form,

    .. math:: p(x) = \int \mathcal N(z_1; 0, 1)\, \mathcal N(x_1; z_1, s_1^2)\,
        \mathcal N(x_2; b z_1^2, 1 + s_2^2)\, dz_1,

    a one-dimensional integral of a smooth, rapidly decaying function, computed by the
    trapezoid rule on a fine grid (exact to round-off; checked at ``b = 0`` against
    :math:`\mathcal N(x_1; 0, 1 + s_1^2)\, \mathcal N(x_2; 0, 1 + s_2^2)`).
    """

    def __init__(self, b=1.0, s1=1.0, s2=0.1):
        super().__init__()
        self.b, self.s1, self.s2 = b, s1, s2

    def forward(self, x):
        with data_plate(x):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            loc = torch.stack([z[..., 0], z[..., 1] + self.b * z[..., 0] ** 2], -1)
            scale = x.new_tensor([self.s1, self.s2])
            pyro.sample("x", dist.Normal(loc, scale).to_event(1), obs=x)

    def log_evidence(self, x):
        grid = torch.linspace(-12, 12, 48001, dtype=torch.double)
        x = x.double().unsqueeze(-1)
        log_f = (
            dist.Normal(0.0, 1.0).log_prob(grid)
            + dist.Normal(grid, self.s1).log_prob(x[:, 0])
            + dist.Normal(self.b * grid**2, math.sqrt(1 + self.s2**2)).log_prob(x[:, 1])
        )
        step = float(grid[1] - grid[0])
        return (torch.logsumexp(log_f, -1) + math.log(step)).to(torch.get_default_dtype())


def test_the_banana_evidence_by_quadrature_is_exact_where_a_closed_form_exists():
    x = torch.tensor([[0.3, -1.2], [2.0, 0.5], [-1.0, 3.0]])
    model = BananaModel(b=0.0, s1=0.7, s2=0.3)
    exact = dist.Normal(0.0, math.sqrt(1 + 0.7**2)).log_prob(x[:, 0]) + dist.Normal(
        0.0, math.sqrt(1 + 0.3**2)
    ).log_prob(x[:, 1])
    assert torch.allclose(model.log_evidence(x), exact, atol=1e-6)


def _banana_data(model, n, seed):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 2, generator=generator)
    noise = torch.randn(n, 2, generator=generator) * torch.tensor([model.s1, model.s2])
    return torch.stack([z[:, 0], z[:, 1] + model.b * z[:, 0] ** 2], -1) + noise


def _fit_guide(model, guide, x, steps, seed=0):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    svi = pyro.infer.SVI(
        model,
        guide,
        pyro.optim.ClippedAdam({"lr": 3e-3}),
        pyro.infer.Trace_ELBO(num_particles=8, vectorize_particles=True),
    )
    for _ in range(steps):
        svi.step(x)
    return guide


def _diagonal_elbo(params, x, model):
    r"""The banana model's ELBO under q = N(m_1, v_1) N(m_2, v_2), in closed form, ``(N,)``:
    with :math:`E z_1^2 = m_1^2 + v_1` and :math:`\mathrm{Var}\, z_1^2 = 2 v_1^2 + 4 m_1^2 v_1`,
    :math:`E (x_2 - z_2 - b z_1^2)^2 = (x_2 - m_2 - b E z_1^2)^2 + v_2
    + b^2 \mathrm{Var}\, z_1^2`."""
    b, s1, s2 = model.b, model.s1, model.s2
    m1, m2, log_sd1, log_sd2 = params.unbind(-1)
    v1, v2 = (2 * log_sd1).exp(), (2 * log_sd2).exp()
    e_z1_sq, var_z1_sq = m1**2 + v1, 2 * v1**2 + 4 * m1**2 * v1
    prior = -math.log(2 * math.pi) - (m1**2 + v1 + m2**2 + v2) / 2
    x1 = -math.log(2 * math.pi * s1**2) / 2 - ((x[:, 0] - m1) ** 2 + v1) / (2 * s1**2)
    square = (x[:, 1] - m2 - b * e_z1_sq) ** 2 + v2 + b**2 * var_z1_sq
    x2 = -math.log(2 * math.pi * s2**2) / 2 - square / (2 * s2**2)
    entropy = math.log(2 * math.pi * math.e) + log_sd1 + log_sd2
    return prior + x1 + x2 + entropy


def _best_diagonal_elbo(x, model):
    """The largest ELBO any diagonal Gaussian reaches at each point (no amortization gap):
    L-BFGS on the closed form from starts on both arms of the banana, the best kept."""
    x = x.double()
    best = torch.full((x.shape[0],), -math.inf, dtype=torch.double)
    for m1_start in (-1.0, 0.0, 1.0):
        p = torch.zeros(x.shape[0], 4, dtype=torch.double)
        p[:, 0] = m1_start + x[:, 0] / 2
        p[:, 1] = x[:, 1] - model.b * p[:, 0] ** 2
        p[:, 2:] = torch.tensor([-1.0, -2.0])
        p.requires_grad_()
        opt = torch.optim.LBFGS([p], max_iter=500, line_search_fn="strong_wolfe",
                                tolerance_grad=1e-12, tolerance_change=1e-14)  # fmt: skip

        def closure(p=p, opt=opt):
            opt.zero_grad()
            loss = -_diagonal_elbo(p, x, model).sum()
            loss.backward()
            return loss

        for _ in range(3):
            opt.step(closure)
        best = torch.maximum(best, _diagonal_elbo(p, x, model).detach())
    return best


def test_the_closed_form_diagonal_elbo_is_the_monte_carlo_one():
    model = BananaModel()
    x = _banana_data(model, 4, seed=5)
    params = torch.tensor([[0.3, 1.0, -0.5, -1.5]], dtype=torch.double).expand(4, 4)
    generator = torch.Generator().manual_seed(0)
    eps = torch.randn(200_000, 4, 2, generator=generator, dtype=torch.double)
    z = params[:, :2] + params[:, 2:].exp() * eps
    q = dist.Normal(params[:, :2], params[:, 2:].exp()).log_prob(z).sum(-1)
    log_joint = dist.Normal(0.0, 1.0).log_prob(z).sum(-1) + dist.Normal(
        torch.stack([z[..., 0], z[..., 1] + model.b * z[..., 0] ** 2], -1),
        torch.tensor([model.s1, model.s2], dtype=torch.double),
    ).log_prob(x.double()).sum(-1)
    mc = log_joint - q
    se = mc.std(0) / math.sqrt(eps.shape[0])
    assert torch.all((mc.mean(0) - _diagonal_elbo(params, x.double(), model)).abs() < 4 * se)


def test_an_iaf_guide_beats_every_diagonal_gaussian_on_a_banana_posterior():
    model = BananaModel()
    x = _banana_data(model, 16, seed=3)
    log_p = model.log_evidence(x).double()
    best_diagonal_gap = log_p - _best_diagonal_elbo(x, model)
    assert torch.all(best_diagonal_gap > 0.3)  # the posterior is far from any diagonal Gaussian

    torch.manual_seed(0)
    iaf = _fit_guide(model, FlowGuide(2, 2, (32,), flow="iaf", num_layers=4), x, 500)
    ev = evaluate(model, iaf, {"x": x}, num_particles=2000, elbo_particles=500, seed=1)
    assert ev.log_evidence is not None and not ev.problems()
    n = x.shape[0]
    iaf_gap = log_p - ev.elbo.double()  # per point, >= 0 up to Monte Carlo error
    assert float(iaf_gap.mean()) > -3 * float(iaf_gap.std() / math.sqrt(n))
    # paired over the same points: the flow's bound is above the best diagonal bound
    improvement = best_diagonal_gap - iaf_gap
    improvement_se = float(improvement.std() / math.sqrt(n))
    assert float(improvement.mean()) > 3 * improvement_se
    assert float(iaf_gap.mean()) < 0.5 * float(best_diagonal_gap.mean())
    # importance sampling with the flow as proposal recovers the exact evidence
    ll_gap = log_p - ev.importance.log_likelihood.double()
    assert float(ll_gap.mean()) == pytest.approx(0.0, abs=0.1)


def test_amortized_guide_names_its_choices():
    assert isinstance(amortized_guide("diagonal", 4, 2, (8,)), DiagonalNormalGuide)
    planar = amortized_guide("planar", 4, 2, (8,), flow_layers=3)
    assert isinstance(planar, FlowGuide) and len(planar.flows) == 3
    with pytest.raises(ValueError, match=r"choose one of \['diagonal', 'iaf', 'planar'\]"):
        amortized_guide("maf", 4, 2, (8,))
    with pytest.raises(ValueError, match="at least the latent dimension"):
        FlowGuide(4, 20, (8,), flow="iaf", flow_hidden=(8,))


TINY = ["--dataset", "digits", "--epochs", "1", "--hidden", "16", "--latent-dim", "2",
        "--max-train", "200", "--max-test", "50", "--eval-particles", "20",
        "--no-progress"]  # fmt: skip


@pytest.mark.parametrize("kind", ["iaf", "planar"])
def test_a_flow_guide_trains_and_evaluates_through_the_command_line(kind, tmp_path):
    out = tmp_path / "run"
    args = ["fit", "vae", *TINY, "--guide", kind, "--flow-layers", "2", "--out", str(out)]
    assert main(args) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"]["guide"] == kind and config["architecture"]["flow_layers"] == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert math.isfinite(metrics["test_elbo"]) and math.isfinite(metrics["test_log_likelihood"])
    assert metrics["test_elbo"] <= metrics["test_log_likelihood"] + 3 * metrics["test_elbo_se"]
    assert main(["evaluate", str(out), "--particles", "30"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["test_elbo"] == pytest.approx(metrics["test_elbo"], abs=1e-6)  # reloaded


@pytest.mark.parametrize("flow", ["iaf", "planar"])
def test_path_derivative_objectives_and_ais_take_a_flow_guide(flow):
    from pyro.distributions.util import detach

    from pyro_aevb import fit

    model = BananaModel()
    x = _banana_data(model, 16, seed=3)
    torch.manual_seed(0)
    guide = FlowGuide(2, 2, (32,), flow=flow, num_layers=2)
    # DReG and STL score draws with the guide's parameters detached: a flow's must be too
    site = poutine.trace(guide).get_trace(x).nodes["z"]
    assert not detach(site["fn"]).log_prob(site["value"].detach()).requires_grad
    for objective in ("dreg", "stl"):
        result = fit(model, guide, {"x": x}, objective=objective, num_particles=4, epochs=5,
                     batch_size=16, lr=3e-3, progress=False)  # fmt: skip
        assert math.isfinite(result.history[-1]["train_elbo"])
    # AIS from the flow (log q at HMC states: the exact inverse) is refused by evaluate's
    # checks if it lies above the exact evidence beyond its error
    ev = evaluate(model, guide, {"x": x}, method="ais", num_chains=4, num_steps=20, seed=0)
    metrics = ev.metrics()
    assert math.isfinite(metrics["test_log_likelihood_ais"])
    assert metrics["test_log_likelihood_ais"] < metrics["ais_points_log_evidence"] + 0.1
