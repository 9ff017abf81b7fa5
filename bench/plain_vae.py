"""A plain-PyTorch VAE, the reference that ``compare_vae.py`` holds pyro-aevb against.

Nothing here comes from ``pyro_aevb`` except the data (loaded and binarized by the
caller with the library's functions, so both implementations see identical data).
The architecture, initialization, optimizer, data stream and estimator mirror the
library's default VAE pair (``pyro_aevb.pairs.VAE_PAIR``):

* decoder ``20 -> 500 -> ReLU -> 500 -> ReLU -> 784`` logits, independent Bernoulli pixels;
* encoder ``784 -> 500 -> ReLU -> 500 -> ReLU``, then two ``Linear(500, 20)`` heads,
  ``loc`` and ``scale = softplus(.) + 1e-4``;
* prior ``N(0, I)``, default ``nn.Linear`` initialization;
* Adam, minibatches of a fresh per-epoch permutation, dynamic binarization
  (``x_bin ~ Bernoulli(x)`` redrawn every epoch);
* one reparameterized sample per data point and the Monte Carlo ELBO
  ``log p(z) + log p(x | z) - log q(z | x)``, as Pyro's ``Trace_ELBO`` (the default;
  ``train_plain(loss=...)`` also trains with the analytic KL, IWAE or DReG).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from bench.plain import (
    PlainImportanceEstimate,
    bernoulli_log_likelihood,
    diagonal_normal_log_prob,
    epoch_batches,
    make_loss_step,
    standard_normal_log_prob,
)


class Decoder(nn.Module):
    """``z -> logits`` of ``p(x | z)``: ``z_dim -> hidden... -> x_dim``, ReLU in between."""

    def __init__(self, z_dim: int = 20, hidden: tuple[int, ...] = (500, 500), x_dim: int = 784):
        super().__init__()
        sizes = [z_dim, *hidden, x_dim]
        layers: list[nn.Module] = []
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(n_in, n_out))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


class Encoder(nn.Module):
    """``x -> (loc, scale)`` of ``q(z | x)``: an MLP trunk with ReLU after every layer,
    then separate linear heads for the mean and the (softplus) standard deviation."""

    def __init__(
        self,
        x_dim: int = 784,
        hidden: tuple[int, ...] = (500, 500),
        z_dim: int = 20,
        min_scale: float = 1e-4,
    ):
        super().__init__()
        sizes = [x_dim, *hidden]
        layers: list[nn.Module] = []
        for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(n_in, n_out), nn.ReLU()]
        self.trunk = nn.Sequential(*layers)
        self.loc = nn.Linear(hidden[-1], z_dim)
        self.scale = nn.Linear(hidden[-1], z_dim)
        # The floor keeps log q(z | x) finite when the softplus underflows.
        self.min_scale = min_scale

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(x)
        return self.loc(h), F.softplus(self.scale(h)) + self.min_scale


def build_plain_vae(
    x_dim: int = 784, z_dim: int = 20, hidden: tuple[int, ...] = (500, 500)
) -> tuple[Encoder, Decoder]:
    """``(encoder, decoder)`` with default ``nn.Linear`` initialization.

    The decoder is built first and the encoder's layers in the same order as the
    library's pair (model before guide, trunk before the ``loc`` and ``scale``
    heads), so after the same ``torch.manual_seed`` both start from identical weights.
    """
    decoder = Decoder(z_dim, hidden, x_dim)
    encoder = Encoder(x_dim, hidden, z_dim)
    return encoder, decoder


def log_weights(encoder: Encoder, decoder: Decoder, x: torch.Tensor, num_particles: int = 0):
    """Log importance weights ``log p(x, z) - log q(z | x)`` with ``z ~ q(z | x)``.

    :param x: binary data ``(B, D)``.
    :param num_particles: ``0`` for one sample per data point, shape ``(B,)`` (the
        training ELBO); ``K >= 1`` for ``K`` samples, shape ``(K, B)``.
    """
    loc, scale = encoder(x)
    shape = loc.shape if num_particles == 0 else (num_particles, *loc.shape)
    # Reparameterized draw: the gradient flows through loc and scale.
    z = loc + scale * torch.randn(shape, dtype=loc.dtype, device=loc.device)
    return (
        standard_normal_log_prob(z)
        + bernoulli_log_likelihood(decoder(z), x)
        - diagonal_normal_log_prob(z, loc, scale)
    )


def negative_elbo(encoder: Encoder, decoder: Decoder, x_batch: torch.Tensor) -> torch.Tensor:
    """The training loss: minus the one-sample Monte Carlo ELBO, averaged over the batch."""
    return -log_weights(encoder, decoder, x_batch).mean()


def negative_elbo_analytic_kl(
    encoder: Encoder, decoder: Decoder, x_batch: torch.Tensor
) -> torch.Tensor:
    """Minus the ELBO with the Gaussian KL in closed form, averaged over the batch:
    ``-(log p(x | z) - KL(q(z | x) || N(0, I)))`` with one reparameterized ``z``, the
    estimator of Pyro's ``TraceMeanField_ELBO`` (Kingma & Welling, 2014, eq. 10)."""
    loc, scale = encoder(x_batch)
    z = loc + scale * torch.randn_like(loc)
    kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1).sum(-1) - scale.log().sum(-1)
    return -(bernoulli_log_likelihood(decoder(z), x_batch) - kl).mean()


def negative_iwae(
    encoder: Encoder, decoder: Decoder, x_batch: torch.Tensor, num_particles: int
) -> torch.Tensor:
    """Minus the importance-weighted bound of Burda et al. (2016), averaged over the
    batch: ``-mean_i log (1/K) sum_k w_ik``, differentiated through the samples."""
    log_w = log_weights(encoder, decoder, x_batch, num_particles)  # (K, B)
    return -(torch.logsumexp(log_w, 0) - math.log(num_particles)).mean()


def negative_iwae_dreg(
    encoder: Encoder, decoder: Decoder, x_batch: torch.Tensor, num_particles: int
) -> torch.Tensor:
    """Minus the importance-weighted bound with the doubly reparameterized gradient of
    Tucker et al. (2019) for the encoder.

    The value is that of :func:`negative_iwae`. Its gradient: for the decoder,
    ``sum_k w~_k grad log w_k`` (normalized weights ``w~``, the IWAE gradient); for the
    encoder, ``sum_k w~_k^2 (d log w_k / d z_k)(d z_k / d phi)``, the path derivative
    with ``log q`` evaluated at stopped (detached) distribution parameters. Both come from
    one backward pass of ``sum_k w~_k log w_k``: a hook on ``z`` multiplies the gradient
    reaching the samples by ``w~_k`` once more.
    """
    loc, scale = encoder(x_batch)
    z = loc + scale * torch.randn((num_particles, *loc.shape), dtype=loc.dtype, device=loc.device)
    log_w = (
        standard_normal_log_prob(z)
        + bernoulli_log_likelihood(decoder(z), x_batch)
        - diagonal_normal_log_prob(z, loc.detach(), scale.detach())
    )  # (K, B)
    weights = torch.softmax(log_w.detach(), 0)
    if z.requires_grad:
        z.register_hook(lambda grad: grad * weights.unsqueeze(-1))
    surrogate = (weights * log_w).sum(0)
    bound = torch.logsumexp(log_w.detach(), 0) - math.log(num_particles)
    # the bound's value, the surrogate's gradient
    return -(bound + surrogate - surrogate.detach()).mean()


#: the training losses :func:`train_plain` knows, each ``(encoder, decoder, x_batch, K)``
#: to a batch-mean loss in nats per data point
LOSSES = {
    "elbo": lambda encoder, decoder, x, K: negative_elbo(encoder, decoder, x),
    "analytic_kl": lambda encoder, decoder, x, K: negative_elbo_analytic_kl(encoder, decoder, x),
    "iwae": negative_iwae,
    "dreg": negative_iwae_dreg,
}


def make_train_step(
    encoder: Encoder,
    decoder: Decoder,
    optimizer: torch.optim.Optimizer,
    loss: str = "elbo",
    num_particles: int = 1,
):
    """``step(x_batch) -> loss``: one Adam update on one binarized minibatch.

    :param loss: a key of :data:`LOSSES`: ``"elbo"`` (Monte Carlo KL, Pyro's
        ``Trace_ELBO``), ``"analytic_kl"`` (closed-form KL, ``TraceMeanField_ELBO``),
        ``"iwae"`` or ``"dreg"`` with ``num_particles`` samples.
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown plain loss {loss!r}; choose one of {sorted(LOSSES)}")
    loss_fn = LOSSES[loss]
    return make_loss_step(
        lambda x_batch: loss_fn(encoder, decoder, x_batch, num_particles), optimizer
    )


@dataclass
class PlainTrainResult:
    """What :func:`train_plain` returns."""

    encoder: Encoder
    decoder: Decoder
    #: mean training loss (minus the ELBO, nats per data point) of each epoch
    train_loss: list[float]
    #: wall-clock seconds spent in the training loop
    train_seconds: float


def train_plain(
    train_x: torch.Tensor,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    z_dim: int = 20,
    hidden: tuple[int, ...] = (500, 500),
    loss: str = "elbo",
    num_particles: int = 1,
    noise_seed: int | None = None,
) -> PlainTrainResult:
    """Train the plain VAE on raw intensities ``train_x`` ``(N, D)`` in ``[0, 1]``.

    The data stream follows ``pyro_aevb.fit``: a generator seeded with ``seed``
    draws, at the start of every epoch, first the binarization ``Bernoulli(x)`` and
    then the permutation, so both implementations see the same minibatches. The
    reparameterization noise comes from the global RNG, seeded with ``seed`` too
    (its stream is not the library's: Pyro's checks consume draws before training).
    ``loss`` and ``num_particles`` choose the training loss (see :func:`make_train_step`);
    ``noise_seed`` (default ``seed``) seeds the global RNG that draws the noise.
    """
    torch.manual_seed(seed)
    encoder, decoder = build_plain_vae(train_x.shape[1], z_dim, hidden)
    torch.manual_seed(seed if noise_seed is None else noise_seed)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=lr)
    step = make_train_step(encoder, decoder, optimizer, loss, num_particles)
    generator = torch.Generator().manual_seed(seed)
    n_train = train_x.shape[0]
    steps_per_epoch = math.ceil(n_train / batch_size)
    encoder.train()
    decoder.train()
    losses = []
    start = time.perf_counter()
    for _ in range(epochs):
        total = sum(step(x_batch) for x_batch in epoch_batches(train_x, batch_size, generator))
        losses.append(total / steps_per_epoch)
    return PlainTrainResult(encoder, decoder, losses, time.perf_counter() - start)


@torch.no_grad()
def plain_importance_log_likelihood(
    encoder: Encoder,
    decoder: Decoder,
    test_x_binary: torch.Tensor,
    K: int = 1000,
    batch_size: int = 100,
    particle_chunk: int = 200,
    seed: int = 1,
) -> PlainImportanceEstimate:
    """Importance-sampled ``log p(x)`` per data point with ``q(z | x)`` as proposal.

    :param test_x_binary: the binarized test set ``(N, D)``.
    :param K: importance samples per data point.
    :param batch_size: data points per pass.
    :param particle_chunk: particles per pass; memory is bounded by
        ``particle_chunk * batch_size`` rows of the widest layer (784 logits), and
        only the ``K x batch_size`` log-weights of one batch are kept.
    :param seed: seeds a private RNG stream; the caller's RNG state is restored.
    """
    if K < 1:
        raise ValueError(f"K must be at least 1, got {K}")
    flags = encoder.training, decoder.training
    encoder.eval()
    decoder.eval()
    log_likelihood, elbo = [], []
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for start in range(0, test_x_binary.shape[0], batch_size):
                x = test_x_binary[start : start + batch_size]
                chunks = [
                    log_weights(encoder, decoder, x, min(particle_chunk, K - k))
                    for k in range(0, K, particle_chunk)
                ]
                # float64 for the log-sum-exp and the mean over up to thousands of terms
                log_w = torch.cat(chunks).double()  # (K, B)
                log_likelihood.append(torch.logsumexp(log_w, 0) - math.log(K))
                elbo.append(log_w.mean(0))
    finally:
        encoder.train(flags[0])
        decoder.train(flags[1])
    return PlainImportanceEstimate(torch.cat(log_likelihood), torch.cat(elbo), K)
