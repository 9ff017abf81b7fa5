"""Factor analysis on the tutorial paper's synthetic data (section 5.2), with its exact
evidence: the model that generated the data is known, so the summary and the figures
compare the fitted model's evidence with the truth's."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch

from .. import plots
from ..data.dataset import Dataset
from .options import LATENT_DIM
from .registry import register_pair
from .spec import Option, PairSpec


def build(
    train: Dataset,
    z_dim: Annotated[int, LATENT_DIM] = 2,
    covariance: Annotated[
        str, Option("the guide's covariance", choices=["full", "diagonal"])
    ] = "full",
    bias: Annotated[bool, Option("learn a mean (default: b = 0)", switch=True)] = False,
):
    """``FactorAnalysis`` with the linear Gaussian guide of the chosen covariance."""
    from ..guides import COVARIANCE_GUIDES
    from ..models import FactorAnalysis

    if covariance not in COVARIANCE_GUIDES:
        raise ValueError(
            f"unknown guide covariance '{covariance}'; choose one of {sorted(COVARIANCE_GUIDES)}"
        )
    x_dim = train.num_features
    model = FactorAnalysis(x_dim, z_dim, bias=bias)  # first: it draws W before the guide's V
    return model, COVARIANCE_GUIDES[covariance](x_dim, z_dim, bias)


def true_log_evidence(run) -> float | None:
    """Mean test log-evidence of the model that generated the bundled FA data (``None``
    for other data)."""
    if run.config["dataset"] != "fa-synthetic":
        return None
    from ..data import synthetic_factor_analysis

    _, test, truth = synthetic_factor_analysis()
    if not torch.equal(test.x[: len(run.test)], run.test.x):
        return None
    return float(truth.log_evidence(run.test.x).mean())


def metrics(run, evaluation) -> dict:
    true = true_log_evidence(run)
    return {} if true is None else {"true_model_log_evidence": true}


def summary(metrics: dict) -> list[str]:
    if "true_model_log_evidence" not in metrics:
        return []
    return [f"true model           {metrics['true_model_log_evidence']:9.3f} nats"]


def figures(run, run_dir: Path, history) -> None:
    """``evidence.png`` (test ELBO and exact evidence per row) and
    ``predictive_check.png`` (test data against as many generated points)."""
    plots.save(plots.evidence_curve(history, true_log_evidence(run)), run_dir / "evidence.png")
    generator = torch.Generator(device=run.model.W.device).manual_seed(run.config.get("seed", 0))
    generated = run.model.sample(len(run.test), generator=generator)
    plots.save(plots.predictive_check(run.test.x, generated), run_dir / "predictive_check.png")


#: Factor analysis on the tutorial paper's synthetic data (section 5.2): L = 2, D = 3,
#: batch 32, Adam 1e-2, analytic KL; 125 epochs are 4000 steps, about 15 s of training.
PAIR = register_pair(
    PairSpec(
        name="fa",
        build=build,
        view="flat",
        description="factor analysis with a linear Gaussian guide (exact evidence)",
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
        metrics=metrics,
        summary=summary,
        figures=figures,
    )
)
