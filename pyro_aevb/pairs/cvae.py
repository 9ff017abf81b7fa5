"""The conditional VAE of the tutorial paper (section 5.4): the VAE's architecture with the
label fed to a conditional prior and to the decoder; its own metric is how much the model
uses the label (log p(x | y) with the true labels against shuffled ones)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch

from .. import plots
from ..data.dataset import Dataset
from ..evaluation import label_usage, prepare_fields
from .options import ARCHITECTURE, DROPOUT, FLOW_LAYERS, GUIDE, HIDDEN, LATENT_DIM, LIKELIHOOD
from .registry import register_pair
from .spec import Option, PairSpec
from .vae import PAIR as VAE_PAIR
from .vae import view_for

FACTORIZATION = Option(
    "p(z|y)p(x|y,z) (full), p(z|y)p(x|z) (prior) or p(z)p(x|y,z) (decoder)",
    choices=["full", "prior", "decoder"],
)


def build(
    train: Dataset,
    z_dim: Annotated[int, LATENT_DIM] = 20,
    hidden: Annotated[tuple[int, ...], HIDDEN] = (500, 500),
    likelihood: Annotated[str | None, LIKELIHOOD] = None,
    dropout: Annotated[float, DROPOUT] = 0.0,
    factorization: Annotated[str, FACTORIZATION] = "full",
    guide: Annotated[str, GUIDE] = "diagonal",
    flow_layers: Annotated[int, FLOW_LAYERS] = 4,
    architecture: Annotated[str, ARCHITECTURE] = "mlp",
):
    """``ConditionalVAE`` (``ConvConditionalVAE`` with ``architecture="conv"``, on images)
    with a conditional guide of the same hidden sizes, diagonal or flow (``guide``); the
    number of classes is read from the training labels."""
    from ..guides import amortized_guide
    from ..models import ConditionalVAE, ConvConditionalVAE

    if train.y is None:
        raise ValueError(f"the conditional VAE needs labels, and data set '{train.name}' has none")
    x_dim, num_classes = train.num_features, int(train.y.max()) + 1
    shape = tuple(train.x.shape[1:]) if architecture == "conv" else None
    if shape is not None:
        model = ConvConditionalVAE(shape, num_classes, z_dim, hidden, likelihood, dropout,
                                   factorization=factorization)  # fmt: skip
    else:
        model = ConditionalVAE(
            x_dim, num_classes, z_dim, hidden, likelihood, dropout, factorization=factorization
        )
    q = amortized_guide(guide, x_dim, z_dim, hidden, flow_layers, dropout, num_classes,
                        image_shape=shape)  # fmt: skip
    return model, q


def metrics(run, evaluation) -> dict:
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


def summary(metrics: dict) -> list[str]:
    if "label_gain" not in metrics:
        return []
    return [
        f"log p(x | y)         {metrics['log_likelihood_true_labels']:9.2f} true labels, "
        f"{metrics['log_likelihood_shuffled_labels']:.2f} shuffled "
        f"(gain {metrics['label_gain']:.2f} nats)"
    ]


def figures(run, run_dir: Path, history) -> None:
    """``class_conditional.png``: ten samples of each class, one row per class."""
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
PAIR = register_pair(
    PairSpec(
        name="cvae",
        build=build,
        view="flat",
        description="conditional VAE: the label feeds the prior and the decoder",
        # the paper trains it with the VAE's settings, on dequantized digits
        training={**VAE_PAIR.training, "transform": "dequantize"},
        metrics=metrics,
        summary=summary,
        figures=figures,
        view_for=view_for,
    )
)
