"""Training: the step builder, its optimizer, the history, the checkpointed state, the loop.

* :mod:`~pyro_aevb.training.step`: :class:`TrainingStep`, one SVI step built once
  (binding, 1/N scale, KL weight, plate count, one torch optimizer, the guard);
* :mod:`~pyro_aevb.training.optim`: optimizers and learning-rate schedules;
* :mod:`~pyro_aevb.training.history`: history rows and early stopping;
* :mod:`~pyro_aevb.training.state`: what a checkpoint holds, and the resume checks;
* :mod:`~pyro_aevb.training.settings`, :mod:`~pyro_aevb.training.placement`,
  :mod:`~pyro_aevb.training.checkpointing`: fit's settings groups, validated once;
* :mod:`~pyro_aevb.training.loop`: :class:`FitLoop`, the epochs and steps;
* :mod:`~pyro_aevb.training.strategy` and :mod:`~pyro_aevb.training.distributed`: one
  process, or one rank of a data-parallel run;
* :mod:`~pyro_aevb.training.fitting`: :func:`fit`, the composition of these parts.
"""

from ..io import save_json
from .fitting import FitResult, fit
from .history import History
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
