r"""The AIS estimator of :math:`\log p(x)` per data point: :func:`anneal` runs the
chains of one batch along the path (:mod:`pyro_aevb.ais.path`) with the HMC kernel
(:mod:`pyro_aevb.ais.kernel`), and :func:`ais_log_likelihood` runs it over a data set
in batches; :func:`ais_evaluation` is what :func:`pyro_aevb.evaluate` calls for
``method="ais"``. All results are in nats per data point."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from ..contexts import eval_mode, isolated
from ..contract import PairSummary, check_pair
from ..evaluation import MAX_ROWS, exact_log_evidence
from .kernel import hmc_transition
from .path import PairDensity, _check_schedule, sigmoid_schedule


@dataclass
class AnnealingRun:
    """One AIS run over a batch: final log-weights and diagnostics."""

    #: log-weights, ``(C, B)``
    log_weights: torch.Tensor
    #: mean acceptance probability per data point over transitions and chains, ``(B,)``
    acceptance: torch.Tensor
    #: the adapted step sizes per transition, ``(T - 1, B)``
    step_sizes: torch.Tensor


def anneal(
    density: PairDensity,
    start: torch.Tensor,
    betas: torch.Tensor,
    step_size: float | torch.Tensor = 0.05,
    num_leapfrog: int = 10,
    target_accept: float = 0.65,
    adapt: bool = True,
    adapt_rate: float = 1.0,
    progress: Callable[[], None] | None = None,
) -> AnnealingRun:
    r"""Run AIS chains from states ``start`` ``(C, B, D)`` along the inverse temperatures
    ``betas`` ``(T + 1,)`` (increasing for forward AIS, decreasing for the reverse chains
    of BDMC), adding :math:`(\beta_t - \beta_{t-1})[\log f_1 - \log f_0]` to each log
    weight at the current state before each HMC transition at :math:`\beta_t`.

    :param step_size: initial leapfrog step, a number or one per data point ``(B,)``;
        with ``adapt=False`` a ``(T - 1, B)`` tensor gives one per transition.
    :param progress: called once per annealing step (a progress bar's update).
    """
    point = density(start)
    betas = [float(b) for b in betas]
    batch = start.shape[1]
    log_w = torch.zeros(start.shape[:2], dtype=torch.float64, device=start.device)
    eps = torch.as_tensor(step_size, dtype=start.dtype, device=start.device)
    schedule = eps if eps.dim() == 2 else None
    eps = eps.expand(batch).clone() if eps.dim() < 2 else eps[0]
    accept_sum = torch.zeros(batch, dtype=torch.float64, device=start.device)
    used = []
    for t in range(1, len(betas)):
        increment = (betas[t] - betas[t - 1]) * (point.log_joint - point.log_initial)
        log_w = log_w + increment.double()
        if t < len(betas) - 1:
            if schedule is not None:
                eps = schedule[t - 1]
            used.append(eps)
            point, accept_prob = hmc_transition(point, density, betas[t], eps, num_leapfrog)
            mean_accept = accept_prob.mean(0)
            accept_sum += mean_accept.double()
            if adapt and schedule is None:
                # uses acceptances of transitions already made only (see module docstring)
                eps = eps * torch.exp(adapt_rate * (mean_accept - target_accept))
        if progress is not None:
            progress()
    transitions = max(1, len(betas) - 2)
    return AnnealingRun(
        log_weights=log_w,
        acceptance=accept_sum / transitions if len(betas) > 2 else accept_sum * math.nan,
        step_sizes=torch.stack(used) if used else torch.zeros(0, batch),
    )


def log_mean_exp_with_se(log_w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Per column of ``log_w`` ``(C, B)``: :math:`\log \frac1C \sum_c w_c`, its standard
    error by the delta method,

    .. math::

        \mathrm{se}(\log \hat Z) \approx \frac{\mathrm{sd}(w)}{\sqrt C\, \bar w}
        = \sqrt{\frac{C / \mathrm{ESS} - 1}{C - 1}},

    and the effective sample size :math:`\mathrm{ESS} = 1 / \sum_c \bar w_c^2` of the
    normalized weights; each ``(B,)``. The s.e. is NaN for one chain."""
    num = log_w.shape[0]
    log_mean = log_w.logsumexp(0) - math.log(num)
    ess = 1.0 / torch.softmax(log_w, 0).pow(2).sum(0)
    if num < 2:
        return log_mean, torch.full_like(log_mean, math.nan), ess
    se = ((num / ess - 1.0).clamp(min=0.0) / (num - 1)).sqrt()
    return log_mean, se, ess


@dataclass
class AISEstimate:
    """Per-data-point results of :func:`ais_log_likelihood` (tensors of shape ``(N,)``)."""

    #: :math:`\log \frac1C \sum_c w_c`, nats: a stochastic lower bound on :math:`\log p(x)`
    log_likelihood: torch.Tensor
    #: its standard error over chains (delta method, :func:`log_mean_exp_with_se`), nats
    se: torch.Tensor
    #: mean HMC acceptance probability over transitions and chains
    acceptance: torch.Tensor
    #: effective sample size of the final weights, in ``[1, C]``
    ess: torch.Tensor
    #: final log-weights, ``(N, C)``
    log_weights: torch.Tensor
    num_steps: int
    num_chains: int
    num_leapfrog: int
    initial: str
    seconds: float = math.nan


def _batches(fields, batch_size):
    n = next(iter(fields.values())).shape[0]
    for start in range(0, n, batch_size):
        yield {k: v[start : start + batch_size] for k, v in fields.items()}


def default_batch_size(num_chains: int, summary: PairSummary) -> int:
    """Data points per pass so that chains x points x enumerated values stay within
    :data:`pyro_aevb.evaluation.MAX_ROWS` rows (the importance sampler's budget)."""
    return max(1, MAX_ROWS // (int(num_chains) * summary.guide_enumeration_size))


@contextlib.contextmanager
def intra_op_threads(num_threads: int | None):
    """Run the block with torch's intra-op thread count set to ``num_threads`` (``None``:
    leave it), restored after.

    Why AIS offers this: one leapfrog step is a handful of small operations (a forward
    and backward pass of chains x points rows), and each multi-threaded operation waits
    for its slowest thread. On a CPU that other processes share, a descheduled thread
    stalls every operation: on this project's 2-core machine under a load of 6, the
    default VAE's density evaluation of 80 rows took 0.72 s with torch's default 2
    threads and 0.022-0.049 s with 1 (``python -m bench.ais``, the profile in
    bench/README.md). The numbers are the same either way."""
    if num_threads is None:
        yield
        return
    if int(num_threads) < 1:
        raise ValueError(f"num_threads must be at least 1 (or None), got {num_threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _progress_bar(total: int, enabled: bool | None, desc: str):
    import sys

    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="step", disable=not enabled, leave=False)


def _check_common(num_chains, num_steps, num_leapfrog, schedule):
    if int(num_chains) < 1:
        raise ValueError(f"num_chains must be at least 1, got {num_chains}")
    if int(num_leapfrog) < 1:
        raise ValueError(f"num_leapfrog must be at least 1, got {num_leapfrog}")
    if schedule is None:
        return sigmoid_schedule(num_steps)
    return _check_schedule(schedule)


@torch.no_grad()
def ais_log_likelihood(
    model: Callable,
    guide: Callable,
    fields: Mapping[str, torch.Tensor],
    num_chains: int = 16,
    num_steps: int = 100,
    num_leapfrog: int = 10,
    step_size: float = 0.05,
    target_accept: float = 0.65,
    adapt: bool = True,
    initial: str = "guide",
    schedule: torch.Tensor | None = None,
    batch_size: int | None = None,
    seed: int | None = 0,
    progress: bool | None = False,
    num_threads: int | None = None,
) -> AISEstimate:
    r"""AIS estimate of :math:`\log p(x_i)` per data point (see the module docstring).

    :param fields: data fields, each ``(N, ...)``, already transformed to the
        likelihood's support and on the pair's device.
    :param num_chains: ``C`` chains per data point.
    :param num_steps: ``T`` annealing steps (``T - 1`` HMC transitions), on the sigmoid
        schedule :func:`sigmoid_schedule` unless ``schedule`` (``(T + 1,)``) is given.
    :param num_leapfrog: leapfrog steps per transition; the cost is about
        ``C * T * num_leapfrog`` gradient evaluations of the pair per data point.
    :param step_size: initial leapfrog step in unconstrained coordinates.
    :param target_accept: the acceptance rate the step sizes adapt towards.
    :param adapt: adapt the step sizes (else fixed: exactly unbiased weights).
    :param initial: ``"guide"`` (start from :math:`q(z|x)`) or ``"prior"``.
    :param batch_size: data points per pass; default :func:`default_batch_size`.
    :param progress: tqdm bar over annealing steps; ``None``: when stderr is a terminal.
    :param num_threads: torch intra-op threads for the run (restored after; ``None``:
        leave them); 1 is much faster on a CPU shared with other processes
        (:func:`intra_op_threads`).
    """
    import time

    betas = _check_common(num_chains, num_steps, num_leapfrog, schedule)
    device = next(iter(fields.values())).device
    t0 = time.perf_counter()
    out = {"ll": [], "se": [], "acc": [], "ess": [], "w": []}
    first = {k: v[:1] for k, v in fields.items()}
    with isolated(seed, device), eval_mode(model, guide), intra_op_threads(num_threads):
        summary = check_pair(model, guide, first, allow_model_enumeration=True)
        size = batch_size or default_batch_size(num_chains, summary)
        n = next(iter(fields.values())).shape[0]
        total = math.ceil(n / size) * (betas.numel() - 1)
        with _progress_bar(total, progress, "AIS") as bar:
            for batch in _batches(fields, size):
                density = PairDensity(model, guide, batch, num_chains, summary, initial)
                run = anneal(
                    density,
                    density.sample_initial(),
                    betas,
                    step_size,
                    num_leapfrog,
                    target_accept,
                    adapt,
                    progress=bar.update,
                )
                ll, se, ess = log_mean_exp_with_se(run.log_weights)
                for key, value in zip(
                    out, (ll, se, run.acceptance, ess, run.log_weights.T), strict=True
                ):
                    out[key].append(value.cpu())
    return AISEstimate(
        log_likelihood=torch.cat(out["ll"]),
        se=torch.cat(out["se"]),
        acceptance=torch.cat(out["acc"]),
        ess=torch.cat(out["ess"]),
        log_weights=torch.cat(out["w"]),
        num_steps=betas.numel() - 1,
        num_chains=int(num_chains),
        num_leapfrog=int(num_leapfrog),
        initial=initial,
        seconds=time.perf_counter() - t0,
    )


@dataclass
class AISEvaluation:
    """What :func:`pyro_aevb.evaluate` returns for ``method="ais"``."""

    ais: AISEstimate
    #: closed-form log-evidence per data point, for models that have one
    log_evidence: torch.Tensor | None = None

    def metrics(self) -> dict:
        """Means over data points (nats per data point), keys naming the estimator:
        ``test_log_likelihood_ais`` with ``_se`` (spread over data points, as for the
        importance-sampled ``test_log_likelihood``) and ``_mc_se`` (the Monte Carlo error of
        the mean from the chains' per-point s.e.)."""
        ll, n = self.ais.log_likelihood, self.ais.log_likelihood.numel()
        out = {
            "test_log_likelihood_ais": float(ll.mean()),
            "test_log_likelihood_ais_se": float(ll.std() / math.sqrt(n)) if n > 1 else math.nan,
            "test_log_likelihood_ais_mc_se": float(self.ais.se.pow(2).sum().sqrt() / n),
            "ais_chain_se_mean": float(self.ais.se.mean()),
            "ais_acceptance_mean": float(self.ais.acceptance.mean()),
            "ais_ess_mean": float(self.ais.ess.mean()),
            "ais_steps": self.ais.num_steps,
            "ais_chains": self.ais.num_chains,
            "ais_leapfrog_steps": self.ais.num_leapfrog,
            "ais_initial": self.ais.initial,
            "ais_num_test_points": n,
            "ais_seconds": self.ais.seconds,
        }
        if self.log_evidence is not None:
            out["ais_points_log_evidence"] = float(self.log_evidence.mean())
        return out


def ais_evaluation(
    model: Callable, guide: Callable, fields: Mapping[str, torch.Tensor], seed: int = 0, **options
) -> AISEvaluation:
    """:func:`ais_log_likelihood` on prepared ``fields`` wrapped for :func:`pyro_aevb.evaluate`;
    ``options`` are its keyword arguments."""
    estimate = ais_log_likelihood(model, guide, fields, seed=seed, **options)
    return AISEvaluation(estimate, exact_log_evidence(model, fields))


# -- bidirectional Monte Carlo -----------------------------------------------------------------
