"""The variational RNN of the tutorial paper (section 5.6) on images read row by row; its
own figure shows one image generated row by row."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch

from .. import plots
from ..data.dataset import Dataset
from .options import HIDDEN, LATENT_DIM, LIKELIHOOD
from .registry import register_pair
from .spec import Option, PairSpec
from .vae import PAIR as VAE_PAIR


def build(
    train: Dataset,
    z_dim: Annotated[int, LATENT_DIM] = 2,
    rnn_dim: Annotated[int, Option("LSTM state size", type=int, minimum=1)] = 256,
    hidden: Annotated[tuple[int, ...], HIDDEN] = (256,),
    likelihood: Annotated[str | None, LIKELIHOOD] = None,
):
    """``VRNN`` over the rows of each image with a ``VRNNGuide`` that shares its LSTM."""
    from ..guides import VRNNGuide
    from ..models import VRNN

    num_steps, x_dim = train.x.shape[1:]
    model = VRNN(x_dim, z_dim, rnn_dim, hidden, num_steps=num_steps, likelihood=likelihood)
    return model, VRNNGuide(model, hidden)


def samples(run, n: int) -> torch.Tensor:
    torch.manual_seed(run.config.get("seed", 0))
    return run.model.eval().generate(n, mean=True)


def figures(run, run_dir: Path, history) -> None:
    """``generation_steps.png``: one sample generated row by row."""
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
PAIR = register_pair(
    PairSpec(
        name="vrnn",
        build=build,
        view="rows",
        description="variational RNN over the rows of each image",
        # meanfield: the paper's estimator, an analytic KL per step given the sampled past
        training={
            **VAE_PAIR.training,
            "objective": "meanfield",
            "epochs": 30,
            "log_likelihood_particles": 100,
        },
        figures=figures,
        samples=samples,
    )
)
