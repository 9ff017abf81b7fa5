"""The contract check of a pair before its first training step.

:func:`check_training_pair` runs :func:`~pyro_aevb.particles.summarize_pair` (the
contract's checks and evaluation's particle probe) on the first
batch (and, for a semi-supervised data set, on the first unlabeled batch too), turns
invalid distribution parameters into a :class:`~pyro_aevb.contract.ContractError` that
names the site, advises on the objective, and checks the training and test values
against the likelihood's support.
"""

from __future__ import annotations

import pyro

from ..contract import (
    ContractError,
    PairSummary,
    check_data_support,
    check_test_evaluation,
    merge_summaries,
    objective_advice,
    warn_once,
)
from ..particles import summarize_pair
from ..plate import full_data_size
from .data_plan import TrainingData
from .settings import ObjectiveSettings
from .step import _where_invalid


def check_training_pair(
    model, guide, data: TrainingData, objective: ObjectiveSettings, check_support: bool
) -> PairSummary:
    """The pair's :class:`~pyro_aevb.contract.PairSummary` (which also fixes how
    evaluation draws its particles), after every check of the pair and the data.

    :raises ContractError: for a pair that breaks the contract or has invalid
        distribution parameters on the first batch.
    """
    enumerates = objective.capabilities.enumerates
    try:
        with full_data_size(data.num_train), pyro.validation_enabled(True):
            # the check draws evaluation's particles too (PairSummary.particle_mode)
            summary = summarize_pair(
                model,
                guide,
                data.first_batch(),
                allow_model_enumeration=enumerates,
                check_support=check_support,
            )
            if data.mixes_labels:  # a semi-supervised data set: the unlabeled batches too
                unlabeled = summarize_pair(
                    model,
                    guide,
                    data.first_batch(unlabeled=True),
                    allow_model_enumeration=enumerates,
                    check_support=check_support,
                )
                summary = merge_summaries(summary, unlabeled)
    except ValueError as e:
        if isinstance(e, ContractError) or "found invalid values" not in str(e):
            raise
        raise ContractError(
            "invalid distribution parameters on the first batch"
            f"{_where_invalid(e, model, guide)}: {str(e).splitlines()[0]}"
        ) from e
    advice = None if enumerates else objective_advice(summary, objective.name)
    if advice is not None:
        warn_once(f"objective-{objective.name}", advice)
    check_data_support(summary, data.preview)
    if data.test_fields is not None:
        check_data_support(summary, data.test_fields)
        check_test_evaluation(summary)
    return summary
