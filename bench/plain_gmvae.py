"""A plain-PyTorch Gaussian-mixture VAE, the reference ``compare_gmvae.py`` holds
pyro-aevb's GMVAE (``GaussianMixtureVAE`` + ``GMVAEGuide``, trained with
``TraceEnum_ELBO``) against.

Nothing here comes from ``pyro_aevb`` or ``pyro``; the caller loads and binarizes the
data with the library's functions so that both implementations see identical data.
The architecture, initialization, optimizer, data stream and estimator mirror the
library's default GMVAE pair (``pyro_aevb.pairs.GMVAE_PAIR``):

* prior ``y ~ Cat(1/C)``, ``z | y ~ N(loc(y), diag scale(y)^2)`` with ``loc`` and
  ``scale = softplus(.) + 1e-4`` linear in the one-hot ``y`` (``cluster_prior``);
* decoder ``z_dim -> 512 -> ReLU -> 512 -> ReLU -> 784`` logits, Bernoulli pixels;
* ``q(y | x)``: ``784 -> 512 -> ReLU -> 512 -> ReLU -> C`` logits (``cluster_logits``);
* ``q(z | x, y)``: ``[x, onehot(y)] -> 512 -> ReLU -> 512 -> ReLU``, then two
  ``Linear(512, z_dim)`` heads, ``loc`` and ``softplus(.) + 1e-4`` (``latent``);
* every ``Linear`` built with PyTorch's default initialization and then re-drawn
  Glorot-normal with zero biases, in the library's order (the model's layers, then
  the guide's), so that under the same seed both start from identical weights; the
  module names are the library's too, so the two ``state_dict`` s share their keys;
* Adam, minibatches of a fresh per-epoch permutation, dynamic binarization;
* the marginalizing estimator: the ``C`` clusters are summed out exactly in one
  batched pass over a leading cluster dimension, one reparameterized ``z`` per
  cluster and data point,
  ``ELBO = sum_c q(c | x) [log(1/C) + log p(z_c | c) + log p(x | z_c) - log q(c | x)
  - log q(z_c | x, c)]``, the quantity ``TraceEnum_ELBO`` computes for the library's pair.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import normalized_mutual_info_score
from torch import nn
from torch.nn import functional as F

from bench.plain import (
    PlainImportanceEstimate,
    bernoulli_log_likelihood,
    diagonal_normal_log_prob,
    epoch_batches,
    make_loss_step,
)


def mlp(sizes: Sequence[int], activate_output: bool = False) -> nn.Sequential:
    """``Linear -> ReLU`` for each hidden layer, then a final ``Linear`` (and a ReLU after
    it with ``activate_output``); the layout of the library's ``MLP``."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append(nn.Linear(n_in, n_out))
        if activate_output or i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def glorot_normal_(module: nn.Module) -> nn.Module:
    """Glorot-normal weights and zero biases for every ``Linear`` in ``module``."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_normal_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
    return module


class NormalHead(nn.Module):
    """``h -> (loc, softplus(.) + min_scale)``, two linear layers."""

    def __init__(self, in_dim: int, out_dim: int, min_scale: float = 1e-4):
        super().__init__()
        self.loc = nn.Linear(in_dim, out_dim)
        self.scale = nn.Linear(in_dim, out_dim)
        self.min_scale = min_scale

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.loc(h), F.softplus(self.scale(h)) + self.min_scale


class Generative(nn.Module):
    """``p(y) p(z | y) p(x | z)``: the per-cluster prior table and the decoder."""

    def __init__(self, x_dim: int, num_clusters: int, z_dim: int, hidden: Sequence[int]):
        super().__init__()
        self.num_clusters = num_clusters
        self.cluster_prior = NormalHead(num_clusters, z_dim)
        self.decoder = mlp([z_dim, *hidden, x_dim])
        glorot_normal_(self)


class Latent(nn.Module):
    """``q(z | x, y)`` from ``[x, onehot(y)]``: a ReLU trunk and a normal head."""

    def __init__(self, in_dim: int, z_dim: int, hidden: Sequence[int]):
        super().__init__()
        self.trunk = mlp([in_dim, *hidden], activate_output=True)
        self.head = NormalHead(hidden[-1], z_dim)

    def forward(self, xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.trunk(xy))


class Inference(nn.Module):
    """``q(y | x) q(z | x, y)``."""

    def __init__(self, x_dim: int, num_clusters: int, z_dim: int, hidden: Sequence[int]):
        super().__init__()
        self.num_clusters = num_clusters
        self.cluster_logits = mlp([x_dim, *hidden, num_clusters])
        self.latent = Latent(x_dim + num_clusters, z_dim, hidden)
        glorot_normal_(self)


def build_plain_gmvae(
    x_dim: int = 784,
    num_clusters: int = 10,
    z_dim: int = 64,
    hidden: Sequence[int] = (512, 512),
) -> tuple[Generative, Inference]:
    """``(model, encoder)``: the generative networks first, then the inference networks,
    each built layer by layer and then Glorot-initialized in the library's order."""
    model = Generative(x_dim, num_clusters, z_dim, hidden)
    encoder = Inference(x_dim, num_clusters, z_dim, hidden)
    return model, encoder


def cluster_terms(model: Generative, encoder: Inference, x: torch.Tensor, num_particles: int = 0):
    """The per-cluster terms of the marginalizing estimator, all clusters in one pass.

    :param x: binary data ``(B, D)``.
    :param num_particles: ``0`` for one ``z`` per cluster and data point (training);
        ``K >= 1`` for ``K`` draws per cluster and data point (evaluation).
    :returns: ``(log_joint, log_q_y)``: ``log_joint`` ``(C, B)`` (or ``(K, C, B)``) holds
        ``log(1/C) + log p(z_c | c) + log p(x | z_c) - log q(z_c | x, c)`` with
        ``z_c ~ q(z | x, c)``; ``log_q_y`` ``(C, B)`` holds ``log q(c | x)``.
    """
    num_clusters = encoder.num_clusters
    batch, x_dim = x.shape
    log_q_y = encoder.cluster_logits(x).log_softmax(-1).T  # (C, B)
    onehot = torch.eye(num_clusters, dtype=x.dtype, device=x.device)  # row c: cluster c
    # The first layer on [x, onehot(c)] as W_x x + W_y[:, c] + b, x multiplied once rather
    # than once per cluster: the same function, computed as the library's guide does.
    first, *rest = encoder.latent.trunk
    weight_x, weight_y = first.weight.split([x_dim, num_clusters], -1)
    hidden = F.linear(x, weight_x, first.bias) + weight_y.T[:, None, :]  # (C, B, H)
    for layer in rest:
        hidden = layer(hidden)
    loc, scale = encoder.latent.head(hidden)  # (C, B, L)
    shape = loc.shape if num_particles == 0 else (num_particles, *loc.shape)
    # Reparameterized draws: the gradient flows through loc and scale.
    z = loc + scale * torch.randn(shape, dtype=loc.dtype, device=loc.device)
    prior_loc, prior_scale = model.cluster_prior(onehot)  # (C, L)
    log_joint = (
        -math.log(num_clusters)
        + diagonal_normal_log_prob(z, prior_loc[:, None, :], prior_scale[:, None, :])
        + bernoulli_log_likelihood(model.decoder(z), x)
        - diagonal_normal_log_prob(z, loc, scale)
    )
    return log_joint, log_q_y


def elbo_per_point(model: Generative, encoder: Inference, x: torch.Tensor) -> torch.Tensor:
    """``sum_c q(c | x) [log p(x, c, z_c) - log q(c | x) - log q(z_c | x, c)]``, ``(B,)``."""
    log_joint, log_q_y = cluster_terms(model, encoder, x)
    return (log_q_y.exp() * (log_joint - log_q_y)).sum(0)


def negative_elbo(model: Generative, encoder: Inference, x_batch: torch.Tensor) -> torch.Tensor:
    """The training loss: minus the enumerated ELBO, averaged over the batch."""
    return -elbo_per_point(model, encoder, x_batch).mean()


def make_train_step(model: Generative, encoder: Inference, optimizer: torch.optim.Optimizer):
    """``step(x_batch) -> loss``: one Adam update on one binarized minibatch."""

    return make_loss_step(lambda x_batch: negative_elbo(model, encoder, x_batch), optimizer)


@dataclass
class PlainTrainResult:
    """What :func:`train_plain` returns."""

    model: Generative
    encoder: Inference
    #: mean training loss (minus the ELBO, nats per data point) of each epoch
    train_loss: list[float]
    #: wall-clock seconds spent in the training loop
    train_seconds: float
    #: wall-clock seconds of each epoch
    epoch_seconds: list[float]


def train_plain(
    train_x: torch.Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    num_clusters: int = 10,
    z_dim: int = 64,
    hidden: Sequence[int] = (512, 512),
) -> PlainTrainResult:
    """Train the plain GMVAE on raw intensities ``train_x`` ``(N, D)`` in ``[0, 1]``.

    The data stream follows ``pyro_aevb.fit``: a generator seeded with ``seed`` draws,
    at the start of every epoch, first the binarization ``Bernoulli(x)`` and then the
    permutation, so both implementations see the same minibatches. The
    reparameterization noise comes from the global RNG, seeded with ``seed`` too (its
    stream is not the library's: ``fit``'s checks consume draws before training).
    """
    torch.manual_seed(seed)
    model, encoder = build_plain_gmvae(train_x.shape[1], num_clusters, z_dim, hidden)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam([*model.parameters(), *encoder.parameters()], lr=lr)
    step = make_train_step(model, encoder, optimizer)
    generator = torch.Generator().manual_seed(seed)
    n_train = train_x.shape[0]
    batch_size = min(batch_size, n_train)
    steps_per_epoch = math.ceil(n_train / batch_size)
    model.train()
    encoder.train()
    losses, epoch_seconds = [], []
    start = time.perf_counter()
    for _ in range(epochs):
        t0 = time.perf_counter()
        total = sum(step(x_batch) for x_batch in epoch_batches(train_x, batch_size, generator))
        losses.append(total / steps_per_epoch)
        epoch_seconds.append(time.perf_counter() - t0)
    return PlainTrainResult(model, encoder, losses, time.perf_counter() - start, epoch_seconds)


@torch.no_grad()
def plain_importance_log_likelihood(
    model: Generative,
    encoder: Inference,
    test_x_binary: torch.Tensor,
    K: int = 100,
    batch_size: int = 100,
    max_rows: int = 20_000,
    seed: int = 1,
) -> PlainImportanceEstimate:
    """Importance-sampled ``log p(x)`` and the ELBO from the same draws, per data point.

    The clusters are summed out exactly (a stratified estimator): each particle draws
    one ``z`` per cluster, ``z_kc ~ q(z | x, c)``, and its weight is
    ``w_k = sum_c p(x, c, z_kc) / q(z_kc | x, c)``, an unbiased estimate of ``p(x)``; the
    library's ``evaluate`` uses the same estimator for guides that enumerate ``y``.

    :param test_x_binary: the binarized test set ``(N, D)``.
    :param K: particles per data point; each costs ``C`` decoder passes.
    :param batch_size: data points per pass.
    :param max_rows: rows (particles x clusters x points) per pass, the library's default.
    :param seed: seeds a private RNG stream; the caller's RNG state is restored.
    """
    if K < 1:
        raise ValueError(f"K must be at least 1, got {K}")
    flags = model.training, encoder.training
    model.eval()
    encoder.eval()
    chunk = max(1, max_rows // batch_size // encoder.num_clusters)
    log_likelihood, elbo = [], []
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for start in range(0, test_x_binary.shape[0], batch_size):
                x = test_x_binary[start : start + batch_size]
                log_w, elbo_k = [], []
                for k in range(0, K, chunk):
                    log_joint, log_q_y = cluster_terms(model, encoder, x, min(chunk, K - k))
                    log_w.append(torch.logsumexp(log_joint, 1))  # (k, B)
                    elbo_k.append((log_q_y.exp() * (log_joint - log_q_y)).sum(1))
                # float64 for the log-sum-exp and the mean over many terms
                log_w_all = torch.cat(log_w).double()  # (K, B)
                log_likelihood.append(torch.logsumexp(log_w_all, 0) - math.log(K))
                elbo.append(torch.cat(elbo_k).double().mean(0))
    finally:
        model.train(flags[0])
        encoder.train(flags[1])
    return PlainImportanceEstimate(torch.cat(log_likelihood), torch.cat(elbo), K)


@torch.no_grad()
def plain_cluster_probs(encoder: Inference, x: torch.Tensor, batch_size: int = 1000):
    """``q(y | x)`` ``(N, C)``."""
    flag = encoder.training
    encoder.eval()
    try:
        return torch.cat(
            [
                encoder.cluster_logits(x[i : i + batch_size]).softmax(-1)
                for i in range(0, x.shape[0], batch_size)
            ]
        )
    finally:
        encoder.train(flag)


def plain_cluster_metrics(encoder: Inference, x: torch.Tensor, labels: torch.Tensor) -> dict:
    """Clustering accuracy (Hungarian matching of clusters to labels), NMI (arithmetic
    normalization) and the mean entropy of ``q(y | x)`` (nats), for binary ``x``."""
    probs = plain_cluster_probs(encoder, x)
    assignments = probs.argmax(-1).numpy()
    labels = labels.numpy()
    counts = np.zeros((encoder.num_clusters, int(labels.max()) + 1), dtype=np.int64)
    np.add.at(counts, (assignments, labels), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1).mean()
    return {
        "cluster_accuracy": float(counts[rows, cols].sum() / counts.sum()),
        "cluster_nmi": float(normalized_mutual_info_score(labels, assignments)),
        "cluster_entropy": float(entropy),
    }
