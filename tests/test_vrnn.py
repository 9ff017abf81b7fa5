"""The variational RNN: its ELBO against a hand-written loop, masks and padding, particle
dims, generation, evaluation and training on the 8x8 digits read row by row."""

import math

import matplotlib
import pyro
import pytest
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample
from pyro_aevb.guides.vrnn import VRNNGuide
from pyro_aevb.models import VAE
from pyro_aevb.models.vrnn import VRNN, RowByRowGeneration
from torch.distributions import Bernoulli, Normal, kl_divergence

from pyro_aevb import fit, importance_log_likelihood, plots
from pyro_aevb.contract import ContractError, check_pair
from pyro_aevb.data import load_digits
from pyro_aevb.evaluation import elbo_per_datapoint, log_importance_weights

matplotlib.use("Agg")

T, D, L = 8, 8, 2


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """These networks are tiny and the recurrence runs step by step: on a busy machine
    a second intra-op thread made each step up to 20 times slower, never faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pair(seed=0, double=False):
    torch.manual_seed(seed)
    model = VRNN(x_dim=D, z_dim=L, rnn_dim=12, hidden=(10,), num_steps=T)
    guide = VRNNGuide(model, hidden=(10,))
    if double:
        model.double(), guide.double()
    return model, guide


@pytest.fixture(scope="module")
def rows():
    """Train and test digits as sequences of 8 rows of 8 pixels, binarized once."""
    train, test = load_digits()
    g = torch.Generator().manual_seed(0)
    binarize = lambda x: torch.bernoulli(x, generator=g)
    return binarize(train.rows().x), binarize(test.rows().x), train.rows(), test.rows()


def _hand_elbo(model, guide, x, analytic_kl=False):
    """The bound of section 5.6 step by step with torch.distributions, for one draw:
    sum_t log p(x_t | h_t, z_t) + log p(z_t | h_t) - log q(z_t | x_t, h_t), or with
    the analytic KL(q || p) in place of the last two terms; summed over the batch."""
    batch = x.shape[0]
    h = c = x.new_zeros(batch, model.rnn_dim)
    total = x.new_zeros(())
    for t in range(x.shape[1]):
        x_t = x[:, t]
        q = Normal(*guide.head(guide.trunk(torch.cat([x_t, h], -1))))
        p = Normal(*model.prior_head(model.prior_trunk(h)))
        z = q.rsample()  # the same draw, in the same order, as the Pyro guide's
        logits = model.decoder(torch.cat([h, z], -1))
        total = total + Bernoulli(logits=logits).log_prob(x_t).sum()
        if analytic_kl:
            total = total - kl_divergence(q, p).sum()
        else:
            total = total + (p.log_prob(z) - q.log_prob(z)).sum()
        h, c = model.rnn(torch.cat([x_t, z], -1), (h, c))
    return total


def _log_weight_per_point(model, guide, fields, z=None):
    """log p(x, z) - log q(z | x) per data point from traces, masks applied, with the
    guide's own draws or, if given, the latents ``z`` (site name -> value); returns
    the weights and the latents."""
    guide = guide if z is None else poutine.condition(guide, data=z)
    guide_trace = poutine.trace(guide).get_trace(**fields)
    z = {n: s["value"] for n, s in guide_trace.nodes.items() if n.startswith("z_")}
    model_trace = poutine.trace(poutine.condition(model, data=z)).get_trace(**fields)

    def total(trace, sign):
        out = 0.0
        for site in trace.nodes.values():
            if site["type"] == "sample" and not site_is_subsample(site):
                lp = scale_and_mask(site["fn"].log_prob(site["value"]), 1.0, site["mask"])
                out = out + sign * lp
        return out

    return total(model_trace, 1.0) + total(guide_trace, -1.0), z


@pytest.mark.parametrize("analytic_kl", [False, True])
def test_pyro_elbo_equals_the_hand_written_recurrence(rows, analytic_kl):
    x = rows[0][:10].double()
    model, guide = _pair(double=True)
    elbo = pyro.infer.TraceMeanField_ELBO() if analytic_kl else pyro.infer.Trace_ELBO()
    torch.manual_seed(3)
    loss = elbo.differentiable_loss(model, guide, x)
    torch.manual_seed(3)
    hand = _hand_elbo(model, guide, x, analytic_kl)
    assert loss.item() == pytest.approx(-hand.item(), abs=1e-4)
    assert abs(hand.item()) > 100  # a real bound over 10 digits, not a vacuous zero


def test_padding_with_masked_steps_leaves_the_elbo_and_its_gradients_unchanged(rows):
    x = rows[0][:6]
    model, guide = _pair()
    padded = torch.cat([x, torch.full((6, 3, D), float("nan"))], 1)  # T = 8 -> 11
    mask = torch.arange(11).expand(6, 11) < T

    def loss_and_grads(**fields):
        pyro.clear_param_store()
        torch.manual_seed(1)
        loss = pyro.infer.Trace_ELBO().differentiable_loss(model, guide, **fields)
        params = list(model.parameters()) + list(guide.parameters())
        return loss, torch.autograd.grad(loss, params)

    loss, grads = loss_and_grads(x=x)
    padded_loss, padded_grads = loss_and_grads(x=padded, mask=mask)
    assert padded_loss.item() == pytest.approx(loss.item(), abs=1e-4)
    for g, pg in zip(grads, padded_grads, strict=True):
        assert torch.isfinite(pg).all()
        torch.testing.assert_close(pg, g, atol=1e-5, rtol=1e-4)


def test_a_batch_of_different_lengths_scores_each_sequence_as_if_alone(rows):
    """Sequences of lengths 8, 5, 3 and 1 padded to 8: with the same latent draws, each
    point's log-weight equals that of its unpadded sequence scored on its own."""
    lengths = [8, 5, 3, 1]
    x = rows[0][10:14].clone()
    mask = torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]
    x[~mask] = 0.5  # padding outside the Bernoulli support must not matter
    model, guide = _pair()
    torch.manual_seed(2)
    batch_w, z = _log_weight_per_point(model, guide, {"x": x, "mask": mask})
    assert batch_w.shape == (4,)
    for i, n in enumerate(lengths):
        z_i = {f"z_{t + 1}": z[f"z_{t + 1}"][i : i + 1] for t in range(n)}
        w, _ = _log_weight_per_point(model, guide, {"x": x[i : i + 1, :n]}, z_i)
        assert w.item() == pytest.approx(batch_w[i].item(), abs=1e-4)


def test_particles_to_the_left_of_the_data_plate_match_single_draws(rows):
    """The guide then the replayed model inside a particle plate, as the importance-
    sampled evaluation runs them: z_t is (K, B, L) against x (B, T, D), and particle k's
    log-weight is that of a plain run on particle k's draws."""
    x = rows[1][:5]
    model, guide = _pair()
    K = 3
    with pyro.plate("particles", K, dim=-2):
        weights, z = _log_weight_per_point(model, guide, {"x": x})
    assert z["z_4"].shape == (K, 5, L)
    assert weights.shape == (K, 5)
    for k in range(K):
        w, _ = _log_weight_per_point(model, guide, {"x": x}, {n: v[k] for n, v in z.items()})
        torch.testing.assert_close(w, weights[k], atol=1e-4, rtol=1e-5)


def test_check_pair_and_importance_sampling(rows):
    x = rows[1][:40]
    mask = torch.arange(T)[None, :] < torch.randint(
        1, T + 1, (40, 1), generator=torch.Generator().manual_seed(0)
    )
    model, guide = _pair()
    fields = {"x": x, "mask": mask}
    summary = check_pair(model, guide, fields)
    assert summary.latent_sites == [f"z_{t}" for t in range(1, T + 1)]
    assert summary.observed_sites == [f"x_{t}" for t in range(1, T + 1)]
    # One LSTM, the model's: the guide's own parameters are its encoder only.
    assert "vrnn$$$rnn.weight_ih" in summary.model_params
    assert summary.guide_params and all(
        n.startswith("vrnn_encoder$$$") for n in summary.guide_params
    )
    assert not any("rnn" in k for k in guide.state_dict())
    assert not {id(p) for p in guide.parameters()} & {id(p) for p in model.parameters()}

    log_w = log_importance_weights(model, guide, fields, 7, summary)
    assert log_w.shape == (7, 40) and bool(torch.isfinite(log_w).all())
    est = importance_log_likelihood(model, guide, fields, num_particles=50, pareto=False)
    assert est.log_likelihood.shape == (40,)
    assert bool((est.log_likelihood >= est.elbo - 1e-6).all())  # Jensen, draw by draw
    elbo = elbo_per_datapoint(model, guide, fields, seed=5)  # independent draws
    assert float(est.log_likelihood.mean()) > float(elbo.mean())


def test_generation_row_by_row(rows):
    model, _ = _pair()
    torch.manual_seed(0)
    draws = model.generate(6, mean=False)
    means = model.generate(4, steps=11, mean=True)
    assert draws.shape == (6, T, D) and means.shape == (4, 11, D)
    assert set(draws.unique().tolist()) <= {0.0, 1.0}
    assert bool(((means >= 0) & (means <= 1)).all())

    record = model.generate_rows(3)
    assert isinstance(record, RowByRowGeneration)
    assert record.z.shape == (3, T, L) and record.rows.shape == record.probs.shape == (3, T, D)
    # The recorded probabilities are the model's own: conditioned on the generated rows
    # and latents, the model's per-step Bernoulli means are the recorded ones.
    z = {f"z_{t + 1}": record.z[:, t] for t in range(T)}
    trace = poutine.trace(poutine.condition(model, data=z)).get_trace(x=record.rows)
    means = torch.stack([trace.nodes[f"x_{t + 1}"]["fn"].mean for t in range(T)], 1)
    torch.testing.assert_close(means, record.probs)
    fig = plots.row_by_row_generation(record.probs[0], record.rows[0], ncols=5)
    assert len([ax for ax in fig.axes if ax.images]) == T + 1
    plots.save(fig, "/dev/null")


def test_prior_predictive_and_reconstruction_means_are_sequences(rows):
    x = rows[1][:7]
    model, guide = _pair()
    samples = plots.prior_predictive_mean(model, {"x": x})
    recon = plots.reconstruction_mean(model, guide, {"x": x})
    assert samples.shape == recon.shape == (7, T, D)
    # Row t of the reconstruction is the mean of site x_t.
    with pyro.get_param_store().scope():
        torch.manual_seed(0)
        guide_trace = poutine.trace(guide).get_trace(x=x)
        trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x=x)
    torch.testing.assert_close(recon[:, 2], trace.nodes["x_3"]["fn"].mean)
    # Single-site models keep their (B, D) means.
    vae_x = x.reshape(7, -1)
    vae = VAE(T * D, L, (10,))
    assert plots.prior_predictive_mean(vae, {"x": vae_x}).shape == (7, T * D)


def test_fit_trains_on_digit_rows_with_and_without_masks(rows):
    _, _, train, test = rows
    model, guide = _pair()
    settings = dict(transform="dynamic", batch_size=50, lr=1e-2, seed=0, progress=False)
    result = fit(
        model, guide, train.subset(range(300)), test.subset(range(50)), epochs=6, **settings
    )
    losses = [-row["train_elbo"] for row in result.history]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 2  # nats per digit
    assert result.history[-1]["test_elbo"] > result.history[0]["test_elbo"]

    lengths = torch.randint(1, T + 1, (100, 1), generator=torch.Generator().manual_seed(1))
    fields = {"x": train.x[:100], "mask": torch.arange(T)[None, :] < lengths}
    result = fit(model, guide, fields, epochs=1, **settings)
    assert math.isfinite(result.history[-1]["train_elbo"])


@pytest.mark.parametrize(
    "fields, message",
    [
        (lambda x: {"x": x.reshape(4, -1)}, "Dataset.rows()"),
        (lambda x: {"x": x[..., :5]}, "x_dim=5"),
        (lambda x: {"x": x.long()}, "floating-point"),
        (lambda x: {"x": x, "mask": torch.ones(4, T - 1, dtype=torch.bool)}, "mask of shape"),
        (lambda x: {"x": x, "mask": torch.ones(4, T)}, "bool tensor"),
        (
            lambda x: {"x": x, "mask": torch.tensor([[True, False, True] + [False] * (T - 3)] * 4)},
            "prefix masks",
        ),
    ],
)
@pytest.mark.parametrize("role", ["model", "guide"])
def test_bad_inputs_are_rejected_with_a_clear_message(rows, fields, message, role):
    model, guide = _pair()
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        (model if role == "model" else guide)(**fields(rows[0][:4]))


def test_the_guide_needs_a_vrnn():
    with pytest.raises(ValueError, match="VRNN"):
        VRNNGuide(torch.nn.Linear(2, 2))


def test_grey_values_beyond_the_first_batch_are_refused_before_training(rows):
    """Each step observes a view x[:, t] of the data field; the contract check follows the
    view to the field, so every sequence is checked against the Bernoulli support."""
    _, _, train, _ = rows
    x = torch.bernoulli(train.x[:120], generator=torch.Generator().manual_seed(0))
    x[110, 3, 2] = 0.5  # past the first batch of 50
    model, guide = _pair()
    with pytest.raises(ContractError, match=r"1 data point\(s\), first at index 110"):
        fit(model, guide, {"x": x}, epochs=1, batch_size=50, progress=False)
