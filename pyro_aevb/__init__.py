"""pyro-aevb: Auto-Encoding Variational Bayes with Pyro.

Data flow: data (:mod:`pyro_aevb.data`) -> model/guide pair
(:mod:`pyro_aevb.models`, :mod:`pyro_aevb.guides`, the contract in
:mod:`pyro_aevb.contract`) -> objective (:mod:`pyro_aevb.objectives`) ->
:func:`fit` -> :func:`evaluate` -> plots (:mod:`pyro_aevb.plots`).

The names here are what a user of :func:`fit` and :func:`evaluate` needs: the data set
and transform types, the schedules and the KL annealing ``fit`` takes, the objectives
by name and as classes, the training step, the evaluation's estimators and results,
AIS and BDMC. Everything else lives in its module.
"""

__version__ = "0.1.0"

from .ais import AISEstimate, BDMCEstimate, ais_log_likelihood, bdmc
from .annealing import KLAnnealing
from .contract import ContractError, check_pair
from .data import Dataset, Transform, get_transform, load_dataset
from .deprecation import module_getattr
from .evaluation import (
    Evaluation,
    ImportanceEstimate,
    elbo_per_datapoint,
    exact_log_evidence,
    importance_log_likelihood,
)
from .evaluation_methods import evaluate
from .importance_weighted import CIWAE, IWAE, MIWAE, PIWAE, STLELBO, DReG
from .label_usage import label_usage
from .objectives import RenyiELBO, available_objectives, make_objective, register_objective
from .plate import data_plate
from .relaxed import TemperatureSchedule
from .schedules import AlternatingSchedule, JointSchedule
from .training import DivergenceError, FitResult, NonFiniteLossError, TrainingStep, fit


def _internal(module: str, name: str):
    def resolve():
        import importlib

        return getattr(importlib.import_module(f"pyro_aevb.{module}"), name)

    return resolve


#: internals once exported here: still importable from the top level, with a warning
#: naming the module they live in
__getattr__ = module_getattr(
    __name__,
    {
        "full_data_size": _internal("plate", "full_data_size"),
        "log_importance_weights": _internal("evaluation", "log_importance_weights"),
    },
)

__all__ = [
    "AISEstimate",
    "AlternatingSchedule",
    "BDMCEstimate",
    "CIWAE",
    "ContractError",
    "DReG",
    "Dataset",
    "DivergenceError",
    "Evaluation",
    "FitResult",
    "IWAE",
    "ImportanceEstimate",
    "JointSchedule",
    "KLAnnealing",
    "MIWAE",
    "NonFiniteLossError",
    "PIWAE",
    "RenyiELBO",
    "STLELBO",
    "TemperatureSchedule",
    "TrainingStep",
    "Transform",
    "ais_log_likelihood",
    "available_objectives",
    "bdmc",
    "check_pair",
    "data_plate",
    "elbo_per_datapoint",
    "evaluate",
    "exact_log_evidence",
    "fit",
    "get_transform",
    "importance_log_likelihood",
    "label_usage",
    "load_dataset",
    "make_objective",
    "register_objective",
]
