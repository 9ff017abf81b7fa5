"""Figures for any pair: learning curves, generated samples, reconstructions, latent maps.

Samples and reconstructions are generic: they are the mean of the likelihood at
the model's observed site, with latents drawn from the prior (samples) or from
the guide (reconstructions), so they work for any pair that follows the contract.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import matplotlib.pyplot as plt
import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from .contexts import eval_mode, isolated
from .contract import call_arguments


def _observed_mean(trace, site: str | None) -> torch.Tensor:
    observed = [
        n
        for n, s in trace.nodes.items()
        if s["type"] == "sample" and s["is_observed"] and not site_is_subsample(s)
    ]
    if site is None and len(observed) > 1:
        # A sequence model observes one site per step (x_1 .. x_T, in trace order):
        # stack their means into (B, T, D) when they agree in shape.
        means = [trace.nodes[n]["fn"].mean for n in observed]
        if all(m.shape == means[0].shape for m in means):
            return torch.stack(means, dim=-2)
    name = site or observed[-1]
    return trace.nodes[name]["fn"].mean


@torch.no_grad()
def prior_predictive_mean(
    model: Callable, batch: Mapping[str, torch.Tensor], site: str | None = None, seed: int = 0
) -> torch.Tensor:
    """Mean of ``p(x | z)`` with ``z`` drawn from the prior, one per row of ``batch``.

    The batch only fixes shapes and conditioning inputs (such as labels); the
    observed values do not enter. Shape of ``batch["x"]``.
    """
    with isolated(seed), eval_mode(model):
        trace = poutine.trace(model).get_trace(**call_arguments(model, batch, "model"))
    return _observed_mean(trace, site)


@torch.no_grad()
def reconstruction_mean(
    model: Callable,
    guide: Callable,
    batch: Mapping[str, torch.Tensor],
    site: str | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Mean of ``p(x | z)`` with ``z ~ q(z | x)``: the reconstruction of each data point."""
    with isolated(seed), eval_mode(model, guide):
        guide_trace = poutine.trace(guide).get_trace(**call_arguments(guide, batch, "guide"))
        trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            **call_arguments(model, batch, "model")
        )
    return _observed_mean(trace, site)


@torch.no_grad()
def latent_means(
    guide: Callable, batch: Mapping[str, torch.Tensor], site: str = "z"
) -> torch.Tensor:
    """Mean of ``q(site | x)`` for each data point, shape ``(B, L)``."""
    with pyro.get_param_store().scope(), eval_mode(guide):
        trace = poutine.trace(guide).get_trace(**call_arguments(guide, batch, "guide"))
    return trace.nodes[site]["fn"].mean


def image_grid(
    images: torch.Tensor,
    image_shape: Sequence[int],
    ncols: int = 10,
    title: str | None = None,
    ax=None,
    row_titles: Sequence[str] | None = None,
):
    """Show ``images`` (``(n, prod(image_shape))`` or ``(n, *image_shape)``) as a grid,
    optionally with a title to the left of each row."""
    images = images.detach().cpu().reshape(-1, *image_shape)
    n = images.shape[0]
    nrows = math.ceil(n / ncols)
    h, w = image_shape
    # 0 is white under the reversed grey map: white gaps between images.
    canvas = torch.zeros(nrows * (h + 1) - 1, ncols * (w + 1) - 1)
    for i in range(n):
        r, c = divmod(i, ncols)
        canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = images[i]
    if ax is None:
        margin = 1.6 if row_titles else 0.0
        size = (ncols * 0.6 + margin, nrows * 0.6 + (0.4 if title else 0))
        fig, ax = plt.subplots(figsize=size)
    ax.imshow(canvas.numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    for r, text in enumerate(row_titles or []):
        ax.text(-1, r * (h + 1) + h / 2, text, ha="right", va="center", fontsize=8)
    if title:
        ax.set_title(title)
    return ax.figure


def _history_axis(history: Sequence[Mapping]) -> tuple[list, str]:
    """Epochs when the history has one row per epoch, else steps (``eval_every``)."""
    epochs = [row["epoch"] for row in history]
    if len(set(epochs)) == len(epochs) or "step" not in history[0]:
        return epochs, "epoch"
    return [row["step"] for row in history], "step"


def learning_curve(history: Sequence[Mapping], ax=None, final: Mapping | None = None):
    """Training loss and test ELBO per epoch (or per row), in nats per data point, and
    the test log-likelihood where it was computed: per row for a model with exact
    evidence (``test_log_evidence``), and the evaluation's importance-sampling estimate
    after training (``final``: metrics with ``test_log_likelihood``, its ``_se`` and
    ``log_likelihood_particles``) as a point with its two-s.e. bar at the last row."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 4))
    if not history:
        return ax.figure
    xs, xlabel = _history_axis(history)
    ax.plot(xs, [row["train_elbo"] for row in history], label="train ELBO (running)")
    if "test_elbo" in history[0]:
        ax.plot(xs, [row["test_elbo"] for row in history], label="test ELBO")
    if "test_log_evidence" in history[0]:
        evidence = [row["test_log_evidence"] for row in history]
        ax.plot(xs, evidence, label="test log-likelihood (exact)")
    if final is not None and final.get("test_log_likelihood") is not None:
        k = final.get("log_likelihood_particles")
        ax.errorbar(
            [xs[-1]],
            [final["test_log_likelihood"]],
            yerr=[2 * final.get("test_log_likelihood_se", 0.0)],
            fmt="o",
            color="k",
            capsize=3,
            label="test log-likelihood (IS" + (f", K = {k})" if k else ")"),
        )
    ax.set_xlabel(xlabel)
    ax.set_ylabel("nats per data point")
    ax.legend()
    ax.grid(alpha=0.3)
    return ax.figure


def clustering_curves(history: Sequence[Mapping]):
    """Test clustering accuracy, NMI and the entropy of q(y | x) per history row, from
    the columns :func:`pyro_aevb.clustering.cluster_metrics` writes."""
    steps, label = _history_axis(history)
    columns = [
        ("cluster_accuracy", "clustering accuracy"),
        ("cluster_nmi", "normalized mutual information"),
        ("cluster_entropy", "entropy of q(y | x), nats"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, (key, title) in zip(axes, columns, strict=True):
        ax.plot(steps, [row[key] for row in history], marker=".")
        ax.set_xlabel(label)
        ax.set_title(title)
    fig.tight_layout()
    return fig


def evidence_curve(
    history: Sequence[Mapping], true_log_evidence: float | None = None, ax=None
):
    """Test ELBO and exact test log-evidence across training, nats per data point.

    Rows from guide-only phases of an alternating (EM) schedule are shaded grey,
    as in Yang's tutorial (figure of section 5.2, experiment 2).
    """
    if ax is None:
        fig, ax = plt.subplots(figsize=(7, 4))
    xs, xlabel = _history_axis(history)
    if history and "phase" in history[0]:
        previous = 0
        for x, row in zip(xs, history, strict=True):
            if row["phase"] == "guide":
                ax.axvspan(previous, x, color="0.88", lw=0)
            previous = x
    ax.plot(xs, [row["test_elbo"] for row in history], color="tab:red", label="test ELBO")
    if history and "test_log_evidence" in history[0]:
        evidence = [row["test_log_evidence"] for row in history]
        ax.plot(xs, evidence, color="tab:green", label="test log-evidence (exact)")
    if true_log_evidence is not None:
        ax.axhline(true_log_evidence, color="k", ls=":", label="true model's log-evidence")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("nats per data point")
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    return ax.figure


def predictive_check(data: torch.Tensor, generated: torch.Tensor, axes=None):
    """Data and generated points on every pair of the first three coordinates."""
    data, generated = data.detach().cpu(), generated.detach().cpu()
    dims = min(3, data.shape[1])
    pairs = [(i, j) for i in range(dims) for j in range(i + 1, dims)]
    if axes is None:
        fig, axes = plt.subplots(1, len(pairs), figsize=(3.6 * len(pairs), 3.4))
    if not hasattr(axes, "__len__"):  # a single Axes
        axes = [axes]
    for ax, (i, j) in zip(axes, pairs, strict=True):
        ax.scatter(data[:, i], data[:, j], s=3, alpha=0.5, label="test data")
        ax.scatter(generated[:, i], generated[:, j], s=3, alpha=0.5, label="generated")
        ax.set_xlabel(f"$x_{i + 1}$")
        ax.set_ylabel(f"$x_{j + 1}$")
    axes[0].legend(markerscale=3)
    axes[0].figure.tight_layout()
    return axes[0].figure


def spread_over_classes(labels: torch.Tensor | None, n: int, total: int) -> torch.Tensor:
    """Indices of ``n`` of ``total`` data points that cycle through the classes.

    With labels, the j-th pick is the next unused point of class ``j mod C`` (in
    order of appearance), so 30 picks of ten classes show three of each; classes with
    too few points are skipped. Without labels, ``n`` evenly spaced points.
    """
    n = min(n, total)
    if labels is None:
        return torch.linspace(0, total - 1, n).round().long().unique()
    labels = labels.reshape(total, -1)[:, 0] if labels.dim() > 1 else labels
    queues = [(labels == c).nonzero().flatten().tolist() for c in labels.unique().tolist()]
    picks = []
    while len(picks) < n and any(queues):
        for queue in queues:
            if queue and len(picks) < n:
                picks.append(queue.pop(0))
    return torch.tensor(picks, dtype=torch.long)


def reconstructions_figure(
    originals: torch.Tensor, reconstructions: torch.Tensor, image_shape, ncols: int = 10
):
    """Originals (top row of each pair) over their reconstructions."""
    n = min(originals.shape[0], ncols * 3)
    rows = []
    for start in range(0, n, ncols):
        rows += [originals[start : start + ncols], reconstructions[start : start + ncols]]
    return image_grid(
        torch.cat(rows),
        image_shape,
        ncols=ncols,
        title="data (odd rows) and reconstructions (even rows)",
    )


def latent_map(means: torch.Tensor, labels: torch.Tensor | None = None, ax=None):
    """The first two principal components of the guide's means, coloured by label."""
    means = means.detach().cpu()
    centered = means - means.mean(0)
    if means.shape[1] > 2:
        _, _, v = torch.linalg.svd(centered, full_matrices=False)
        coords = centered @ v[:2].T
        xlabel, ylabel = "PC 1 of E_q[z]", "PC 2 of E_q[z]"
    else:
        coords = centered
        xlabel, ylabel = "E_q[z_1]", "E_q[z_2]"
    if ax is None:
        fig, ax = plt.subplots(figsize=(5.5, 5))
    sc = ax.scatter(
        coords[:, 0],
        coords[:, 1],
        c=None if labels is None else labels.cpu(),
        cmap="tab10",
        s=6,
        alpha=0.8,
    )
    if labels is not None:
        ax.figure.colorbar(sc, ax=ax, label="label")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    return ax.figure


def row_by_row_generation(probs: torch.Tensor, rows: torch.Tensor, ncols: int = 7, every: int = 1):
    """One sequence generated row by row, as by ``VRNN.generate_rows``: panel ``t`` shows
    the rows sampled before step ``t``, the probabilities of row ``t`` given them
    (framed in red) and blank rows below; a last panel shows the finished sample.

    :param probs: each row's Bernoulli means given the sampled past, ``(T, D)`` (or
        ``(1, T, D)``).
    :param rows: the sampled rows, same shape.
    :param every: draw every ``every``-th step (and the last one).
    """
    probs = probs.detach().cpu().reshape(-1, probs.shape[-1])
    rows = rows.detach().cpu().reshape(probs.shape)
    steps = probs.shape[0]
    shown = sorted(set(range(0, steps, max(1, every))) | {steps - 1})
    panels = len(shown) + 1
    nrows = math.ceil(panels / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 1.2, nrows * 1.35), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, t in zip(axes.flat, shown, strict=False):
        canvas = torch.zeros_like(probs)
        canvas[:t] = rows[:t]
        canvas[t] = probs[t]
        ax.imshow(canvas.numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
        width = probs.shape[1]
        ax.add_patch(plt.Rectangle((-0.5, -0.5), width, steps, fill=False, ec="0.8", lw=0.8))
        ax.add_patch(plt.Rectangle((-0.5, t - 0.5), width, 1, fill=False, ec="tab:red", lw=1.2))
        ax.set_title(f"t = {t + 1}", fontsize=8)
    last = axes.flat[len(shown)]
    last.imshow(rows.numpy(), cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    last.set_title("sample", fontsize=8)
    fig.suptitle("generation row by row: sampled rows above, p(row t | past) framed")
    fig.tight_layout()
    return fig


def save(fig, path) -> None:
    """Save and close a figure."""
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
