r"""Per-data-point estimators built on the particle engine: the importance-sampled
log-likelihood, the Monte Carlo ELBO and the closed-form evidence, in nats per data point.

They sit in the particles layer because training's per-epoch test ELBO
(:mod:`pyro_aevb.training.history`) needs them, as evaluation (:func:`pyro_aevb.evaluate`)
and AIS do; :mod:`pyro_aevb.evaluation` re-exports them. With the weights
:math:`\log w_k(x_i) = \log p(x_i, z_k) - \log q(z_k \mid x_i)`,
:math:`z_k \sim q(z \mid x_i)` (:func:`~pyro_aevb.particles.importance_terms`):

* the ELBO estimate is :math:`\frac1K \sum_k \log w_k`;
* the importance-sampled log-likelihood (the IWAE bound of Burda et al., 2016) is
  :math:`\log \frac1K \sum_k w_k`;
* the effective sample size is :math:`1 / \sum_k \bar w_k^2` with normalized weights;
* :math:`\hat k` is the shape of a generalized Pareto fit to the largest weights
  (PSIS, Vehtari et al., 2024, :mod:`pyro_aevb.psis`); above 0.7 the estimate is unreliable.

A caller that has checked the pair already (``fit``, :func:`pyro_aevb.evaluate`) passes
its :class:`~pyro_aevb.contract.PairSummary`; without one the first batch is checked
here (:func:`~pyro_aevb.particles.summarize_pair`) on a forked random stream, so the
estimate's draws are the same either way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from ..arguments import batch_rows
from ..contexts import eval_mode, forked_rng, isolated
from ..contract import PairSummary, batch_size_of, call_arguments
from ..psis import pareto_k_hat
from .importance import importance_terms, probe_particle_mode
from .summary import summarize_pair

#: the default budget of rows (particles x data points) in one forward pass
MAX_ROWS = 20_000
#: fewest importance samples for which PSIS k-hat is reported: its tail fit uses
#: min(K/5, 3 sqrt(K)) draws, too few below this to mean anything
MIN_PARETO_PARTICLES = 100


@dataclass
class ImportanceEstimate:
    """Per-data-point results of :func:`importance_log_likelihood` (all shape ``(N,)``)."""

    #: :math:`\log \frac1K \sum_k w_k`, nats
    log_likelihood: torch.Tensor
    #: :math:`\frac1K \sum_k \log w_k`, the ELBO estimate from the same draws, nats
    elbo: torch.Tensor
    #: effective sample size of the K weights, in [1, K]
    ess: torch.Tensor
    #: PSIS shape estimate, or None if not computed
    pareto_k: torch.Tensor | None
    num_particles: int


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


def data_batches(fields: Mapping[str, torch.Tensor], batch_size: int, device) -> Iterator[dict]:
    """Consecutive batches of ``batch_size`` data points of ``fields`` (on ``device``,
    unless ``None``); fields of another length go whole into every batch."""
    n = batch_size_of(fields)
    for start in range(0, n, batch_size):
        index = torch.arange(start, min(n, start + batch_size))
        yield {k: _to(batch_rows(v, index, k, n), device) for k, v in fields.items()}


def _to(value, device):
    return value.to(device) if hasattr(value, "to") and device is not None else value


def positive_int(value, name: str) -> int:
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
    :param summary: the pair's check (:func:`~pyro_aevb.particles.summarize_pair`), if
        the caller has it; else the first batch is checked here, on a forked stream.
    :param progress: show a tqdm bar over the batches of data points.
    :returns: an :class:`ImportanceEstimate`; its means over data points are the
        test log-likelihood and test ELBO in nats per data point.
    """
    num_particles = positive_int(num_particles, "num_particles")
    batch_size = positive_int(batch_size, "batch_size")
    device = next(iter(fields.values())).device
    chunk = particle_chunk or max(1, MAX_ROWS // batch_size)
    out = {"ll": [], "elbo": [], "ess": [], "k": []}
    n = next(iter(fields.values())).shape[0]
    bar = _progress_bar(progress, math.ceil(n / batch_size), f"log-likelihood (K={num_particles})")
    with isolated(seed, device), eval_mode(model, guide), bar:
        for batch in data_batches(fields, batch_size, device):
            bar.update(1)
            if summary is None:
                with forked_rng(device):  # the estimate's draws do not depend on the check
                    summary = summarize_pair(model, guide, batch, allow_model_enumeration=True)
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
    summary: PairSummary | None = None,
) -> torch.Tensor:
    r"""Monte Carlo ELBO :math:`\frac1K\sum_k \log w_k` per data point, shape ``(N,)``, nats
    (``summary`` as for :func:`importance_log_likelihood`)."""
    est = importance_log_likelihood(
        model, guide, fields, num_particles, batch_size, pareto=False, seed=seed, summary=summary
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
