"""A run's figures: the learning curve, for image data samples and reconstructions, and
the pair's own."""

from __future__ import annotations

from pathlib import Path

import torch

from .. import plots
from ..data import get_transform, transform_test_set
from .build import Run


def redraw_learning_curve(run_dir: Path, history, metrics: dict) -> None:
    """``learning_curve.png`` with the evaluation's test log-likelihood (``metrics``)."""
    curve = plots.learning_curve(history, final=metrics)
    plots.save(curve, Path(run_dir) / "learning_curve.png")


def write_figures(run: Run, run_dir: Path, history) -> None:
    """``learning_curve.png``, for images ``samples.png`` and ``reconstructions.png``,
    and the pair's own figures."""
    run_dir = Path(run_dir)
    dev = next(run.model.parameters()).device
    plots.save(plots.learning_curve(history), run_dir / "learning_curve.png")
    if run.spec.figures is not None:
        run.spec.figures(run, run_dir, history)
    transform = get_transform(run.config["transform"])
    # Evenly spaced test points: bundled data sets are ordered by class.
    index = torch.linspace(0, len(run.test) - 1, min(100, len(run.test))).long()
    x = transform_test_set(run.test.x[index], transform, run.test.levels).to(dev)
    batch = {"x": x}
    if run.test.y is not None:
        batch["y"] = run.test.y[index].to(dev)
    shape = run.test.image_shape
    if len(shape) == 2:
        if run.spec.samples is not None:
            samples = run.spec.samples(run, x.shape[0])
        else:
            samples = plots.prior_predictive_mean(run.model, batch, seed=run.config.get("seed", 0))
        plots.save(
            plots.image_grid(samples, shape, title="samples: mean of p(x | z), z ~ p(z)"),
            run_dir / "samples.png",
        )
        recon = plots.reconstruction_mean(run.model, run.guide, batch)
        labels = batch.get("y")
        shown = plots.spread_over_classes(labels.cpu() if labels is not None else None, 30, len(x))
        plots.save(
            plots.reconstructions_figure(x[shown], recon[shown], shape),
            run_dir / "reconstructions.png",
        )
