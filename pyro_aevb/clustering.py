r"""How well a discrete latent clusters the data: accuracy under the best matching of
clusters to labels, normalized mutual information, and the entropy of :math:`q(y \mid x)`.

The clusters of an unsupervised model carry no names, so the accuracy first matches
clusters to labels one to one so as to maximize the number of agreeing points (the
Hungarian algorithm on the confusion matrix, Kuhn, 1955), the usual score of
clustering VAEs (e.g. Dilokthanakul et al., 2016). It is invariant to relabelling
the clusters and equals 1 exactly when the clusters are a relabelling of the labels.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch
from pyro import poutine
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import normalized_mutual_info_score

from .contexts import eval_mode, isolated
from .contract import call_arguments


def _counts(assignments, labels) -> np.ndarray:
    assignments = np.asarray(assignments, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if assignments.shape != labels.shape or assignments.ndim != 1:
        raise ValueError(
            f"need one cluster and one label per point, got shapes {assignments.shape} "
            f"and {labels.shape}"
        )
    if assignments.size == 0:
        raise ValueError("no points to score")
    if assignments.min() < 0 or labels.min() < 0:
        raise ValueError("clusters and labels must be non-negative integers")
    counts = np.zeros((assignments.max() + 1, labels.max() + 1), dtype=np.int64)
    np.add.at(counts, (assignments, labels), 1)
    return counts


def match_clusters(assignments, labels) -> dict[int, int]:
    """The one-to-one map cluster -> label that maximizes the agreeing points.

    With more clusters than labels (or fewer), only ``min`` of the two are matched.
    """
    counts = _counts(assignments, labels)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return {int(r): int(c) for r, c in zip(rows, cols, strict=True)}


def clustering_accuracy(assignments, labels) -> float:
    """Fraction of points whose cluster, mapped by :func:`match_clusters`, is their label."""
    counts = _counts(assignments, labels)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / counts.sum())


@torch.no_grad()
def cluster_probs(
    guide: Callable,
    fields: Mapping[str, torch.Tensor],
    site: str = "y",
    batch_size: int = 1000,
) -> torch.Tensor:
    """:math:`q(y \\mid x)` of the guide's categorical site ``site``, ``(N, C)``.

    Reads the distribution the guide puts at ``site`` (its ``probs``), batch by batch,
    in eval mode and without touching the caller's RNG or parameter store.
    """
    n = next(iter(fields.values())).shape[0]
    out = []
    with isolated(0), eval_mode(guide):
        for start in range(0, n, batch_size):
            batch = {k: v[start : start + batch_size] for k, v in fields.items()}
            trace = poutine.trace(guide).get_trace(**call_arguments(guide, batch, "guide"))
            if site not in trace.nodes or not hasattr(trace.nodes[site]["fn"], "probs"):
                raise ValueError(f"the guide has no categorical site '{site}'")
            out.append(trace.nodes[site]["fn"].probs.cpu())
    return torch.cat(out)


def cluster_metrics(
    guide: Callable, fields: Mapping[str, torch.Tensor], site: str = "y"
) -> dict[str, float]:
    """Clustering of ``fields["x"]`` by the most probable cluster of :math:`q(y \\mid x)`
    against ``fields["y"]`` (the labels, which the model does not see):

    * ``cluster_accuracy``: :func:`clustering_accuracy`;
    * ``cluster_nmi``: normalized mutual information (arithmetic normalization);
    * ``cluster_entropy``: mean entropy of :math:`q(y \\mid x)`, nats per data point
      (0 when every point is assigned with certainty, :math:`\\log C` when uniform).
    """
    if "y" not in fields:
        raise ValueError("clustering metrics need labels: the data have no field 'y'")
    # Labels are not an input of the guide, but call_arguments passes only what it takes.
    probs = cluster_probs(guide, fields, site)
    assignments = probs.argmax(-1).numpy()
    labels = fields["y"].cpu().numpy()
    entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1).mean()
    return {
        "cluster_accuracy": clustering_accuracy(assignments, labels),
        "cluster_nmi": float(normalized_mutual_info_score(labels, assignments)),
        "cluster_entropy": float(entropy),
    }
