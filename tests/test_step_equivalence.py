r"""The library's ELBO training step against a plain PyTorch computation of the same loss.

On the same weights and the same reparameterization noise, ``pyro_aevb.TrainingStep``
(set up as ``fit`` sets it up: ``check_pair`` on the first batch under
``full_data_size(N)``) must give the loss and every parameter gradient of the loss that
twenty lines of PyTorch write for the VAE, written out here by hand:

* ``elbo`` (Pyro's ``Trace_ELBO``, the Monte Carlo KL):
  :math:`-\frac1B \sum_i [\log p(z_i) + \log p(x_i \mid z_i) - \log q(z_i \mid x_i)]`;
* ``meanfield`` (``TraceMeanField_ELBO``, the analytic KL of Kingma & Welling, eq. 10):
  :math:`-\frac1B \sum_i [\log p(x_i \mid z_i) - \mathrm{KL}(q(z \mid x_i) \,\|\, p(z))]`,

with :math:`z_i = \mu(x_i) + \sigma(x_i) \epsilon_i` and the same :math:`\epsilon`. The
library's per-point scaling is the data plate's :math:`N/B` times the objective's
:math:`1/N`, i.e. the plain batch mean :math:`1/B`, whatever :math:`N` is.

Tolerances. In float64 (the tiny VAE) both sides are the same sums in other orders
(Pyro's ``Bernoulli.log_prob`` against ``x l - softplus(l)`` here, the scales applied as
``N/B`` and ``1/N`` against one ``1/B``), so they agree to a relative ``1e-12``: a few
hundred roundings of ``2^-53 = 1.1e-16`` each. In float32 (the default 784-500-500-20
pair on a batch of 100) the same reorderings over about ``10^5`` terms round at
``2^-24 = 6e-8`` each, so the bar is a relative ``2e-6`` for the loss and ``1e-5`` of a
gradient tensor's norm for its difference; a wrong factor (``B`` against ``N``, a KL term
counted twice) is off by orders of magnitude more.
"""

from __future__ import annotations

import copy
import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro_aevb.guides import DiagonalNormalGuide
from pyro_aevb.models import VAE
from torch.nn import functional as F

import pyro_aevb
from pyro_aevb.contract import check_pair
from pyro_aevb.objectives import make_objective
from pyro_aevb.plate import full_data_size

LOG_2PI = math.log(2 * math.pi)


def build_pair(x_dim, z_dim, hidden, dtype, seed=0):
    torch.manual_seed(seed)
    model = VAE(x_dim, z_dim, hidden).to(dtype)
    guide = DiagonalNormalGuide(x_dim, z_dim, hidden).to(dtype)
    return model, guide


def library_step(model, guide, batch, num_data, objective):
    """A ``TrainingStep`` built as ``fit`` builds it (bench/library_step.py does the same)."""
    elbo = make_objective(objective, 1)
    with full_data_size(num_data), pyro.validation_enabled(True):
        summary = check_pair(model, guide, batch)
    return pyro_aevb.TrainingStep(model, guide, elbo, summary, batch, num_data, lr=1e-3)


def plain_loss(decoder, guide, x, eps, analytic_kl):
    """Minus the batch-mean ELBO, written out in PyTorch on copies of the networks."""
    loc, scale = guide.head(guide.trunk(x))
    z = loc + scale * eps
    logits = decoder(z)
    log_lik = (x * logits - F.softplus(logits)).sum(-1)  # Bernoulli pixels
    if analytic_kl:
        kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1).sum(-1) - scale.log().sum(-1)
    else:
        log_prior = -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
        log_q = (-0.5 * eps.pow(2) - scale.log() - 0.5 * LOG_2PI).sum(-1)
        kl = log_q - log_prior  # the one-sample Monte Carlo KL
    return -(log_lik - kl).mean()


def named_grads(model, guide):
    grads = {f"decoder.{n}": p.grad for n, p in model.decoder.named_parameters()}
    grads.update({f"encoder.{n}": p.grad for n, p in guide.named_parameters()})
    return grads


def both_losses(objective, dtype, x_dim, z_dim, hidden, batch_size, num_data, seed=1):
    """``(ours, plain)``: each ``(loss, {name: grad})`` on the same weights and noise."""
    model, guide = build_pair(x_dim, z_dim, hidden, dtype)
    plain_decoder, plain_guide = copy.deepcopy(model.decoder), copy.deepcopy(guide)
    generator = torch.Generator().manual_seed(7)
    x = torch.bernoulli(torch.full((batch_size, x_dim), 0.3, dtype=dtype), generator=generator)
    step = library_step(model, guide, {"x": x}, num_data, objective)
    for p in step.parameters:
        p.grad = None  # the contract check's trial run leaves none, but make sure

    torch.manual_seed(seed)
    ours = step.differentiable_loss({"x": x})
    ours.backward()

    # The same noise: Normal.rsample draws eps with empty(shape).normal_() from the global
    # stream, and nothing draws before the guide's sample site.
    torch.manual_seed(seed)
    eps = torch.empty(batch_size, z_dim, dtype=dtype).normal_()
    torch.manual_seed(seed)
    with full_data_size(num_data):
        z = poutine.trace(guide).get_trace(x).nodes["z"]["value"]
    with torch.no_grad():
        loc, scale = guide.encode(x)
    torch.testing.assert_close(z, loc + scale * eps, rtol=0, atol=0)

    plain = plain_loss(plain_decoder, plain_guide, x, eps, analytic_kl=objective == "meanfield")
    plain.backward()
    plain_grads = {f"decoder.{n}": p.grad for n, p in plain_decoder.named_parameters()}
    plain_grads.update({f"encoder.{n}": p.grad for n, p in plain_guide.named_parameters()})
    return (ours.detach(), named_grads(model, guide)), (plain.detach(), plain_grads)


def assert_same(ours, plain, loss_rtol, grad_rtol):
    (loss, grads), (plain_loss_value, plain_grads) = ours, plain
    assert abs(float(loss) - float(plain_loss_value)) <= loss_rtol * abs(float(plain_loss_value))
    # weights and biases: 3 decoder layers, 2 encoder trunk layers, the loc and scale heads
    assert grads.keys() == plain_grads.keys() and len(grads) == 14
    for name, g in grads.items():
        assert g is not None, name
        difference = float((g - plain_grads[name]).norm())
        assert difference <= grad_rtol * float(plain_grads[name].norm()), (name, difference)


TINY = {"x_dim": 12, "z_dim": 3, "hidden": (7, 5), "batch_size": 10}


@pytest.mark.parametrize("objective", ["elbo", "meanfield"])
@pytest.mark.parametrize("num_data", [10, 50, 4000])
def test_float64_step_is_the_plain_batch_mean_loss(objective, num_data):
    """The loss and all 14 gradients, for N = B and N far above B: N/B x 1/N = 1/B."""
    ours, plain = both_losses(objective, torch.float64, num_data=num_data, **TINY)
    assert_same(ours, plain, 1e-12, 1e-12)


@pytest.mark.parametrize("objective", ["elbo", "meanfield"])
def test_float32_default_vae_step_is_the_plain_loss(objective):
    """The quick start's pair at its size and dtype: 784-500-500-20, batch 100 of 4000."""
    ours, plain = both_losses(
        objective, torch.float32, 784, 20, (500, 500), batch_size=100, num_data=4000
    )
    assert_same(ours, plain, 2e-6, 1e-5)


def test_sampled_and_analytic_kl_differ_only_in_the_kl_term():
    """On the same noise the two objectives share the decoder's gradient exactly (the KL
    does not depend on it) and their losses differ by the Monte Carlo KL minus the
    closed form, whose mean over many draws is zero (checked to 4 standard errors)."""
    (elbo_loss, elbo_grads), _ = both_losses("elbo", torch.float64, num_data=50, **TINY)
    pyro.clear_param_store()
    (mf_loss, mf_grads), _ = both_losses("meanfield", torch.float64, num_data=50, **TINY)
    for name in elbo_grads:
        if name.startswith("decoder."):
            torch.testing.assert_close(elbo_grads[name], mf_grads[name], rtol=1e-12, atol=0)
    assert any(not torch.allclose(elbo_grads[n], mf_grads[n]) for n in elbo_grads if "encoder" in n)

    model, guide = build_pair(TINY["x_dim"], TINY["z_dim"], TINY["hidden"], torch.float64)
    generator = torch.Generator().manual_seed(7)
    x = torch.bernoulli(
        torch.full((10, TINY["x_dim"]), 0.3, dtype=torch.float64), generator=generator
    )
    with torch.no_grad():
        loc, scale = guide.encode(x)
        eps = torch.randn(20000, *loc.shape, dtype=torch.float64)
        z = loc + scale * eps
        mc_kl = ((-0.5 * eps.pow(2) - scale.log()) + 0.5 * z.pow(2)).sum(-1).mean(-1)
        kl = (0.5 * (loc.pow(2) + scale.pow(2) - 1) - scale.log()).sum(-1).mean()
    assert abs(float(mc_kl.mean() - kl)) < 4 * float(mc_kl.std()) / math.sqrt(mc_kl.numel())
    # the seed-1 draw of both_losses: elbo's loss - meanfield's = MC KL - KL on that draw
    torch.manual_seed(1)
    eps1 = torch.empty(10, TINY["z_dim"], dtype=torch.float64).normal_()
    z1 = loc + scale * eps1
    mc_kl1 = ((-0.5 * eps1.pow(2) - scale.log()) + 0.5 * z1.pow(2)).sum(-1).mean()
    assert abs(float(elbo_loss - mf_loss) - float(mc_kl1 - kl)) < 1e-12 * float(abs(elbo_loss))


def test_the_step_updates_as_plain_adam_on_the_plain_gradients():
    """The step's update (fused Adam) equals ``torch.optim.Adam`` (per-parameter loop)
    applied to the plain gradients, in float64 to a relative 1e-12 of the update."""
    model, guide = build_pair(TINY["x_dim"], TINY["z_dim"], TINY["hidden"], torch.float64)
    plain_decoder, plain_guide = copy.deepcopy(model.decoder), copy.deepcopy(guide)
    x = torch.bernoulli(torch.full((10, TINY["x_dim"]), 0.3, dtype=torch.float64))
    step = library_step(model, guide, {"x": x}, 50, "elbo")
    plain_params = [*plain_decoder.parameters(), *plain_guide.parameters()]
    plain_adam = torch.optim.Adam(plain_params, lr=1e-3, foreach=False)
    before = [p.detach().clone() for p in plain_params]
    for i in range(3):
        torch.manual_seed(10 + i)
        ours = step({"x": x})
        torch.manual_seed(10 + i)
        eps = torch.empty(10, TINY["z_dim"], dtype=torch.float64).normal_()
        plain_adam.zero_grad()
        plain = plain_loss(plain_decoder, plain_guide, x, eps, analytic_kl=False)
        plain.backward()
        plain_adam.step()
        assert abs(ours - plain.item()) <= 1e-12 * abs(plain.item())
    ours_params = [*model.decoder.parameters(), *guide.parameters()]
    for p, q, start in zip(ours_params, plain_params, before, strict=True):
        moved = float((q.detach() - start).norm())
        assert moved > 0
        assert float((p - q).detach().norm()) <= 1e-12 * moved
