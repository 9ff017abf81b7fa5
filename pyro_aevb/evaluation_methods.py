""":func:`evaluate` by method: importance sampling (:mod:`pyro_aevb.evaluation`) or
annealed importance sampling (:mod:`pyro_aevb.ais`).

The choice sits in a module of its own, a layer above both estimators, so that the
importance sampler's module never imports AIS (which is built on it): checks and
estimates import one way, contract <- particles <- evaluation <- ais <- this module.
:func:`pyro_aevb.evaluate` is the :func:`evaluate` here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from .ais import ais_evaluation
from .contract import PairSummary
from .data.dataset import Dataset
from .data.transforms import Transform
from .estimates import Evaluation
from .evaluation import check_evaluation_arguments, prepare_evaluation_data
from .evaluation import evaluate as importance_evaluation
from .psis import warn_if_unreliable

#: the estimators :func:`evaluate` can run, by ``method=``
METHODS = ("importance", "ais")


def evaluate(
    model: Callable,
    guide: Callable,
    data: Dataset | Mapping[str, torch.Tensor],
    transform: Transform | str | None = None,
    num_particles: int = 1000,
    elbo_particles: int = 1,
    batch_size: int = 100,
    device: torch.device | str | None = None,
    seed: int = 0,
    pareto: bool = True,
    check: bool = True,
    progress: bool = False,
    method: str = "importance",
    *,
    summary: PairSummary | None = None,
    check_support: bool = True,
    **ais_options,
) -> Evaluation:
    """Test ELBO and importance-sampled log-likelihood of a pair on ``data`` (nats per
    data point), and the exact log-evidence for models with a ``log_evidence`` method:
    :func:`pyro_aevb.evaluation.evaluate`, whose arguments these are.

    With ``method="ais"``, annealed importance sampling instead: returns a
    :class:`pyro_aevb.ais.AISEvaluation`; ``ais_options`` (``num_chains``, ``num_steps``,
    ``num_leapfrog``, ``initial``, ...) go to :func:`pyro_aevb.ais.ais_log_likelihood`.

    :param summary: the pair's check as ``fit`` computed it (``FitResult.summary``), so
        that importance sampling does not check the pair again.
    :param check_support: ``False`` skips the check of observed values against the
        likelihood's support (importance sampling; for AIS set the attribute
        ``check_support = False`` on the model, which every check reads).
    :raises ValueError: for bad arguments or data, before any work.
    :raises MemoryError: when the importance weights of one batch cannot fit in memory.
    """
    check_evaluation_arguments(num_particles, elbo_particles, batch_size, seed)
    if method not in METHODS:
        raise ValueError(f"unknown evaluation method '{method}'; choose 'importance' or 'ais'")
    if ais_options and method != "ais":
        raise TypeError(f"options {sorted(ais_options)} apply to method='ais' only")
    if method == "importance":
        evaluation = importance_evaluation(
            model, guide, data, transform, num_particles, elbo_particles, batch_size, device,
            seed, pareto, check, progress, summary=summary, check_support=check_support,
        )  # fmt: skip
        return warn_if_unreliable(evaluation)  # k-hat flags most points: say what to do
    if not check_support:
        raise ValueError(
            "check_support=False applies to method='importance'; for method='ais' set "
            "check_support = False on the model (e.g. model.check_support = False), which "
            "AIS's check of the pair reads"
        )
    fields, _ = prepare_evaluation_data(model, guide, data, transform, device)
    return ais_evaluation(model, guide, fields, seed=seed, **ais_options)
