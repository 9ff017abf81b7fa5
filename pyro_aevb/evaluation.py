r"""Evaluation of any model/guide pair: per-data-point ELBO, importance-sampled
log-likelihood, effective sample size and Pareto :math:`\hat k`. All in nats per
data point.

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
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping

import numpy as np
import torch

from .arguments import batch_rows
from .contexts import eval_mode, isolated
from .contract import PairSummary, batch_size_of, call_arguments, check_pair
from .data.dataset import Dataset, check_labels
from .data.test_set import prepare_fields
from .data.transforms import Transform
from .estimates import BOUND_SLACK_SE, Evaluation, ImplausibleEstimateError, ImportanceEstimate
from .memory import available_memory_bytes, check_memory, evaluation_memory_bytes
from .particles import LOOP_ADVICE, importance_terms, probe_particle_mode
from .psis import pareto_k_hat, warn_if_unreliable

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
    "log_importance_weights",
    "pareto_k_hat",
    "prepare_fields",
    "probe_particle_mode",
    "require_per_datapoint",
]


#: the default budget of rows (particles x data points) in one forward pass
MAX_ROWS = 20_000
#: fewest importance samples for which PSIS k-hat is reported: its tail fit uses
#: min(K/5, 3 sqrt(K)) draws, too few below this to mean anything
MIN_PARETO_PARTICLES = 100


def log_importance_weights(
    model: Callable,
    guide: Callable,
    batch: Mapping[str, torch.Tensor],
    num_particles: int,
    summary: PairSummary,
) -> torch.Tensor:
    r"""Log-weights :math:`\log p(x_i, z_k) - \log q(z_k \mid x_i)`, shape ``(K, B)``, nats,
    with guide sites marked for enumeration summed out (see :func:`importance_terms`)."""
    return importance_terms(model, guide, batch, num_particles, summary)[0]


def _batches(fields: Mapping[str, torch.Tensor], batch_size: int, device) -> Iterator[dict]:
    n = batch_size_of(fields)
    for start in range(0, n, batch_size):
        index = torch.arange(start, min(n, start + batch_size))
        yield {k: _to(batch_rows(v, index, k, n), device) for k, v in fields.items()}


def _to(value, device):
    return value.to(device) if hasattr(value, "to") and device is not None else value


def _positive_int(value, name: str) -> int:
    """``value`` as an ``int`` >= 1, or a ``ValueError`` naming ``name`` (bools,
    floats with a fraction and strings are refused, not truncated)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value}")
    return int(value)


def _progress_bar(enabled: bool, total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)


@torch.no_grad()
def importance_log_likelihood(
    model: Callable,
    guide: Callable,
    fields: Mapping[str, torch.Tensor],
    num_particles: int = 1000,
    batch_size: int = 100,
    particle_chunk: int | None = None,
    pareto: bool = True,
    seed: int | None = 0,
    summary: PairSummary | None = None,
    progress: bool = False,
) -> ImportanceEstimate:
    r"""Importance-sampled :math:`\log p(x_i)` with the guide as proposal, per data point.

    :param fields: data fields (``x``, ``y``, ...), each ``(N, ...)``, already
        transformed to the likelihood's support and on the pair's device.
    :param num_particles: importance samples ``K`` per data point (up to 5000 or more).
    :param batch_size: data points per pass.
    :param particle_chunk: particles per pass; default ``MAX_ROWS // batch_size``.
        Peak memory grows with ``particle_chunk * batch_size`` rows of the widest
        layers: for the default VAE (784-500-500-20) and the default 20 000 rows
        that is about 0.2 GB (measured: peak resident memory +207 MB). All K
        weights of one batch (``K * batch_size`` floats, 2 MB for K = 5000) are
        kept for the ESS and PSIS.
    :param pareto: also compute PSIS :math:`\hat k` (:mod:`pyro_aevb.psis`), when ``K >= 100``.
    :param seed: seed of a private RNG stream (``None``: use the global one).
    :param progress: show a tqdm bar over the batches of data points.
    :returns: an :class:`ImportanceEstimate`; its means over data points are the
        test log-likelihood and test ELBO in nats per data point.
    """
    num_particles = _positive_int(num_particles, "num_particles")
    batch_size = _positive_int(batch_size, "batch_size")
    device = next(iter(fields.values())).device
    chunk = particle_chunk or max(1, MAX_ROWS // batch_size)
    out = {"ll": [], "elbo": [], "ess": [], "k": []}
    n = next(iter(fields.values())).shape[0]
    bar = _progress_bar(progress, math.ceil(n / batch_size), f"log-likelihood (K={num_particles})")
    with isolated(seed, device), eval_mode(model, guide), bar:
        for batch in _batches(fields, batch_size, device):
            bar.update(1)
            if summary is None:
                summary = check_pair(model, guide, batch, allow_model_enumeration=True)
            if summary.particle_mode is None:
                summary.particle_mode = probe_particle_mode(model, guide, batch, summary)
            vectorized = summary.particle_mode == "vectorized"
            parts = []
            # enumeration multiplies the rows of a pass by the number of values
            step = max(1, chunk // summary.guide_enumeration_size)
            for start in range(0, num_particles, step):
                k = min(step, num_particles - start)
                parts.append(importance_terms(model, guide, batch, k, summary, vectorized))
            log_w = torch.cat([w for w, _ in parts]).double()  # (K, B)
            out["ll"].append(torch.logsumexp(log_w, 0) - math.log(num_particles))
            out["elbo"].append(torch.cat([e for _, e in parts]).double().mean(0))
            normalized = torch.softmax(log_w, 0)
            out["ess"].append(1.0 / normalized.pow(2).sum(0))
            if pareto and num_particles >= MIN_PARETO_PARTICLES:
                out["k"].append(torch.as_tensor(pareto_k_hat(log_w.T.cpu().numpy())))
    cat = lambda xs: torch.cat([x.cpu() for x in xs])
    return ImportanceEstimate(
        log_likelihood=cat(out["ll"]),
        elbo=cat(out["elbo"]),
        ess=cat(out["ess"]),
        pareto_k=cat(out["k"]) if out["k"] else None,
        num_particles=int(num_particles),
    )


def elbo_per_datapoint(
    model: Callable,
    guide: Callable,
    fields: Mapping[str, torch.Tensor],
    num_particles: int = 1,
    batch_size: int = 100,
    seed: int | None = 0,
) -> torch.Tensor:
    r"""Monte Carlo ELBO :math:`\frac1K\sum_k \log w_k` per data point, shape ``(N,)``, nats."""
    est = importance_log_likelihood(
        model, guide, fields, num_particles, batch_size, pareto=False, seed=seed
    )
    return est.elbo


def exact_log_evidence(model: Callable, fields: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    r"""``model.log_evidence(**fields)``, the closed-form :math:`\log p(x)` per data point
    ``(N,)`` in nats, for models that have one (e.g. factor analysis); else ``None``."""
    method = getattr(model, "log_evidence", None)
    if not callable(method):
        return None
    with torch.no_grad():
        return method(**call_arguments(method, fields, "model")).cpu()


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


def require_per_datapoint(summary: PairSummary) -> None:
    """Raise ``ValueError`` if the pair has latent sites outside the data plate, which
    per-data-point evaluation (test ELBO, log-likelihood) cannot handle. :func:`fit`
    with test data should call it after :func:`check_pair`, before the first step."""
    if summary.global_latent_sites:
        raise ValueError(
            f"per-data-point evaluation needs every latent site inside the data plate, but "
            f"{summary.global_latent_sites} are global; evaluate such models with a "
            "joint (whole-batch) estimator instead, or fit without test data"
        )


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
    **ais_options,
) -> Evaluation:
    """Test ELBO and importance-sampled log-likelihood of a pair on ``data``, and the
    exact log-evidence for models with a ``log_evidence`` method.

    With ``method="ais"``, annealed importance sampling instead: returns a
    :class:`pyro_aevb.ais.AISEvaluation`; ``ais_options`` (``num_chains``, ``num_steps``,
    ``num_leapfrog``, ``initial``, ...) go to :func:`pyro_aevb.ais.ais_log_likelihood`.

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
    :raises ValueError: for bad arguments or data, before any work.
    :raises MemoryError: when the importance weights of one batch cannot fit in memory
        (:func:`check_memory`), before any work.
    """
    num_particles = _positive_int(num_particles, "num_particles")
    elbo_particles = _positive_int(elbo_particles, "elbo_particles")
    batch_size = _positive_int(batch_size, "batch_size")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    device = _pair_device(device, model, guide)
    if method not in ("importance", "ais"):
        raise ValueError(f"unknown evaluation method '{method}'; choose 'importance' or 'ais'")
    if ais_options and method != "ais":
        raise TypeError(f"options {sorted(ais_options)} apply to method='ais' only")
    fields = _match_dtype(prepare_fields(data, transform, device), model, guide)
    if method == "ais":
        from .ais import ais_evaluation

        return ais_evaluation(model, guide, fields, seed=seed, **ais_options)
    _check_labels(model, fields)
    n = batch_size_of(fields)
    check_memory(num_particles, batch_size, n, device)
    first = next(_batches(fields, batch_size, None))
    # on a private stream: the caller's RNG and the estimates' draws stay as they were
    with isolated(seed, device), eval_mode(model, guide):
        summary = check_pair(model, guide, first, allow_model_enumeration=True)
    require_per_datapoint(summary)
    elbo = elbo_per_datapoint(model, guide, fields, elbo_particles, batch_size, seed=seed)
    importance = importance_log_likelihood(
        model,
        guide,
        fields,
        num_particles,
        batch_size,
        pareto=pareto,
        seed=seed + 1,
        progress=progress,
    )
    evaluation = Evaluation(
        elbo=elbo,
        importance=importance,
        log_evidence=exact_log_evidence(model, fields),
        discrete_likelihood=_is_discrete_likelihood(summary),
    )
    problems = evaluation.problems() if check else []
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
    return warn_if_unreliable(evaluation)  # k-hat flags most points: say what to do


def __getattr__(name):
    # label_usage evaluates with importance_log_likelihood: imported lazily, one way
    if name == "label_usage":
        from .label_usage import label_usage

        return label_usage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
