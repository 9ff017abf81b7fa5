"""pyro-aevb: Auto-Encoding Variational Bayes with Pyro.

Data flow: data (:mod:`pyro_aevb.data`) -> model/guide pair
(:mod:`pyro_aevb.models`, :mod:`pyro_aevb.guides`, the contract in
:mod:`pyro_aevb.contract`) -> objective (:mod:`pyro_aevb.objectives`) ->
:func:`fit` -> :func:`evaluate` -> plots (:mod:`pyro_aevb.plots`).
"""

__version__ = "0.1.0"

from .ais import AISEstimate, BDMCEstimate, ais_log_likelihood, bdmc
from .contract import ContractError, check_pair
from .evaluation import (
    Evaluation,
    ImportanceEstimate,
    elbo_per_datapoint,
    evaluate,
    exact_log_evidence,
    importance_log_likelihood,
    log_importance_weights,
)
from .label_usage import label_usage
from .objectives import available_objectives, make_objective, register_objective
from .plate import data_plate, full_data_size
from .training import DivergenceError, FitResult, NonFiniteLossError, TrainingStep, fit

__all__ = [
    "AISEstimate",
    "BDMCEstimate",
    "ContractError",
    "DivergenceError",
    "Evaluation",
    "FitResult",
    "ImportanceEstimate",
    "NonFiniteLossError",
    "ais_log_likelihood",
    "available_objectives",
    "bdmc",
    "check_pair",
    "data_plate",
    "elbo_per_datapoint",
    "evaluate",
    "exact_log_evidence",
    "fit",
    "full_data_size",
    "importance_log_likelihood",
    "label_usage",
    "log_importance_weights",
    "make_objective",
    "register_objective",
    "TrainingStep",
]
