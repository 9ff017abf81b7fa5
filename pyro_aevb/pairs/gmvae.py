"""The Gaussian-mixture VAE of the tutorial paper (section 5.5), whose discrete latent
clusters the data: its own metrics are the clustering scores against the labels the model
never sees, per history row and at the end, and its figure a grid of samples per cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch

from .. import plots
from ..clustering import cluster_metrics, cluster_probs, match_clusters
from ..data.dataset import Dataset
from ..evaluation import prepare_fields
from .options import ARCHITECTURE, HIDDEN, LATENT_DIM, LIKELIHOOD
from .registry import register_pair
from .spec import Option, PairSpec
from .vae import PAIR as VAE_PAIR
from .vae import view_for

#: the objective each estimator trains with
OBJECTIVES = {"enumerate": "enum", "gumbel": "meanfield"}

ESTIMATOR = Option(
    "sum the clusters out (enumerate) or draw Gumbel-softmax codes (gumbel)",
    choices=sorted(OBJECTIVES),
)
TEMPERATURE = Option(
    "with --estimator gumbel: tau = max(FINAL, INITIAL exp(-RATE step)); default 1 0.5 1e-4",
    type=float,
    nargs=3,
    metavar=("INITIAL", "FINAL", "RATE"),
    to_config=lambda words: dict(zip(("initial", "final", "rate"), words, strict=True)),
)


def build(
    train: Dataset,
    num_clusters: Annotated[
        int, Option("C, the number of clusters", flag="--clusters", type=int, minimum=1)
    ] = 10,
    z_dim: Annotated[int, LATENT_DIM] = 64,
    hidden: Annotated[tuple[int, ...], HIDDEN] = (512, 512),
    likelihood: Annotated[str | None, LIKELIHOOD] = None,
    estimator: Annotated[str, ESTIMATOR] = "enumerate",
    temperature: Annotated[dict | None, TEMPERATURE] = None,
    architecture: Annotated[str, ARCHITECTURE] = "mlp",
):
    """``GaussianMixtureVAE`` with a ``GMVAEGuide``; ``temperature`` holds the
    keyword arguments of a :class:`~pyro_aevb.relaxed.TemperatureSchedule`."""
    from ..guides import GMVAEGuide
    from ..models import GaussianMixtureVAE
    from ..relaxed import TemperatureSchedule

    x_dim = train.num_features
    schedule = TemperatureSchedule(**temperature) if temperature else None
    if architecture == "conv":  # on images (N, H, W), the view view_for names
        from ..guides import ConvGMVAEGuide
        from ..models import ConvGaussianMixtureVAE

        shape = tuple(train.x.shape[1:])
        model = ConvGaussianMixtureVAE(shape, num_clusters, z_dim, hidden, likelihood)
        return model, ConvGMVAEGuide(shape, num_clusters, z_dim, hidden, estimator, schedule)
    model = GaussianMixtureVAE(x_dim, num_clusters, z_dim, hidden, likelihood)
    guide = GMVAEGuide(x_dim, num_clusters, z_dim, hidden, estimator, schedule)
    return model, guide


def configure(config: dict, overrides: dict) -> None:
    """The estimator picks the objective; a temperature needs Gumbel-softmax draws."""
    estimator = config["architecture"]["estimator"]
    if estimator not in OBJECTIVES:
        raise ValueError(f"unknown estimator '{estimator}'; choose one of {sorted(OBJECTIVES)}")
    wanted = OBJECTIVES[estimator]
    if overrides.get("objective") is None:
        config["objective"] = wanted
    elif config["objective"] != wanted:
        raise ValueError(
            f"the GMVAE's '{estimator}' estimator trains with objective '{wanted}', not "
            f"'{config['objective']}'"
        )
    if config["architecture"].get("temperature") and estimator != "gumbel":
        raise ValueError("--temperature applies to --estimator gumbel only")


def rows_per_point(config: dict) -> int:
    """Enumeration runs the decoder once per cluster."""
    from ..objectives import capabilities_of

    enumerates = capabilities_of(config["objective"]).enumerates
    return int(config["architecture"]["num_clusters"]) if enumerates else 1


def history_metrics(model, guide, test_fields) -> dict:
    return cluster_metrics(guide, test_fields) if "y" in test_fields else {}


def _test_fields(run) -> dict:
    device = next(run.model.parameters()).device
    return prepare_fields(run.test, run.config["transform"], device)


def metrics(run, evaluation) -> dict:
    fields = _test_fields(run)
    return cluster_metrics(run.guide, fields) if "y" in fields else {}


def summary(metrics: dict) -> list[str]:
    if "cluster_accuracy" not in metrics:
        return []
    return [
        f"clustering           {metrics['cluster_accuracy']:9.3f} accuracy, NMI "
        f"{metrics['cluster_nmi']:.3f}, entropy of q(y|x) {metrics['cluster_entropy']:.3f} nats"
    ]


def figures(run, run_dir: Path, history) -> None:
    """``clustering.png`` (the scores per history row) and ``cluster_grid.png`` (ten
    samples per cluster, rows ordered by the label each cluster is matched to)."""
    shape = run.test.image_shape
    if len(shape) != 2:
        return
    if any("cluster_accuracy" in row for row in history):
        plots.save(plots.clustering_curves(history), run_dir / "clustering.png")
    clusters = list(range(run.model.num_clusters))
    row_titles = [f"cluster {c}" for c in clusters]
    fields = _test_fields(run)
    if "y" in fields:
        assignments = cluster_probs(run.guide, fields).argmax(-1).numpy()
        matched = match_clusters(assignments, fields["y"].cpu().numpy())
        clusters.sort(key=lambda c: (matched.get(c, len(clusters)), c))
        row_titles = [
            f"cluster {c} -> {matched[c]}" if c in matched else f"cluster {c}" for c in clusters
        ]
    per_cluster = 10
    torch.manual_seed(run.config.get("seed", 0))
    images = run.model.eval().generate(torch.tensor(clusters).repeat_interleave(per_cluster))
    plots.save(
        plots.image_grid(
            images,
            shape,
            ncols=per_cluster,
            title="one row per cluster: mean of p(x | z), z ~ p(z | y)",
            row_titles=row_titles,
        ),
        run_dir / "cluster_grid.png",
    )


#: The Gaussian-mixture VAE of the tutorial paper (section 5.5): C = 10 clusters, a
#: 64-dimensional z, hidden layers of 512, Glorot-normal weights, batch 100, Adam 1e-3,
#: on dynamically binarized MNIST; the clusters are summed out by enumeration.
PAIR = register_pair(
    PairSpec(
        name="gmvae",
        build=build,
        view="flat",
        view_for=view_for,
        description="Gaussian-mixture VAE: a discrete cluster and a Gaussian z",
        # each importance sample is C passes of the decoder: K = 200 costs what 2000 would
        training={**VAE_PAIR.training, "objective": "enum", "log_likelihood_particles": 200},
        metrics=metrics,
        summary=summary,
        figures=figures,
        history_metrics=history_metrics,
        configure=configure,
        rows_per_point=rows_per_point,
    )
)
