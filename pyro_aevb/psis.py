r"""Pareto-smoothed importance sampling diagnostics: the :math:`\hat k` of importance
weights, and what to do when it flags an estimate.

**k-hat** (Vehtari, Simpson, Gelman, Yao & Gabry, 2024, "Pareto smoothed importance
sampling", JMLR 25(72)). For ``S`` importance weights :math:`w_s` of one data point, fit
a generalized Pareto distribution (GPD) to the exceedances :math:`w_s - u` of the
``M = ceil(min(S / 5, 3 sqrt(S)))`` largest weights over the threshold :math:`u` (the
``M + 1``-th largest weight). Its shape :math:`\hat k` is an estimate of the tail index of
the weight distribution: the weights have a finite variance for :math:`k < 1/2` and a
finite mean for :math:`k < 1`; an importance-sampled estimate is reliable for
:math:`\hat k \le 0.7` (for ``S`` above about 2000; the threshold is
:math:`\min(1 - 1 / \log_{10} S, 0.7)`) and unreliable above it. The fit is Zhang &
Stephens' (2009) empirical Bayes estimator with Vehtari et al.'s weakly informative prior
on :math:`k` (:func:`pyro.ops.stats.fit_generalized_pareto`); the weights are scaled by
their largest one first (``k`` is scale-free). This is what ArviZ's ``psislw`` computes
(``reff = 1``), without ArviZ, xarray and pandas.

**Advice.** When :math:`\hat k` flags most points, more particles help only where the
tail allows: the ESS of ``K`` self-normalized weights grows in proportion to ``K`` only for
finite-variance weights (:math:`k < 1/2`), and Vehtari et al. trust :math:`\hat k` only
below :math:`1 - 1/\log_{10} S`, so a tail index :math:`k < 1` needs about
:math:`10^{1/(1-k)}` draws (:func:`particles_for_khat`). :func:`khat_advice` names the
number of particles when it is within reach and otherwise says that a better guide or
annealed importance sampling (``pyro-aevb evaluate RUN_DIR --method ais``, which does not
depend on the guide's tails) is the way.
"""

from __future__ import annotations

import math
import shlex
import warnings

import numpy as np
import torch
from pyro.ops.stats import fit_generalized_pareto

#: above this :math:`\hat k` an importance-sampled estimate is unreliable
KHAT_THRESHOLD = 0.7
#: fewest weights in the tail for the GPD fit (ArviZ's limit); fewer give k = inf
MIN_TAIL = 5
#: the mean ESS :func:`khat_advice` aims for when it suggests a number of particles
TARGET_ESS = 100.0
#: the most particles :func:`khat_advice` suggests; beyond, it says more will not do
MAX_ADVISED_PARTICLES = 100_000


def tail_size(num_samples: int) -> int:
    """``M = ceil(min(S / 5, 3 sqrt(S)))``: how many of the largest of ``S`` weights the
    GPD is fitted to (Vehtari et al., 2024, with relative efficiency 1)."""
    return int(math.ceil(min(num_samples / 5.0, 3.0 * math.sqrt(num_samples))))


def pareto_k_hat(log_weights: np.ndarray | torch.Tensor) -> np.ndarray:
    r"""PSIS :math:`\hat k` per row of ``log_weights`` ``(B, S)`` (log importance weights,
    nats; any additive constant per row), as float64 ``(B,)``.

    A row with fewer than :data:`MIN_TAIL` distinct weights above the threshold gets
    ``inf`` (no fit possible: the weights are dominated by a handful of draws), a row
    with a non-finite largest weight ``nan``.
    """
    log_w = torch.as_tensor(np.asarray(log_weights, dtype=np.float64))
    if log_w.dim() != 2:
        raise ValueError(f"log_weights must be (rows, samples), got shape {tuple(log_w.shape)}")
    num_samples = log_w.shape[1]
    # the threshold is the (M + 1)-th largest weight, floored at the smallest positive
    # float so that exp() of the tail stays representable
    cutoff_index = num_samples - tail_size(num_samples) - 1
    if cutoff_index < 0:
        return np.full(log_w.shape[0], np.inf)
    floor = math.log(np.finfo(np.float64).tiny)
    out = np.empty(log_w.shape[0])
    for row, values in enumerate(log_w):
        top = values.max()
        if not torch.isfinite(top):
            out[row] = np.nan
            continue
        x = values - top
        cutoff = max(float(x.sort().values[cutoff_index]), floor)
        tail = x[x > cutoff]
        if tail.numel() < MIN_TAIL:
            out[row] = np.inf
            continue
        exceedances = tail.exp() - math.exp(cutoff)
        out[row] = fit_generalized_pareto(exceedances)[0]
    return out


def particles_for_ess(num_particles: int, ess_mean: float, target: float = TARGET_ESS) -> int:
    r"""The number of particles ``K'`` at which the mean ESS would reach ``target``, from a
    run with ``K = num_particles`` and mean ESS ``ess_mean``: ESS grows about linearly in
    ``K`` for a fixed guide (:math:`\mathrm{ESS} \approx K / (1 + \chi^2(p \| q))`), so
    :math:`K' = \lceil K \cdot \mathrm{target} / \mathrm{ESS} \rceil`, and never fewer
    than ``K``. For heavy tails (:math:`\hat k > 1/2`) the ESS grows more slowly than
    that, so ``K'`` is a lower estimate: check the new run's :math:`\hat k` again."""
    if ess_mean <= 0 or not math.isfinite(ess_mean):
        raise ValueError(f"ess_mean must be positive and finite, got {ess_mean}")
    return max(int(num_particles), int(math.ceil(num_particles * target / ess_mean)))


def particles_for_khat(k_hat: float) -> float:
    r"""Draws needed before a tail index :math:`k < 1` stops flagging: Vehtari et al.
    (2024) trust :math:`\hat k` below :math:`1 - 1 / \log_{10} S`, so
    :math:`S > 10^{1 / (1 - k)}` (about 2,150 for 0.7, 100,000 for 0.8, :math:`10^{10}`
    for 0.9); ``inf`` for :math:`k \ge 1`, where no number of draws does."""
    return math.inf if not k_hat < 1 else 10.0 ** (1.0 / (1.0 - k_hat))


def khat_advice(metrics: dict, run_dir: str | None = None) -> str | None:
    r"""What to do when :math:`\hat k` flags most test points of an evaluation, from its
    metrics (``pareto_k_mean``, ``pareto_k_fraction_above_0.7``, ``ess_mean``,
    ``log_likelihood_particles``), or ``None`` when fewer than half are flagged.

    More particles: the ESS asks for :func:`particles_for_ess`, the tail for
    :func:`particles_for_khat` at the mean :math:`\hat k`; the advice names the larger
    when it is within :data:`MAX_ADVISED_PARTICLES`, and otherwise says that more
    particles will not do (the ESS grows far more slowly than ``K`` for such tails).

    :param run_dir: the run directory, to name the exact commands; without it the Python
        route (``evaluate(..., num_particles=...)``, ``method="ais"``) is named.
    """
    fraction = metrics.get("pareto_k_fraction_above_0.7")
    if fraction is None or not fraction > 0.5:
        return None
    k, ess, k_hat = (
        int(metrics["log_likelihood_particles"]),
        float(metrics["ess_mean"]),
        float(metrics["pareto_k_mean"]),
    )
    by_ess, by_tail = particles_for_ess(k, ess), particles_for_khat(k_hat)
    more = max(by_ess, math.ceil(by_tail)) if by_tail <= MAX_ADVISED_PARTICLES else None
    if run_dir is not None:
        where = shlex.quote(str(run_dir))
        particles = f"pyro-aevb evaluate {where} --particles {more}"
        ais = f"pyro-aevb evaluate {where} --method ais"
    else:
        particles = f"evaluate(..., num_particles={more})"
        ais = 'evaluate(..., method="ais")'
    if more is not None:
        step = (
            f"(1) more particles: about K = {more} (the mean ESS {ess:.1f} of K = {k} asks "
            f"for {by_ess} to reach {TARGET_ESS:.0f}; a mean k-hat of {k_hat:.2f} needs "
            f"{by_tail:,.0f} draws to be trusted): {particles}, then recheck k-hat; "
        )
    else:
        step = (
            f"(1) more particles will not make it reliable: the mean ESS {ess:.1f} of K = {k} "
            f"would ask for K = {by_ess} if it grew in proportion to K, but with a mean k-hat "
            f"of {k_hat:.2f} it grows far more slowly (reliable importance sampling needs "
            "about 10^(1/(1 - k)) draws for k < 1, and no number for k >= 1); a guide closer "
            "to the posterior (more epochs, or an importance-weighted objective) usually lowers "
            "k-hat; "
        )
    return (
        f"k-hat exceeds {KHAT_THRESHOLD} for most test points ({100 * fraction:.0f}%, mean "
        f"k-hat {k_hat:.2f}): the importance weights are too heavy-tailed, so the "
        "log-likelihood is an unreliable lower bound that may lie far below log p(x). "
        f"Next steps: {step}(2) annealed importance sampling, which does not depend on the "
        f"guide's tails: {ais} (a stochastic lower bound too, tighter as its annealing "
        "steps grow)."
    )


class UnreliableEstimateWarning(UserWarning):
    """k-hat flags most points of an importance-sampled evaluation (:func:`khat_advice`)."""


def warn_if_unreliable(result, run_dir: str | None = None):
    """Warn (:class:`UnreliableEstimateWarning`) with :func:`khat_advice` when it has
    advice, for ``result`` an evaluation (anything with ``metrics()``, such as
    :class:`pyro_aevb.estimates.Evaluation`) or its metrics dict; returns ``result``.
    The warning points at the caller of the function that calls this one."""
    metrics = result.metrics() if hasattr(result, "metrics") else result
    advice = khat_advice(metrics, run_dir)
    if advice is not None:
        warnings.warn(advice, UnreliableEstimateWarning, stacklevel=3)
    return result


__all__ = [
    "KHAT_THRESHOLD",
    "MAX_ADVISED_PARTICLES",
    "TARGET_ESS",
    "UnreliableEstimateWarning",
    "khat_advice",
    "pareto_k_hat",
    "particles_for_ess",
    "particles_for_khat",
    "tail_size",
    "warn_if_unreliable",
]
