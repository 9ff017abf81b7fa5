r"""Bidirectional Monte Carlo (BDMC): forward and reverse AIS on data simulated from
the model bracket :math:`\log p(x)` (see :mod:`pyro_aevb.ais`); nats per data point.

**Crossed brackets.** Both bounds are stochastic: :math:`\mathbb E[\text{lower}_i] \le
\log p(x_i) \le \mathbb E[\text{upper}_i]` for every simulated point, so the mean gap
:math:`\bar g = \frac1N \sum_i (\text{upper}_i - \text{lower}_i)` has a mean
:math:`\ge 0`, and it can fall below 0 only by Monte Carlo noise, judged by its standard
error over the points (:attr:`BDMCEstimate.gap_se`). :func:`check_bracket` warns
(:class:`CrossedBoundsWarning`) when :math:`\bar g < -\mathrm{se}`, and refuses the
result (:class:`CrossedBoundsError`) when :math:`\bar g < -3\,\mathrm{se}`
(:data:`CROSSED_ERROR_SE`), which noise does less than 0.2% of the time (one-sided
normal tail). Beyond the noise a crossing has one of three causes: step sizes adapted
with few chains (the estimator is unbiased only as ``C`` grows), per-point weights so
heavy-tailed that their mean over the points has not settled (both shrink as the
annealing steps grow: the advice is :data:`MORE_STEPS_FACTOR` times the steps), or a
model whose distributions do not sample what their ``log_prob`` scores (the simulated
data then do not come from the density the bounds use)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from pyro import poutine

from ..contexts import eval_mode, isolated
from ..contract import PairSummary, call_arguments, check_pair, is_latent_site
from ..evaluation import exact_log_evidence
from .estimator import (
    _check_common,
    _progress_bar,
    anneal,
    default_batch_size,
    intra_op_threads,
    log_mean_exp_with_se,
)
from .path import PairDensity


def simulate(
    model: Callable, template: Mapping[str, torch.Tensor], summary: PairSummary
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Ancestral draws :math:`(x, z) \\sim p` with the shapes (and the non-observed fields,
    such as labels) of ``template``: the model run with its observations released
    (``poutine.uncondition``). Returns the simulated fields and the latent values.

    :raises ValueError: when an observed site is not a whole data field (a sequence
        model observing ``x[:, t]``): its draw cannot be written back as a data set, and
        later steps would have read the real data.
    """
    kwargs = call_arguments(model, template, "model")
    trace = poutine.trace(poutine.uncondition(model)).get_trace(**kwargs)
    fields = dict(template)
    for name in summary.observed_sites:
        site = trace.nodes[name]
        field = summary.observed_fields.get(name, (None,))[0]
        if field is None or tuple(site["value"].shape) != tuple(template[field].shape):
            raise ValueError(
                f"BDMC simulates data from the model, but observed site '{name}' is not a whole "
                "data field (e.g. one step x[:, t] of a sequence); BDMC supports models whose "
                "observed sites each observe one data field with obs=<field>"
            )
        fields[field] = site["value"].detach()
    latents = {n: s["value"].detach() for n, s in trace.nodes.items() if is_latent_site(s)}
    return fields, latents


#: a mean gap more than this many standard errors below 0 is an error, not a result
CROSSED_ERROR_SE = 3.0
#: the advice for a crossed bracket: this many times the annealing steps
MORE_STEPS_FACTOR = 4


class CrossedBoundsWarning(UserWarning):
    """BDMC's upper bound lies below its lower bound by more than one standard error."""


class CrossedBoundsError(ValueError):
    """BDMC's bounds crossed far beyond their noise: not a result. ``estimate`` holds the
    numbers, to inspect."""

    def __init__(self, message: str, estimate: BDMCEstimate):
        super().__init__(message)
        self.estimate = estimate


@dataclass
class BDMCEstimate:
    r"""Per-data-point results of :func:`bdmc` on simulated data (tensors ``(N,)``, nats)."""

    #: forward AIS, a stochastic lower bound on :math:`\log p(x)`
    lower: torch.Tensor
    lower_se: torch.Tensor
    #: reverse AIS from the exact posterior sample, a stochastic upper bound
    upper: torch.Tensor
    upper_se: torch.Tensor
    forward_acceptance: torch.Tensor
    reverse_acceptance: torch.Tensor
    #: the simulated data fields, ``(N, ...)`` each
    data: dict
    #: closed-form log-evidence of the simulated points, for models that have one
    log_evidence: torch.Tensor | None
    num_steps: int
    num_chains: int
    num_leapfrog: int
    initial: str
    seconds: float = math.nan

    @property
    def gap(self) -> torch.Tensor:
        """``upper - lower`` per point, nats."""
        return self.upper - self.lower

    @property
    def gap_se(self) -> float:
        """Standard error of the mean gap, nats: over the points (their spread includes
        the chains' noise), or for one point from its chains' s.e. of both bounds."""
        n = self.lower.numel()
        if n > 1:
            return float(self.gap.std() / math.sqrt(n))
        return float((self.lower_se.pow(2) + self.upper_se.pow(2)).sqrt().mean())

    @property
    def crossed_se(self) -> float:
        """How many standard errors the mean gap lies below 0 (0 when it does not)."""
        return crossed_by(float(self.gap.mean()), self.gap_se)

    def metrics(self) -> dict:
        n = self.lower.numel()
        se = lambda t: float(t.std() / math.sqrt(n)) if n > 1 else math.nan
        out = {
            "bdmc_lower": float(self.lower.mean()),
            "bdmc_lower_se": se(self.lower),
            "bdmc_upper": float(self.upper.mean()),
            "bdmc_upper_se": se(self.upper),
            "bdmc_gap": float(self.gap.mean()),
            "bdmc_gap_se": se(self.gap),
            "bdmc_gap_max": float(self.gap.max()),
            "bdmc_crossed_se": self.crossed_se,
            "bdmc_forward_acceptance_mean": float(self.forward_acceptance.mean()),
            "bdmc_reverse_acceptance_mean": float(self.reverse_acceptance.mean()),
            "bdmc_steps": self.num_steps,
            "bdmc_chains": self.num_chains,
            "bdmc_leapfrog_steps": self.num_leapfrog,
            "bdmc_initial": self.initial,
            "bdmc_points": n,
            "bdmc_seconds": self.seconds,
        }
        if self.log_evidence is not None:
            out["bdmc_log_evidence"] = float(self.log_evidence.mean())
        return out


@torch.no_grad()
def bdmc(
    model: Callable,
    guide: Callable,
    data: Mapping[str, torch.Tensor],
    num_points: int | None = None,
    num_steps: int = 100,
    num_chains: int = 16,
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
    check: bool = True,
) -> BDMCEstimate:
    r"""Bidirectional Monte Carlo: bracket :math:`\log p(x)` on data simulated from the
    model (see the module docstring).

    :param data: a template batch of fields ``(N, ...)`` on the pair's device: it fixes
        the shapes and the conditioning fields (labels); its observed fields are replaced
        by draws from the model. The model must use its observed fields only as ``obs=``.
    :param num_points: simulate this many points (the first rows of ``data``); default all.
    :returns: a :class:`BDMCEstimate`: forward (lower) and reverse (upper) AIS per point,
        with the same settings both ways (the reverse run reverses the schedule).

    :param check: warn for bounds crossed beyond their standard error and refuse them
        beyond :data:`CROSSED_ERROR_SE` (:func:`check_bracket`); ``False`` returns them
        as they are (to inspect, or to draw).
    :raises CrossedBoundsError: for a bracket crossed far beyond its noise.

    The other parameters are those of :func:`ais_log_likelihood`.
    """
    import time

    betas = _check_common(num_chains, num_steps, num_leapfrog, schedule)
    device = next(iter(data.values())).device
    n_total = next(iter(data.values())).shape[0]
    n = n_total if num_points is None else int(num_points)
    if not 1 <= n <= n_total:
        raise ValueError(f"num_points must be in [1, {n_total}] (the template's rows), got {n}")
    template = {k: v[:n] for k, v in data.items()}
    t0 = time.perf_counter()
    out = {k: [] for k in ("lower", "lower_se", "upper", "upper_se", "fwd", "rev")}
    with isolated(seed, device), eval_mode(model, guide), intra_op_threads(num_threads):
        summary = check_pair(model, guide, {k: v[:1] for k, v in template.items()})
        simulated, latents = simulate(model, template, summary)
        size = batch_size or default_batch_size(num_chains, summary)
        total = 2 * math.ceil(n / size) * (betas.numel() - 1)
        with _progress_bar(total, progress, "BDMC") as bar:
            for start in range(0, n, size):
                batch = {k: v[start : start + size] for k, v in simulated.items()}
                density = PairDensity(model, guide, batch, num_chains, summary, initial)
                exact = {s.name: latents[s.name][start : start + size] for s in density.sites}
                settings = (step_size, num_leapfrog, target_accept, adapt)
                bracket = _bracket(density, exact, betas, settings, bar.update)
                for key, value in bracket.items():
                    out[key].append(value.cpu())
    cat = {k: torch.cat(v) for k, v in out.items()}
    estimate = BDMCEstimate(
        lower=cat["lower"],
        lower_se=cat["lower_se"],
        upper=cat["upper"],
        upper_se=cat["upper_se"],
        forward_acceptance=cat["fwd"],
        reverse_acceptance=cat["rev"],
        data={k: v.cpu() for k, v in simulated.items()},
        log_evidence=exact_log_evidence(model, simulated),
        num_steps=betas.numel() - 1,
        num_chains=int(num_chains),
        num_leapfrog=int(num_leapfrog),
        initial=initial,
        seconds=time.perf_counter() - t0,
    )
    if check:
        check_bracket(estimate)
    return estimate


def _bracket(
    density: PairDensity,
    latents: Mapping[str, torch.Tensor],
    betas: torch.Tensor,
    settings: tuple,
    progress: Callable[[], None],
) -> dict[str, torch.Tensor]:
    """Forward AIS from :math:`f_0` and reverse AIS from the simulated ``latents`` (the
    exact posterior draws of this batch's points) on one batch: the per-point lower and
    upper bounds with their chain s.e. and both runs' acceptance rates, each ``(B,)``.
    ``settings`` are :func:`anneal`'s step size, leapfrog steps, target and adapt flag."""
    forward = anneal(density, density.sample_initial(), betas, *settings, progress=progress)
    exact = {}
    for s in density.sites:
        z = latents[s.name]
        # the draw without the chain plate, placed in the guide's layout
        exact[s.name] = z.reshape((1,) * (len(s.shape) - z.dim()) + tuple(z.shape))
    reverse = anneal(density, density.pack(exact), betas.flip(0), *settings, progress=progress)
    lower, lower_se, _ = log_mean_exp_with_se(forward.log_weights)
    neg_upper, upper_se, _ = log_mean_exp_with_se(reverse.log_weights)
    return {
        "lower": lower,
        "lower_se": lower_se,
        "upper": -neg_upper,
        "upper_se": upper_se,
        "fwd": forward.acceptance,
        "rev": reverse.acceptance,
    }


def crossed_by(gap: float, se: float) -> float:
    """How many standard errors ``se`` the mean gap ``gap`` lies below 0: 0 for a gap
    that is not negative, ``inf`` for a negative gap without noise (``se`` 0 or NaN)."""
    if not gap < 0:
        return 0.0
    return -gap / se if se > 0 else math.inf


def crossed_advice(gap: float, se: float, num_steps: int) -> str | None:
    """The words for a bracket whose mean gap ``gap`` (nats, upper minus lower) lies more
    than one standard error ``se`` below 0 after ``num_steps`` annealing steps, with the
    next step; ``None`` when it does not."""
    z = crossed_by(gap, se)
    if not z > 1:
        return None
    more = MORE_STEPS_FACTOR * int(num_steps)
    far = z > CROSSED_ERROR_SE
    return (
        f"BDMC's bounds crossed: the upper bound (reverse AIS) lies {-gap:.3g} nats per "
        f"data point below the lower bound (forward AIS), {z:.1f} standard errors "
        f"(+- {se:.3g}), which two stochastic bounds of the same log p(x) do "
        + (
            "by chance less than 0.2% of the time: this is not a result. "
            if far
            else "by chance less than 16% of the time. "
        )
        + f"With T = {num_steps} annealing steps the chains have not settled: rerun with "
        f"{MORE_STEPS_FACTOR}x the steps, num_steps={more} (on the command line "
        f"--ais-steps {more}), and more chains if the HMC acceptance is low"
        + (
            "; if the bounds still cross, the model's distributions do not sample what "
            "their log_prob scores (BDMC simulates the data with the model's samplers)."
            if far
            else "."
        )
    )


def check_bracket(estimate: BDMCEstimate) -> None:
    """Refuse a bracket crossed beyond :data:`CROSSED_ERROR_SE` standard errors
    (:class:`CrossedBoundsError`) and warn for one crossed beyond one
    (:class:`CrossedBoundsWarning`), each with the next step (:func:`crossed_advice`)."""
    advice = crossed_advice(float(estimate.gap.mean()), estimate.gap_se, estimate.num_steps)
    if advice is None:
        return
    if estimate.crossed_se > CROSSED_ERROR_SE:
        raise CrossedBoundsError(advice, estimate)
    warnings.warn(advice, CrossedBoundsWarning, stacklevel=3)
