"""Training: the step builder, its optimizer, the history, the checkpointed state, the loop.

* :mod:`~pyro_aevb.training.step`: :class:`TrainingStep`, one SVI step built once
  (binding, 1/N scale, KL weight, plate count, one torch optimizer, the guard);
* :mod:`~pyro_aevb.training.optim`: optimizers and learning-rate schedules;
* :mod:`~pyro_aevb.training.history`: history rows and early stopping;
* :mod:`~pyro_aevb.training.state`: what a checkpoint holds, and the resume checks;
* :mod:`~pyro_aevb.training.loop`: :func:`fit`.
"""

from ..io import save_json
from .history import History
from .loop import FitResult, fit
from .optim import LR_SCHEDULES, OPTIMIZERS, make_lr_scheduler, make_optimizer
from .step import (
    DivergenceError,
    NonFiniteLossError,
    TrainingStep,
    bind_pair,
    frozen_parameters,
)

__all__ = [
    "DivergenceError",
    "FitResult",
    "History",
    "LR_SCHEDULES",
    "NonFiniteLossError",
    "OPTIMIZERS",
    "TrainingStep",
    "bind_pair",
    "fit",
    "frozen_parameters",
    "make_lr_scheduler",
    "make_optimizer",
    "save_json",
]
