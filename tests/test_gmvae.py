"""The Gaussian-mixture VAE: the enumerated ELBO against an explicit sum over clusters,
the Gumbel-softmax estimate's limit, enumeration in importance-sampled evaluation
against a conjugate mixture's closed-form evidence, and the clustering metrics."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, TraceMeanField_ELBO
from pyro_aevb.guides import GMVAEGuide
from pyro_aevb.models import GaussianMixtureVAE
from torch import nn
from torch.nn import functional as F

from pyro_aevb import data_plate, fit, make_objective
from pyro_aevb.clustering import cluster_metrics, clustering_accuracy, match_clusters
from pyro_aevb.contract import check_pair
from pyro_aevb.evaluation import importance_log_likelihood
from pyro_aevb.relaxed import GumbelMaxCategorical, GumbelSoftmax, TemperatureSchedule


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def small_pair(estimator="enumerate", clusters=4, seed=0, temperature=None):
    torch.manual_seed(seed)
    model = GaussianMixtureVAE(64, clusters, 3, (16,))
    guide = GMVAEGuide(64, clusters, 3, (16,), estimator=estimator, temperature=temperature)
    return model, guide


def binary_digits(digits, n, seed=0):
    x = digits[1].x[:n]
    return torch.bernoulli(x, generator=torch.Generator().manual_seed(seed))


def test_enumerated_elbo_equals_an_explicit_sum_over_clusters(digits, float64):
    model, guide = small_pair()
    x = binary_digits(digits, 6).double()
    pyro.set_rng_seed(3)
    loss = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, x)
    # The same z noise: TraceEnum_ELBO's first draws are the guide's, run under enumeration.
    pyro.set_rng_seed(3)
    trace = poutine.trace(poutine.enum(guide, first_available_dim=-2)).get_trace(x)
    z = trace.nodes["z"]["value"]  # (C, B, L): one draw per cluster and point
    assert z.shape == (4, 6, 3)

    # By hand, cluster by cluster, with torch.distributions and the networks themselves.
    log_q_y = guide.cluster_logits(x).log_softmax(-1)  # (B, C)
    elbo = torch.zeros(6)
    for c in range(4):
        onehot = F.one_hot(torch.full((6,), c), 4).double()
        q_loc, q_scale = guide.latent.encode(torch.cat([x, onehot], -1))
        p_loc, p_scale = model.cluster_prior(onehot)
        logits = model.decoder(z[c])
        term = (
            math.log(1 / 4)
            + torch.distributions.Normal(p_loc, p_scale).log_prob(z[c]).sum(-1)
            + torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
            - log_q_y[:, c]
            - torch.distributions.Normal(q_loc, q_scale).log_prob(z[c]).sum(-1)
        )
        elbo = elbo + log_q_y[:, c].exp() * term
    assert torch.allclose(-loss, elbo.sum(), atol=1e-4, rtol=0)


def test_gumbel_softmax_estimate_approaches_the_enumerated_elbo(digits):
    model, guide = small_pair("gumbel", seed=1)
    x = binary_digits(digits, 50)
    repeats, particles = 100, 20

    def estimates(objective):
        out = [-objective.loss(model, guide, x) / len(x) for _ in range(repeats)]
        return np.mean(out), np.std(out, ddof=1) / math.sqrt(repeats)

    pyro.set_rng_seed(0)
    guide.eval()  # eval mode: the exact categorical, enumerated
    enumerated = estimates(TraceEnum_ELBO(particles, vectorize_particles=True, max_plate_nesting=1))
    guide.train()
    gaps = {}
    for tau in (2.0, 0.5, 0.05, 0.01):
        guide.temperature = tau
        mean, se = estimates(TraceMeanField_ELBO(particles, vectorize_particles=True))
        gaps[tau] = (mean - enumerated[0], math.hypot(se, enumerated[1]))
    # At a low temperature the relaxed estimate is the enumerated ELBO in expectation...
    gap, se = gaps[0.01]
    assert abs(gap) < 3 * se, gaps
    # ...and at high temperatures it is not: the gap shrinks as the temperature falls.
    for hot, cold in ((2.0, 0.5), (0.5, 0.05)):
        assert abs(gaps[hot][0]) - abs(gaps[cold][0]) > 3 * math.hypot(gaps[hot][1], gaps[cold][1])


def test_gumbel_argmax_is_scored_by_the_categorical_mass():
    logits = torch.tensor([[0.3, -1.2, 2.0], [1.0, 0.0, -1.0]])
    q = GumbelSoftmax(torch.tensor(0.5), logits=logits)
    y = q.rsample()
    expected = logits.log_softmax(-1).gather(-1, y.argmax(-1, keepdim=True)).squeeze(-1)
    assert torch.allclose(q.log_prob(y), expected)
    p = GumbelMaxCategorical(logits=torch.zeros(2, 3))
    assert torch.allclose(p.log_prob(y), torch.full((2,), -math.log(3)))
    kl = torch.distributions.kl_divergence(q, p)
    probs = logits.softmax(-1)
    assert torch.allclose(kl, (probs * (probs.log() + math.log(3))).sum(-1))


def test_temperature_schedule():
    schedule = TemperatureSchedule(initial=1.0, final=0.5, rate=1e-3)
    assert schedule.temperature(0) == 1.0
    assert schedule.temperature(100) == pytest.approx(math.exp(-0.1))
    assert schedule.temperature(10**6) == 0.5
    with pytest.raises(ValueError, match="0 < final <= initial"):
        TemperatureSchedule(initial=0.5, final=1.0)


class ConjugateMixture(nn.Module):
    r"""``y ~ Cat(pi)``, ``z | y ~ N(mu_y, s0^2 I)``, ``x | z ~ N(z, s^2 I)``: the evidence is
    :math:`\sum_y \pi_y N(x; \mu_y, (s_0^2 + s^2) I)` and ``p(z | x, y)`` is Gaussian."""

    def __init__(self, pi, mu, s0=0.8, s=0.5):
        super().__init__()
        self.pi, self.mu, self.s0, self.s = pi, mu, s0, s

    def forward(self, x):
        with data_plate(x):
            y = pyro.sample("y", GumbelMaxCategorical(probs=self.pi.expand(x.shape[0], -1)))
            z = pyro.sample("z", dist.Normal(y @ self.mu, self.s0).to_event(1))
            pyro.sample("x", dist.Normal(z, self.s).to_event(1), obs=x)

    def log_joint_y(self, x):
        """``log p(x, y)`` for every y, ``(B, C)``."""
        scale = math.sqrt(self.s0**2 + self.s**2)
        marginal = dist.Normal(self.mu, scale).to_event(1).log_prob(x.unsqueeze(-2))
        return self.pi.log() + marginal

    def posterior_z(self, x, y):
        var = 1 / (1 / self.s0**2 + 1 / self.s**2)
        return var * (y @ self.mu / self.s0**2 + x / self.s**2), math.sqrt(var)


class MixtureGuide(nn.Module):
    """``q(y | x)`` with fixed logits, ``q(z | x, y)`` the exact posterior (times a scale)."""

    def __init__(self, model, logits, scale_factor=1.0):
        super().__init__()
        self.model, self.logits, self.scale_factor = model, logits, scale_factor

    def forward(self, x):
        with data_plate(x):
            y = pyro.sample(
                "y",
                dist.OneHotCategorical(logits=self.logits.expand(x.shape[0], -1)),
                infer={"enumerate": "parallel"},
            )
            loc, scale = self.model.posterior_z(x, y)
            pyro.sample("z", dist.Normal(loc, scale * self.scale_factor).to_event(1))


@pytest.fixture
def mixture(float64):
    pi = torch.tensor([0.5, 0.3, 0.2])
    mu = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]])
    model = ConjugateMixture(pi, mu)
    x = 2.0 * torch.randn(40, 2, generator=torch.Generator().manual_seed(0))
    return model, x


def test_enumerated_evaluation_is_exact_with_the_exact_conditional_posterior(mixture):
    model, x = mixture
    logits = torch.tensor([0.4, -0.3, 1.0])  # any q(y | x): y is summed, not proposed
    guide = MixtureGuide(model, logits)
    log_joint = model.log_joint_y(x)
    log_evidence = torch.logsumexp(log_joint, -1)
    posterior_y = (log_joint - log_evidence.unsqueeze(-1)).exp()
    q = logits.softmax(-1)
    kl = (q * (q.log() - posterior_y.log())).sum(-1)
    for k in (1, 7):
        est = importance_log_likelihood(model, guide, {"x": x}, num_particles=k, pareto=False)
        # each weight is sum_y p(x, y): the estimate has no variance
        assert torch.allclose(est.log_likelihood, log_evidence, atol=1e-6)
        assert torch.allclose(est.ess, torch.full((40,), float(k)), atol=1e-6)
        # the ELBO is short of the evidence by exactly KL(q(y | x) || p(y | x))
        assert torch.allclose(est.elbo, log_evidence - kl, atol=1e-6)


def test_enumerated_evaluation_bounds_order_with_an_inexact_posterior(mixture):
    model, _ = mixture
    x = 2.0 * torch.randn(400, 2, generator=torch.Generator().manual_seed(1))
    guide = MixtureGuide(model, torch.zeros(3), scale_factor=3.0)  # too wide a proposal
    exact = torch.logsumexp(model.log_joint_y(x), -1)
    estimates = {
        k: importance_log_likelihood(model, guide, {"x": x}, num_particles=k, pareto=False, seed=k)
        for k in (1, 10, 1000)
    }
    # From the same draws, ELBO <= log w: Jensen over the enumerated values, point by point.
    assert bool((estimates[1].elbo <= estimates[1].log_likelihood + 1e-9).all())
    # In expectation ELBO <= L_1 < L_10 < L_1000 <= log p(x); compare per-point gaps to the
    # exact evidence, each step by more than three standard errors of the paired difference.
    gaps = {k: exact - est.log_likelihood for k, est in estimates.items()}

    def mean_and_se(values):
        return float(values.mean()), float(values.std() / math.sqrt(len(values)))

    for few, many in ((1, 10), (10, 1000)):
        mean, se = mean_and_se(gaps[few] - gaps[many])
        assert mean > 3 * se, (few, many, mean, se)
    mean, se = mean_and_se(gaps[1000])
    assert -3 * se < mean < 0.01, (mean, se)


def test_accuracy_is_invariant_to_relabelling_and_one_for_a_permutation():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=200)
    permutation = rng.permutation(5)
    assert clustering_accuracy(permutation[labels], labels) == 1.0
    assert match_clusters(permutation[labels], labels) == {int(permutation[c]): c for c in range(5)}
    noisy = np.where(rng.random(200) < 0.3, rng.integers(0, 5, size=200), labels)
    relabelled = permutation[noisy]
    assert clustering_accuracy(relabelled, labels) == clustering_accuracy(noisy, labels)


def test_accuracy_equals_the_best_of_all_matchings():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=120)
    clusters = rng.integers(0, 4, size=120)
    best = max(
        np.mean(np.asarray(perm)[clusters] == labels) for perm in itertools.permutations(range(4))
    )
    assert clustering_accuracy(clusters, labels) == pytest.approx(best)


def test_cluster_metrics_need_labels(digits):
    _, guide = small_pair()
    with pytest.raises(ValueError, match="need labels"):
        cluster_metrics(guide, {"x": binary_digits(digits, 5)})


def test_fit_records_clustering_metrics_and_the_temperature_schedule_resumes(digits, tmp_path):
    train, test = digits[0].subset(range(300)), digits[1].subset(range(100))
    schedule = TemperatureSchedule(1.0, 0.2, 1e-2)
    rows = {}
    for name, resume in (("whole", False), ("resumed", True)):
        model, guide = small_pair("gumbel", temperature=schedule)
        kwargs = dict(
            transform="dynamic",
            objective="meanfield",
            batch_size=50,
            progress=False,
            run_dir=tmp_path / name,
            history_metrics=lambda m, g, f: cluster_metrics(g, f),
        )
        if resume:
            fit(model, guide, train, test, epochs=2, **kwargs)
            model, guide = small_pair("gumbel", temperature=schedule)
        result = fit(model, guide, train, test, epochs=4, resume=resume, **kwargs)
        rows[name] = result.history
        assert guide.temperature == pytest.approx(schedule.temperature(4 * 6 - 1))

    def timeless(history):
        return [{k: v for k, v in row.items() if k != "train_seconds"} for row in history]

    assert timeless(rows["resumed"]) == timeless(rows["whole"])
    for row in rows["whole"]:
        assert 0 <= row["cluster_accuracy"] <= 1 and 0 <= row["cluster_nmi"] <= 1
        assert 0 <= row["cluster_entropy"] <= math.log(4) + 1e-6
    assert rows["whole"][-1]["train_elbo"] > rows["whole"][0]["train_elbo"]


def test_check_pair_reports_the_enumerated_cluster_site(digits):
    model, guide = small_pair()
    summary = check_pair(model, guide, {"x": binary_digits(digits, 5)})
    assert summary.enumerated_guide_sites == ["y"]
    assert summary.guide_enumeration_size == 4
    assert summary.latent_sites == ["y", "z"]


def test_importance_weighted_objectives_reject_the_enumerated_site(digits):
    model, guide = small_pair()
    with pytest.raises(ValueError, match="marked for enumeration"):
        make_objective("iwae", 5).loss(model, guide, binary_digits(digits, 5))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="unknown estimator"):
        GMVAEGuide(64, 4, 3, (16,), estimator="reinforce")
    with pytest.raises(ValueError, match="estimator='gumbel' only"):
        GMVAEGuide(64, 4, 3, (16,), temperature=TemperatureSchedule())
    with pytest.raises(ValueError, match="at least 2 clusters"):
        GaussianMixtureVAE(64, 1)
    model, guide = small_pair()
    with pytest.raises(ValueError, match=r"expects x of shape \(batch, 64\)"):
        model(torch.zeros(3, 8, 8))


def test_generate_gives_one_image_per_requested_cluster():
    model, _ = small_pair()
    images = model.generate(torch.tensor([0, 1, 2, 3, 3]))
    assert images.shape == (5, 64)
    assert bool(((images >= 0) & (images <= 1)).all())
