"""The pieces the plain-PyTorch baselines share: densities, the training data stream, the
loss step and the importance estimate's result.

The baselines (:mod:`bench.plain_vae`, :mod:`bench.plain_gmvae`) are written without the
library on purpose, so that they check it; these helpers are plain PyTorch too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.nn import functional as F

LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """``log N(z; 0, I)`` summed over the last dimension."""
    return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)


def diagonal_normal_log_prob(z: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor):
    """``log N(z; loc, diag(scale^2))`` summed over the last dimension."""
    return (-0.5 * ((z - loc) / scale).pow(2) - scale.log() - 0.5 * LOG_2PI).sum(-1)


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``log p(x | z)`` of independent Bernoulli pixels, summed over the pixels."""
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(
        -1
    )


def make_loss_step(loss_fn: Callable[[torch.Tensor], torch.Tensor], optimizer):
    """``step(x_batch) -> loss``: one update of ``optimizer`` on ``loss_fn(x_batch)``."""

    def step(x_batch: torch.Tensor) -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(x_batch)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def epoch_batches(
    train_x: torch.Tensor, batch_size: int, generator: torch.Generator
) -> Iterator[torch.Tensor]:
    """One epoch's binarized minibatches, in ``pyro_aevb.fit``'s order: ``generator``
    draws first the binarization ``Bernoulli(x)`` of the whole training set, then the
    permutation, so a baseline sees the same minibatches as the library."""
    x_binary = torch.bernoulli(train_x, generator=generator)
    n_train = train_x.shape[0]
    perm = torch.randperm(n_train, generator=generator)
    for i in range(math.ceil(n_train / batch_size)):
        yield x_binary[perm[i * batch_size : (i + 1) * batch_size]]


@dataclass
class PlainImportanceEstimate:
    """Per-data-point estimates, each ``(N,)`` float64, nats: ``log_likelihood`` is
    ``log (1/K) sum_k w_k`` (the importance-sampled log-likelihood, an IWAE bound) and
    ``elbo`` the ELBO estimated from the same draws."""

    log_likelihood: torch.Tensor
    elbo: torch.Tensor
    num_particles: int
