r"""Annealed importance sampling (AIS) of :math:`\log p(x)` per data point, and
bidirectional Monte Carlo (BDMC) to bracket it, for any model/guide pair.

**AIS** (Neal, 2001) moves ``C`` chains per data point through the geometric path

.. math::

    \pi_\beta(z) \propto f_0(z)^{1-\beta}\, p(x, z)^\beta,
    \qquad 0 = \beta_0 < \beta_1 < \dots < \beta_T = 1,

from a normalized :math:`f_0` (the guide :math:`q(z \mid x)`, default, or the prior
:math:`p(z)`) to the posterior. A chain starts at :math:`z_0 \sim f_0`; at each
step it adds :math:`(\beta_t - \beta_{t-1}) [\log p(x, z) - \log f_0(z)]` to its log
weight at its current state and then, for :math:`t < T`, makes a Hamiltonian Monte
Carlo transition that leaves :math:`\pi_{\beta_t}` invariant (:mod:`pyro_aevb.hmc`).
Each weight then has mean :math:`p(x)`, so :math:`\log \frac1C \sum_c w_c` is a
stochastic lower bound on :math:`\log p(x)` (Jensen), tight as ``T`` grows. With
``T = 1`` it is importance sampling with ``C`` draws of :math:`f_0`.

**BDMC** (Grosse, Ghahramani & Adams, 2015; Wu et al., 2017, "On the quantitative
analysis of decoder-based generative models") simulates :math:`(x, z) \sim p` from
the model. For such :math:`x`, the exact posterior sample :math:`z` starts a *reverse*
chain from :math:`\beta = 1` to :math:`0`, whose weights have mean :math:`1/p(x)`; so
:math:`-\log \frac1C \sum_c w^{\rm rev}_c` is a stochastic *upper* bound. Forward and
reverse runs bracket :math:`\log p(x)`; the gap bounds the error of forward AIS with
the same settings on data like the model's.

The densities come from Pyro traces of the pair: the guide (with its sites marked
``infer={"enumerate": "parallel"}`` enumerated) and the model replayed on it, both
conditioned on the chains' latents ``z``, each site's log-density summed per data
point (:func:`pyro_aevb.particles.log_prob_per_datapoint`). Chains are an extra plate
to the left of the pair's, so chains x points are one vectorized batch. An enumerated
discrete site :math:`y` is summed out: :math:`p(x, z) = \sum_y p(x, y, z)` and
:math:`q(z \mid x) = \sum_y q(y \mid x)\, q(z \mid x, y)`, so the chains move ``z``
only. HMC runs on unconstrained coordinates :math:`u`, :math:`z = T(u)` with
``T = biject_to(support)``, the log-Jacobian added to both densities (it cancels from
the weights), so positive or simplex latents work too.

Step sizes adapt, one per data point shared by its chains, multiplicatively towards a
target acceptance rate: :math:`\epsilon \leftarrow \epsilon \exp(\gamma (\bar a -
a^*))` after each transition, with :math:`\bar a` the mean acceptance probability of
the point's chains at that transition. Every transition leaves its :math:`\pi_\beta`
invariant for the step size it uses, and that step size depends only on transitions
already made, never on the move it is used for; the weights are computed as without
adaptation. Strictly, because that past includes the chains' current states, the
estimator is then unbiased only as the number of chains grows (each chain's influence on
the shared step size is ``1/C``), as for adaptive SMC (Beskos et al., 2016); pass
``adapt=False`` for fixed step sizes, or give :func:`anneal` a per-transition schedule
(such as a previous run's :attr:`AnnealingRun.step_sizes`), and the weights are exactly
unbiased. All results are in nats per data point.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.distributions.transforms import biject_to
from pyro.distributions.util import is_validation_enabled
from pyro.poutine.util import site_is_subsample

from .contract import PairSummary, call_arguments, check_pair, is_latent_site
from .evaluation import MAX_ROWS, eval_mode, exact_log_evidence, isolated
from .hmc import AnnealedPoint, hmc_transition
from .particles import log_prob_per_datapoint

#: name of the plate that vectorizes the chains
CHAIN_PLATE = "_ais_chains"
#: initial distributions of the path
INITIALS = ("guide", "prior")


def sigmoid_schedule(num_steps: int, delta: float = 4.0) -> torch.Tensor:
    r"""Inverse temperatures :math:`\beta_0 = 0 < \dots < \beta_T = 1`, ``(T + 1,)``,
    float64: a logistic sigmoid of ``T + 1`` evenly spaced points in
    :math:`[-\delta, \delta]`, rescaled to :math:`[0, 1]` (Grosse et al., 2015). The
    steps are small at both ends, where :math:`\pi_\beta` changes fastest on most
    models, and largest in the middle."""
    if int(num_steps) < 1:
        raise ValueError(f"AIS needs at least 1 annealing step, got num_steps={num_steps}")
    s = torch.sigmoid(torch.linspace(-delta, delta, int(num_steps) + 1, dtype=torch.float64))
    return (s - s[0]) / (s[-1] - s[0])


def _check_schedule(betas: torch.Tensor) -> torch.Tensor:
    betas = torch.as_tensor(betas, dtype=torch.float64).flatten()
    if betas.numel() < 2 or betas[0] != 0 or betas[-1] != 1 or bool((betas.diff() <= 0).any()):
        raise ValueError(
            "an AIS schedule must increase strictly from 0 to 1 (at least two values), "
            f"got {betas.tolist()[:5]}..."
        )
    return betas


@dataclass
class _Site:
    """A continuous latent site: its place in the state vector and its bijection."""

    name: str
    shape: torch.Size  # the constrained value's shape, (C, ..., B, ...event)
    unconstrained_shape: torch.Size
    transform: object  # biject_to(support): unconstrained -> constrained
    size: int  # unconstrained numbers per chain and data point
    data_index: int  # the data plate's dim in the value


class PairDensity:
    r"""The log-densities :math:`\log f_0` and :math:`\log p(x, z)` of ``C`` chains for
    each point of one batch, as a function of flat unconstrained states ``(C, B, D)``.

    :param initial: ``"guide"`` (:math:`f_0 = q(z \mid x)`) or ``"prior"``
        (:math:`f_0 = p(z)`).
    :raises ValueError: for a discrete latent site that the guide does not enumerate, a
        model latent the guide does not sample, or a global latent.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        batch: Mapping[str, torch.Tensor],
        num_chains: int,
        summary: PairSummary,
        initial: str = "guide",
    ):
        if initial not in INITIALS:
            raise ValueError(f"initial must be one of {list(INITIALS)}, got '{initial}'")
        if summary.global_latent_sites:
            raise ValueError(
                f"AIS estimates log p(x) per data point, which needs every latent site inside "
                f"the data plate, but {summary.global_latent_sites} are global"
            )
        self.model, self.guide, self.initial = model, guide, initial
        self.num_chains = int(num_chains)
        self.batch_size = next(iter(batch.values())).shape[0]
        self.model_kwargs = call_arguments(model, batch, "model")
        self.guide_kwargs = call_arguments(guide, batch, "guide")
        self.nesting = summary.max_plate_nesting + 1  # the pair's plates + the chain plate
        self.data_dim = summary.data_dim
        trace = self._plain_guide_trace()
        self.enumerated = []
        continuous = []
        for name, site in trace.nodes.items():
            if not is_latent_site(site):
                continue
            how = site["infer"].get("enumerate")
            if how == "parallel":
                self.enumerated.append(name)
            elif site["fn"].support.is_discrete:
                raise ValueError(
                    f"guide site '{name}' is discrete ({type(site['fn']).__name__}); AIS moves "
                    "continuous latents with HMC and can sum out only discrete sites that the "
                    "guide marks infer={'enumerate': 'parallel'}; mark it so, or evaluate this "
                    "pair with importance sampling (method='importance')"
                )
            else:
                continuous.append(site)
        missing = [
            n
            for n in summary.latent_sites
            if n not in {s["name"] for s in continuous} and n not in self.enumerated
        ]
        if missing:
            raise ValueError(
                f"the guide does not sample the model's latent site(s) {missing}; AIS needs the "
                "guide to cover every latent (a model site enumerated by the objective is not "
                "summed out here): add them to the guide"
            )
        if not continuous:
            raise ValueError("the guide has no continuous latent site for AIS to anneal")
        self.sites = []
        for site in continuous:
            value = site["value"]
            if value.dim() - site["fn"].event_dim != self.nesting:
                raise ValueError(
                    f"guide site '{site['name']}' has value shape {tuple(value.shape)}, which "
                    f"does not fill the {self.nesting - 1} plate(s) of the pair; declare its "
                    "batch dims with pyro.plate"
                )
            transform = biject_to(site["fn"].support)
            u = transform.inv(value)
            size = u[:1].numel() // (u.shape[self.nesting + self.data_dim])
            self.sites.append(
                _Site(
                    site["name"],
                    value.shape,
                    u.shape,
                    transform,
                    size,
                    self.nesting + self.data_dim,
                )
            )
        self.dim = sum(s.size for s in self.sites)
        self._validate = is_validation_enabled()

    def _chains(self):
        return pyro.plate(CHAIN_PLATE, self.num_chains, dim=-self.nesting)

    def _plain_guide_trace(self):
        with self._chains():
            return poutine.trace(self.guide).get_trace(**self.guide_kwargs)

    # -- states <-> latent values ----------------------------------------------------------

    def pack(self, values: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Constrained latent values (each the guide's shape) to flat states ``(C, B, D)``."""
        parts = []
        for s in self.sites:
            u = s.transform.inv(values[s.name].expand(s.shape))
            u = u.movedim(s.data_index, 1)
            parts.append(u.reshape(self.num_chains, self.batch_size, s.size))
        return torch.cat(parts, -1)

    def unpack(self, u: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Flat states to constrained values and the log-Jacobian per chain and point."""
        values, log_jacobian, start = {}, torch.zeros(()), 0
        for s in self.sites:
            moved = list(s.unconstrained_shape)
            moved.insert(1, moved.pop(s.data_index))
            part = u[..., start : start + s.size].reshape(moved).movedim(1, s.data_index)
            start += s.size
            value = s.transform(part)
            values[s.name] = value
            ladj = s.transform.log_abs_det_jacobian(part, value)
            if ladj.dim() < self.nesting:
                ladj = ladj.reshape((1,) * (self.nesting - ladj.dim()) + tuple(ladj.shape))
            ladj = ladj.expand(s.unconstrained_shape[: self.nesting] + ladj.shape[self.nesting :])
            ladj = ladj.movedim(s.data_index, 1).reshape(self.num_chains, self.batch_size, -1)
            log_jacobian = log_jacobian + ladj.sum(-1)
        return values, log_jacobian

    def sample_initial(self) -> torch.Tensor:
        """States drawn from :math:`f_0`: the guide run as is (enumerated sites sampled,
        which draws :math:`z` from the mixture :math:`\\sum_y q(y|x) q(z|x,y)`), or the
        model's prior."""
        if self.initial == "guide":
            trace = self._plain_guide_trace()
        else:
            with self._chains():
                trace = poutine.trace(self.model).get_trace(**self.model_kwargs)
        return self.pack({s.name: trace.nodes[s.name]["value"] for s in self.sites})

    # -- densities ---------------------------------------------------------------------------

    def log_densities(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r""":math:`(\log f_0, \log p(x, z))` at states ``u``, each ``(C, B)``, with the
        log-Jacobian of :math:`u \to z` added to both."""
        values, log_jacobian = self.unpack(u)
        nesting = self.nesting
        with self._chains():
            guide = poutine.enum(
                poutine.condition(self.guide, data=values), first_available_dim=-nesting - 1
            )
            guide_trace = poutine.trace(guide).get_trace(**self.guide_kwargs)
            enumerated = poutine.Trace()
            for name in self.enumerated:
                enumerated.add_node(name, **guide_trace.nodes[name])
            model = poutine.replay(poutine.condition(self.model, data=values), trace=enumerated)
            model_trace = poutine.trace(model).get_trace(**self.model_kwargs)
        num_enum = len(self.enumerated)
        latent_names = set(values) | set(self.enumerated)

        def total(sites):
            out = torch.zeros(())
            for site in sites:
                out = out + log_prob_per_datapoint(site, nesting, self.data_dim, num_enum)
            shape = (1,) * num_enum + (self.num_chains, self.batch_size)
            out = out.expand(torch.broadcast_shapes(out.shape, shape))
            # sum the enumerated values out: log sum_y exp(...)
            return out.reshape(-1, self.num_chains, self.batch_size).logsumexp(0)

        model_sites = [
            s
            for s in model_trace.nodes.values()
            if s["type"] == "sample" and not site_is_subsample(s)
        ]
        log_joint = total(model_sites)
        if self.initial == "guide":
            log_initial = total(guide_trace.nodes[n] for n in latent_names)
        else:
            log_initial = total(s for s in model_sites if s["name"] in latent_names)
        return log_initial + log_jacobian, log_joint + log_jacobian

    def __call__(self, u: torch.Tensor) -> AnnealedPoint:
        """The :class:`AnnealedPoint` at states ``u`` ``(C, B, D)``; a state with a
        non-finite coordinate gets density :math:`-\\infty` (so HMC rejects it)."""
        finite = torch.isfinite(u).all(-1)
        safe = torch.where(finite[..., None], u, torch.zeros_like(u)).detach().requires_grad_()
        # Distribution arguments are validated on the first evaluation only: afterwards
        # the same sites see new values of the same shapes, and checks cost a third.
        with torch.enable_grad(), pyro.validation_enabled(self._validate):
            log_initial, log_joint = self.log_densities(safe)
            grad_joint = torch.autograd.grad(log_joint.sum(), safe, retain_graph=True)[0]
            grad_initial = torch.autograd.grad(log_initial.sum(), safe)[0]
        bad = ~finite
        self._validate = False
        log_initial = log_initial.detach().masked_fill(bad, -torch.inf)
        log_joint = log_joint.detach().masked_fill(bad, -torch.inf)
        return AnnealedPoint(u, log_initial, log_joint, grad_initial, grad_joint)


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
) -> BDMCEstimate:
    r"""Bidirectional Monte Carlo: bracket :math:`\log p(x)` on data simulated from the
    model (see the module docstring).

    :param data: a template batch of fields ``(N, ...)`` on the pair's device: it fixes
        the shapes and the conditioning fields (labels); its observed fields are replaced
        by draws from the model. The model must use its observed fields only as ``obs=``.
    :param num_points: simulate this many points (the first rows of ``data``); default all.
    :returns: a :class:`BDMCEstimate`: forward (lower) and reverse (upper) AIS per point,
        with the same settings both ways (the reverse run reverses the schedule).

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
    keys = ("lower", "lower_se", "upper", "upper_se", "fwd", "rev")
    out = {k: [] for k in keys}
    with isolated(seed, device), eval_mode(model, guide), intra_op_threads(num_threads):
        summary = check_pair(model, guide, {k: v[:1] for k, v in template.items()})
        simulated, latents = simulate(model, template, summary)
        size = batch_size or default_batch_size(num_chains, summary)
        total = 2 * math.ceil(n / size) * (betas.numel() - 1)
        with _progress_bar(total, progress, "BDMC") as bar:
            for start in range(0, n, size):
                batch = {k: v[start : start + size] for k, v in simulated.items()}
                density = PairDensity(model, guide, batch, num_chains, summary, initial)
                settings = (step_size, num_leapfrog, target_accept, adapt)
                forward = anneal(
                    density, density.sample_initial(), betas, *settings, progress=bar.update
                )
                exact = {}
                for s in density.sites:
                    z = latents[s.name][start : start + size]
                    # the draw without the chain plate, placed in the guide's layout
                    z = z.reshape((1,) * (len(s.shape) - z.dim()) + tuple(z.shape))
                    exact[s.name] = z
                reverse = anneal(
                    density, density.pack(exact), betas.flip(0), *settings, progress=bar.update
                )
                lower, lower_se, _ = log_mean_exp_with_se(forward.log_weights)
                neg_upper, upper_se, _ = log_mean_exp_with_se(reverse.log_weights)
                for key, value in zip(
                    keys,
                    (lower, lower_se, -neg_upper, upper_se, forward.acceptance, reverse.acceptance),
                    strict=True,
                ):
                    out[key].append(value.cpu())
    cat = {k: torch.cat(v) for k, v in out.items()}
    return BDMCEstimate(
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
