"""Named model/guide pairs with their training defaults, for the command line.

A small registry: each entry builds ``(model, guide)`` for a data set and knows
the view of the data it reads, its default training settings, and optionally the
metrics and figures that only it has (exact evidence curves, class grids).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import plots
from .clustering import cluster_metrics, cluster_probs, match_clusters
from .data.dataset import Dataset
from .evaluation import label_usage, prepare_fields


@dataclass(frozen=True)
class PairSpec:
    """How to build a named pair and train it by default.

    :ivar build: ``build(train, **options) -> (model, guide)``, with ``train`` in the
        pair's view and ``options`` the pair's architecture options.
    :ivar view: ``"flat"`` (``(N, D)`` vectors) or ``"rows"`` (``(N, T, D)`` sequences).
    :ivar options: architecture options and their defaults.
    :ivar training: defaults of :func:`pyro_aevb.fit` settings for this pair.
    :ivar metrics: ``metrics(run, evaluation) -> dict`` of extra test metrics, given the
        run's :class:`~pyro_aevb.evaluation.Evaluation`.
    :ivar figures: ``figures(run, run_dir, history)`` writes extra figures.
    :ivar history_metrics: ``history_metrics(model, guide, test_fields) -> dict`` of
        test metrics for every history row (see :func:`pyro_aevb.fit`).
    :ivar configure: ``configure(config, overrides)`` fills defaults that depend on
        other settings and rejects combinations that cannot work, before any work.
    :ivar samples: ``samples(run, n)`` draws ``n`` images for ``samples.png`` when the
        default (the model run on test inputs) would not show unconditional samples.
    """

    name: str
    build: Callable[..., tuple[nn.Module, nn.Module]]
    view: str
    options: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    metrics: Callable[..., dict] | None = None
    figures: Callable[..., None] | None = None
    history_metrics: Callable[..., dict] | None = None
    configure: Callable[[dict, dict], None] | None = None
    #: ``samples(run, n) -> (n, ...)`` images for ``samples.png``; default: the mean of
    #: ``p(x | z)`` with ``z`` from the prior, by running the model on a test batch
    samples: Callable[..., torch.Tensor] | None = None

    def prepare(self, data: Dataset) -> Dataset:
        """``data`` in the view this pair reads."""
        return data.flat() if self.view == "flat" else data.rows()


_PAIRS: dict[str, PairSpec] = {}


def register_pair(spec: PairSpec) -> PairSpec:
    if spec.name in _PAIRS:
        raise ValueError(f"a pair named '{spec.name}' is already registered")
    _PAIRS[spec.name] = spec
    return spec


def available_pairs() -> list[str]:
    return sorted(_PAIRS)


def get_pair(name: str) -> PairSpec:
    if name not in _PAIRS:
        raise ValueError(f"unknown model '{name}'; choose one of {available_pairs()}")
    return _PAIRS[name]


def _build_vae(train: Dataset, z_dim, hidden, likelihood, dropout):
    from .guides import DiagonalNormalEncoder
    from .models import VAE

    x_dim = train.num_features
    model = VAE(x_dim, z_dim, hidden, likelihood=likelihood, dropout=dropout)
    guide = DiagonalNormalEncoder(x_dim, z_dim, hidden, dropout=dropout)
    return model, guide


#: The default VAE: the tutorial paper's architecture (section 5.3), trained on the
#: bundled MNIST subset with dynamic binarization; 100 epochs take about a minute
#: on two CPU cores.
VAE_PAIR = register_pair(
    PairSpec(
        name="vae",
        build=_build_vae,
        view="flat",
        options={"z_dim": 20, "hidden": (500, 500), "likelihood": None, "dropout": 0.0},
        training={
            "dataset": "mnist-subset",
            "transform": "dynamic",
            "objective": "elbo",
            "num_particles": 1,
            "epochs": 100,
            "batch_size": 100,
            "lr": 1e-3,
            "log_likelihood_particles": 1000,
        },
    )
)


def _build_fa(train: Dataset, z_dim, covariance, bias):
    from .guides import COVARIANCE_GUIDES
    from .models import FactorAnalysis

    if covariance not in COVARIANCE_GUIDES:
        raise ValueError(
            f"unknown guide covariance '{covariance}'; choose one of {sorted(COVARIANCE_GUIDES)}"
        )
    x_dim = train.num_features
    model = FactorAnalysis(x_dim, z_dim, bias=bias)  # first: it draws W before the guide's V
    return model, COVARIANCE_GUIDES[covariance](x_dim, z_dim, bias)


def _true_fa_evidence(run) -> float | None:
    """Mean test log-evidence of the model that generated the bundled FA data."""
    if run.config["dataset"] != "fa-synthetic":
        return None
    from .data import synthetic_factor_analysis

    _, test, truth = synthetic_factor_analysis()
    if not torch.equal(test.x[: len(run.test)], run.test.x):
        return None
    return float(truth.log_evidence(run.test.x).mean())


def _fa_metrics(run, evaluation) -> dict:
    true = _true_fa_evidence(run)
    return {} if true is None else {"true_model_log_evidence": true}


def _fa_figures(run, run_dir: Path, history) -> None:
    plots.save(plots.evidence_curve(history, _true_fa_evidence(run)), run_dir / "evidence.png")
    generator = torch.Generator(device=run.model.W.device).manual_seed(run.config.get("seed", 0))
    generated = run.model.sample(len(run.test), generator=generator)
    plots.save(plots.predictive_check(run.test.x, generated), run_dir / "predictive_check.png")


#: Factor analysis on the tutorial paper's synthetic data (section 5.2): L = 2, D = 3,
#: batch 32, Adam 1e-2, analytic KL; 125 epochs are 4000 steps, about 15 s of training.
FA_PAIR = register_pair(
    PairSpec(
        name="fa",
        build=_build_fa,
        view="flat",
        options={"z_dim": 2, "covariance": "full", "bias": False},
        training={
            "dataset": "fa-synthetic",
            "transform": "none",
            "objective": "meanfield",
            "num_particles": 1,
            "epochs": 125,
            "batch_size": 32,
            "lr": 1e-2,
            "log_likelihood_particles": 5000,
        },
        metrics=_fa_metrics,
        figures=_fa_figures,
    )
)


def _build_cvae(train: Dataset, z_dim, hidden, likelihood, dropout, factorization):
    from .guides import ConditionalDiagonalNormalEncoder
    from .models import ConditionalVAE

    if train.y is None:
        raise ValueError(f"the conditional VAE needs labels, and data set '{train.name}' has none")
    x_dim, num_classes = train.num_features, int(train.y.max()) + 1
    model = ConditionalVAE(
        x_dim, num_classes, z_dim, hidden, likelihood, dropout, factorization=factorization
    )
    guide = ConditionalDiagonalNormalEncoder(x_dim, num_classes, z_dim, hidden, dropout)
    return model, guide


def _cvae_metrics(run, evaluation) -> dict:
    fields = prepare_fields(run.test, run.config["transform"], next(run.model.parameters()).device)
    estimate = evaluation.importance  # log p(x | y) with the true labels: not drawn again
    return label_usage(
        run.model,
        run.guide,
        fields,
        estimate.num_particles,
        seed=run.config.get("seed", 0),
        true_log_likelihood=estimate.log_likelihood,
    )


def _cvae_figures(run, run_dir: Path, history) -> None:
    torch.manual_seed(run.config.get("seed", 0))
    per_class = 10
    labels = torch.arange(run.model.num_classes).repeat_interleave(per_class)
    images = run.model.eval().generate(labels, mean=True)
    shape = run.test.image_shape
    if len(shape) == 2:
        title = "one row per class: mean of p(x | y, z), z ~ p(z | y)"
        plots.save(
            plots.image_grid(images, shape, ncols=per_class, title=title),
            run_dir / "class_conditional.png",
        )


#: The conditional VAE of the tutorial paper (section 5.4): the VAE's architecture with
#: the label fed to a conditional prior and to the decoder, on dequantized MNIST.
CVAE_PAIR = register_pair(
    PairSpec(
        name="cvae",
        build=_build_cvae,
        view="flat",
        options={
            "z_dim": 20,
            "hidden": (500, 500),
            "likelihood": None,
            "dropout": 0.0,
            "factorization": "full",
        },
        # the paper trains it with the VAE's settings, on dequantized digits
        training={**VAE_PAIR.training, "transform": "dequantize"},
        metrics=_cvae_metrics,
        figures=_cvae_figures,
    )
)


def _build_gmvae(train: Dataset, num_clusters, z_dim, hidden, likelihood, estimator, temperature):
    from .guides import GMVAEEncoder
    from .models import GaussianMixtureVAE
    from .relaxed import TemperatureSchedule

    x_dim = train.num_features
    model = GaussianMixtureVAE(x_dim, num_clusters, z_dim, hidden, likelihood)
    schedule = TemperatureSchedule(**temperature) if temperature else None
    guide = GMVAEEncoder(x_dim, num_clusters, z_dim, hidden, estimator, schedule)
    return model, guide


#: the objective each GMVAE estimator trains with
_GMVAE_OBJECTIVES = {"enumerate": "enum", "gumbel": "meanfield"}


def _configure_gmvae(config: dict, overrides: dict) -> None:
    estimator = config["architecture"]["estimator"]
    if estimator not in _GMVAE_OBJECTIVES:
        raise ValueError(
            f"unknown estimator '{estimator}'; choose one of {sorted(_GMVAE_OBJECTIVES)}"
        )
    wanted = _GMVAE_OBJECTIVES[estimator]
    if overrides.get("objective") is None:
        config["objective"] = wanted
    elif config["objective"] != wanted:
        raise ValueError(
            f"the GMVAE's '{estimator}' estimator trains with objective '{wanted}', not "
            f"'{config['objective']}'"
        )
    if config["architecture"].get("temperature") and estimator != "gumbel":
        raise ValueError("--temperature applies to --estimator gumbel only")


def _gmvae_history_metrics(model, guide, test_fields) -> dict:
    return cluster_metrics(guide, test_fields) if "y" in test_fields else {}


def _gmvae_test_fields(run) -> dict:
    device = next(run.model.parameters()).device
    return prepare_fields(run.test, run.config["transform"], device)


def _gmvae_metrics(run, evaluation) -> dict:
    fields = _gmvae_test_fields(run)
    return cluster_metrics(run.guide, fields) if "y" in fields else {}


def _gmvae_figures(run, run_dir: Path, history) -> None:
    shape = run.test.image_shape
    if len(shape) != 2:
        return
    if any("cluster_accuracy" in row for row in history):
        plots.save(plots.clustering_curves(history), run_dir / "clustering.png")
    clusters = list(range(run.model.num_clusters))
    row_titles = [f"cluster {c}" for c in clusters]
    fields = _gmvae_test_fields(run)
    if "y" in fields:
        # One row per cluster, ordered by the label each cluster is matched to.
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
GMVAE_PAIR = register_pair(
    PairSpec(
        name="gmvae",
        build=_build_gmvae,
        view="flat",
        options={
            "num_clusters": 10,
            "z_dim": 64,
            "hidden": (512, 512),
            "likelihood": None,
            "estimator": "enumerate",
            "temperature": None,
        },
        # each importance sample is C passes of the decoder: K = 200 costs what 2000 would
        training={**VAE_PAIR.training, "objective": "enum", "log_likelihood_particles": 200},
        metrics=_gmvae_metrics,
        figures=_gmvae_figures,
        history_metrics=_gmvae_history_metrics,
        configure=_configure_gmvae,
    )
)


def _build_vrnn(train: Dataset, z_dim, rnn_dim, hidden, likelihood):
    from .guides import VRNNEncoder
    from .models import VRNN

    num_steps, x_dim = train.x.shape[1:]
    model = VRNN(x_dim, z_dim, rnn_dim, hidden, num_steps=num_steps, likelihood=likelihood)
    return model, VRNNEncoder(model, hidden)


def _vrnn_samples(run, n: int) -> torch.Tensor:
    torch.manual_seed(run.config.get("seed", 0))
    return run.model.eval().generate(n, mean=True)


def _vrnn_figures(run, run_dir: Path, history) -> None:
    torch.manual_seed(run.config.get("seed", 0))
    record = run.model.eval().generate_rows(1)
    every = max(1, record.rows.shape[1] // 14)  # at most 14 panels and the sample
    plots.save(
        plots.row_by_row_generation(record.probs[0], record.rows[0], every=every),
        run_dir / "generation_steps.png",
    )


#: The variational RNN of the tutorial paper (section 5.6) on images read row by row
#: (28 steps of 28 binary pixels for MNIST): L = 2 per step, an LSTM of 256, batch 100,
#: Adam 1e-3, the analytic KL of each step. The paper gives no network sizes; 256 are
#: ours. A recurrent pass costs T sequential steps, so the test log-likelihood uses
#: K = 100 by default.
VRNN_PAIR = register_pair(
    PairSpec(
        name="vrnn",
        build=_build_vrnn,
        view="rows",
        options={"z_dim": 2, "rnn_dim": 256, "hidden": (256,), "likelihood": None},
        # meanfield: the paper's estimator, an analytic KL per step given the sampled past
        training={
            **VAE_PAIR.training,
            "objective": "meanfield",
            "epochs": 30,
            "log_likelihood_particles": 100,
        },
        figures=_vrnn_figures,
        samples=_vrnn_samples,
    )
)
