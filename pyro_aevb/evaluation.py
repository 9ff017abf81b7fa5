r"""Evaluation of any model/guide pair by importance sampling: per-data-point ELBO,
importance-sampled log-likelihood, effective sample size and Pareto :math:`\hat k`. All in
nats per data point.

Everything rests on per-data-point log importance weights, drawn by the particle
engine shared with the training objectives (:func:`pyro_aevb.particles.importance_terms`)

.. math::

    \log w_k(x_i) = \log p_\theta(x_i, z_k) - \log q_\phi(z_k \mid x_i),
    \qquad z_k \sim q_\phi(z \mid x_i),

with the particle dimension ``k`` and the data plate kept apart: each site's
log-density is summed over every other dimension. Then

* the ELBO estimate is :math:`\frac1K \sum_k \log w_k`;
* the importance-sampled log-likelihood (the IWAE bound of Burda et al., 2016,
  which tends to :math:`\log p(x)` as :math:`K \to \infty`) is
  :math:`\log \frac1K \sum_k w_k`;
* the effective sample size is :math:`1 / \sum_k \bar w_k^2` with normalized weights;
* :math:`\hat k` is the shape of a generalized Pareto fit to the largest weights
  (PSIS, Vehtari et al., 2024, :mod:`pyro_aevb.psis`); above 0.7 the estimate is unreliable.

A model latent site that the guide does not sample is drawn from its prior, which
then is part of the proposal, so its log-density cancels from the weight: the
estimator stays unbiased for :math:`p(x)`, if noisier.

The estimators themselves live in the particles layer
(:mod:`pyro_aevb.particles.estimators`, which training's per-epoch test ELBO uses too) and
are importable from here. This module adds :func:`evaluate`, which prepares test data,
checks the pair once (or takes the :class:`~pyro_aevb.contract.PairSummary` that ``fit``
computed) and refuses estimates that mathematics rules out. Annealed importance
sampling sits a layer above (:mod:`pyro_aevb.ais`); :func:`pyro_aevb.evaluate` chooses
between the two (:mod:`pyro_aevb.evaluation_methods`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from .contexts import eval_mode, isolated
from .contract import PairSummary, batch_size_of, call_arguments, require_per_datapoint
from .data.dataset import Dataset, check_labels
from .data.test_set import prepare_fields
from .data.transforms import Transform
from .estimates import BOUND_SLACK_SE, Evaluation, ImplausibleEstimateError
from .label_usage import label_usage
from .memory import available_memory_bytes, check_memory, evaluation_memory_bytes
from .pair_data import adapt_to_data
from .particles import LOOP_ADVICE, importance_terms, probe_particle_mode, summarize_pair
from .particles.estimators import (
    MAX_ROWS,
    MIN_PARETO_PARTICLES,
    ImportanceEstimate,
    data_batches,
    elbo_per_datapoint,
    exact_log_evidence,
    importance_log_likelihood,
    log_importance_weights,
    pareto_k_hat,
    positive_int,
)

#: moved to their own modules; importable from here as before
__all__ = [
    "BOUND_SLACK_SE",
    "Evaluation",
    "ImplausibleEstimateError",
    "ImportanceEstimate",
    "LOOP_ADVICE",
    "MAX_ROWS",
    "MIN_PARETO_PARTICLES",
    "available_memory_bytes",
    "check_memory",
    "elbo_per_datapoint",
    "eval_mode",
    "evaluate",
    "evaluation_memory_bytes",
    "exact_log_evidence",
    "importance_log_likelihood",
    "importance_terms",
    "isolated",
    "label_usage",
    "log_importance_weights",
    "pareto_k_hat",
    "prepare_evaluation_data",
    "prepare_fields",
    "probe_particle_mode",
    "require_per_datapoint",
    "summarize_pair",
]


def _pair_dtype(*modules) -> torch.dtype | None:
    """The floating dtype of the pair's parameters and buffers (``None`` if it has none)."""
    for m in modules:
        if isinstance(m, torch.nn.Module):
            for t in (*m.parameters(), *m.buffers()):
                if t.is_floating_point():
                    return t.dtype
    return None


def _match_dtype(fields: dict, *modules) -> dict:
    """Floating fields in the pair's dtype: float64 data into a float32 network fail inside
    the first layer with a raw dtype message; converting loses nothing the float32
    parameters could use."""
    dtype = _pair_dtype(*modules)
    if dtype is None:
        return fields
    return {
        k: v.to(dtype)
        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dtype != dtype
        else v
        for k, v in fields.items()
    }


def _check_labels(model, fields: Mapping[str, torch.Tensor]) -> None:
    """Labels the model reads must lie in ``0 .. model.num_classes - 1``."""
    num_classes = getattr(model, "num_classes", None)
    if "y" not in fields or not isinstance(num_classes, int):
        return
    if "y" not in call_arguments(model, fields, "model"):
        return
    check_labels(fields["y"], num_classes, "test labels")


def _is_discrete_likelihood(summary: PairSummary) -> bool:
    supports = [support for _, support in summary.observed_fields.values()]
    return (
        bool(supports)
        and len(supports) == len(summary.observed_sites)
        and all(getattr(s, "is_discrete", False) for s in supports)
    )


def _pair_device(device, *modules) -> torch.device:
    """``device`` resolved, or where the pair's first parameter lives (else the CPU)."""
    if device is not None:
        from .device import resolve_device

        return resolve_device(device)
    modules = [m for m in modules if isinstance(m, torch.nn.Module)]
    params = [p for m in modules for p in m.parameters()]
    return params[0].device if params else torch.device("cpu")


def check_evaluation_arguments(num_particles, elbo_particles, batch_size, seed) -> tuple:
    """``(num_particles, elbo_particles, batch_size)`` as positive ints and ``seed`` an
    integer, or a ``ValueError`` naming the argument."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    return (
        positive_int(num_particles, "num_particles"),
        positive_int(elbo_particles, "elbo_particles"),
        positive_int(batch_size, "batch_size"),
    )


def prepare_evaluation_data(
    model: Callable, guide: Callable, data, transform, device
) -> tuple[dict, torch.device]:
    """The test ``data`` as fields on the pair's device (``device`` if given), transformed
    once (:func:`~pyro_aevb.data.test_set.prepare_fields`) and in the pair's float dtype;
    returns ``(fields, device)``."""
    device = _pair_device(device, model, guide)
    return _match_dtype(prepare_fields(data, transform, device), model, guide), device


def _refuse_implausible(evaluation: Evaluation) -> None:
    problems = evaluation.problems()
    if problems:
        raise ImplausibleEstimateError(
            "the evaluation gave impossible numbers: "
            + "; ".join(problems)
            + ". This is not a result: the parameters have most likely diverged numerically "
            "(a learning rate too large), or the model's log-densities are wrong. Pass "
            "check=False to inspect them anyway.",
            evaluation,
            problems,
        )


def _exact_evaluation(model, guide, fields, batch_size, seed, summary, check) -> Evaluation:
    r"""A pair without latent sites (a flow density model): its ELBO is :math:`\log p(x)`
    itself, computed once, with no particles to weigh; reported as exact, not as an
    importance-sampling estimate (whose ESS and k-hat would mean nothing)."""
    log_p = elbo_per_datapoint(model, guide, fields, 1, batch_size, seed=seed, summary=summary)
    exact = ImportanceEstimate(log_p, log_p, torch.ones_like(log_p), None, num_particles=1)
    evaluation = Evaluation(
        elbo=log_p,
        importance=exact,
        log_evidence=exact_log_evidence(model, fields),
        discrete_likelihood=_is_discrete_likelihood(summary),
        exact=True,
    )
    if check:
        _refuse_implausible(evaluation)
    return evaluation


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
    *,
    summary: PairSummary | None = None,
    check_support: bool = True,
) -> Evaluation:
    """Test ELBO and importance-sampled log-likelihood of a pair on ``data``, and the
    exact log-evidence for models with a ``log_evidence`` method (nats per data point).
    :func:`pyro_aevb.evaluate` is this with ``method="importance"``.

    :param data: a :class:`Dataset` in the shape the pair reads (e.g. ``test.flat()``)
        or a mapping of fields.
    :param transform: applied once to ``x`` (stochastic ones with the fixed test seed),
        the same transform the pair was trained with. NumPy arrays are accepted, and
        floating data are converted to the dtype of the pair's parameters.
    :param num_particles: importance samples per data point for the log-likelihood.
    :param elbo_particles: samples per data point for the ELBO estimate.
    :param check: refuse estimates that mathematics rules out (above the exact evidence,
        above 0 for a discrete likelihood, non-finite) with
        :class:`ImplausibleEstimateError`; see :meth:`Evaluation.problems`.
    :param progress: show a progress bar over the batches.
    :param summary: the pair's check as ``fit`` computed it (``FitResult.summary``): the
        pair is then not checked again.
    :param check_support: ``False`` skips the check of observed values against the
        likelihood's support, with the warning ``fit`` gives (as ``fit``'s option).
    :raises ValueError: for bad arguments or data, before any work.
    :raises MemoryError: when the importance weights of one batch cannot fit in memory
        (:func:`check_memory`), before any work.
    """
    num_particles, elbo_particles, batch_size = check_evaluation_arguments(
        num_particles, elbo_particles, batch_size, seed
    )
    fields, device = prepare_evaluation_data(model, guide, data, transform, device)
    # cut padded sequences per batch as fit does (a no-op for other data)
    model, guide = adapt_to_data(model, guide, fields)
    _check_labels(model, fields)
    check_memory(num_particles, batch_size, batch_size_of(fields), device)
    if summary is None:
        first = next(data_batches(fields, batch_size, None))
        # on a private stream: the caller's RNG and the estimates' draws stay as they were
        with isolated(seed, device), eval_mode(model, guide):
            summary = summarize_pair(
                model, guide, first, allow_model_enumeration=True, check_support=check_support
            )
    require_per_datapoint(summary)
    if not summary.latent_sites:
        return _exact_evaluation(model, guide, fields, batch_size, seed, summary, check)
    elbo = elbo_per_datapoint(
        model, guide, fields, elbo_particles, batch_size, seed=seed, summary=summary
    )
    importance = importance_log_likelihood(
        model, guide, fields, num_particles, batch_size, pareto=pareto, seed=seed + 1,
        summary=summary, progress=progress,
    )  # fmt: skip
    evaluation = Evaluation(
        elbo=elbo,
        importance=importance,
        log_evidence=exact_log_evidence(model, fields),
        discrete_likelihood=_is_discrete_likelihood(summary),
    )
    if check:
        _refuse_implausible(evaluation)
    return evaluation
