"""How much a conditional model (the CVAE) uses its labels, by importance sampling."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import torch

from .particles.estimators import importance_log_likelihood


@torch.no_grad()
def label_usage(
    model: Callable,
    guide: Callable,
    fields: Mapping[str, torch.Tensor],
    num_particles: int = 1000,
    label_field: str = "y",
    batch_size: int = 100,
    seed: int = 0,
    true_log_likelihood: torch.Tensor | None = None,
) -> dict:
    r"""How much a conditional model uses its labels: the importance-sampled
    :math:`\log p(x \mid y)` with the true labels and with the labels shuffled
    across data points (a seeded permutation, which keeps the class frequencies).

    A model that ignores ``y`` scores the same on both; the difference (nats per
    data point) is what the label is worth to it. Returns ``log_likelihood_true_labels``,
    ``log_likelihood_shuffled_labels``, their standard errors and ``label_gain``.

    :param true_log_likelihood: the per-point estimate with the true labels, if already
        computed with the same ``num_particles``, ``batch_size`` and stream (that of
        :func:`evaluate` with the same ``seed``): it is used instead of drawn again.
    """
    if label_field not in fields:
        raise ValueError(f"label_usage needs a '{label_field}' field in the data")
    labels = fields[label_field]
    perm = torch.randperm(labels.shape[0], generator=torch.Generator().manual_seed(seed))
    shuffled = dict(fields, **{label_field: labels[perm.to(labels.device)]})
    estimate = lambda data: (
        importance_log_likelihood(
            model, guide, data, num_particles, batch_size, pareto=False, seed=seed + 1
        ).log_likelihood
    )
    true = true_log_likelihood if true_log_likelihood is not None else estimate(fields)
    out = {}
    for name, ll in (("true_labels", true), ("shuffled_labels", estimate(shuffled))):
        out[f"log_likelihood_{name}"] = float(ll.mean())
        out[f"log_likelihood_{name}_se"] = float(ll.std() / math.sqrt(ll.numel()))
    out["label_gain"] = out["log_likelihood_true_labels"] - out["log_likelihood_shuffled_labels"]
    out["label_usage_particles"] = int(num_particles)
    return out
