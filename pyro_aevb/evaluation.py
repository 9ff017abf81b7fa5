r"""Evaluation of any model/guide pair: per-data-point ELBO, importance-sampled
log-likelihood, effective sample size and Pareto :math:`\hat k`. All in nats per
data point.

Everything rests on per-data-point log importance weights

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
  (PSIS, Vehtari et al., 2024, through ArviZ); above 0.7 the estimate is unreliable.

A model latent site that the guide does not sample is drawn from its prior, which
then is part of the proposal, so its log-density cancels from the weight: the
estimator stays unbiased for :math:`p(x)`, if noisier.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from .arguments import batch_rows
from .contract import (
    ContractError,
    PairSummary,
    batch_size_of,
    call_arguments,
    check_pair,
    is_latent_site,
    warn_once,
)
from .data.dataset import Dataset, check_labels, validate_array
from .data.transforms import Transform, get_transform, transform_test_set
from .particles import log_prob_per_datapoint

#: the default budget of rows (particles x data points) in one forward pass
MAX_ROWS = 20_000
#: fewest importance samples for which PSIS k-hat is reported: its tail fit uses
#: min(K/5, 3 sqrt(K)) draws, too few below this to mean anything
MIN_PARETO_PARTICLES = 100


@contextlib.contextmanager
def eval_mode(*modules) -> Iterator[None]:
    """Put ``nn.Module`` s in eval mode (no dropout), restoring their flags after."""
    modules = [m for m in modules if isinstance(m, torch.nn.Module)]
    flags = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, flag in zip(modules, flags, strict=True):
            m.train(flag)


@contextlib.contextmanager
def isolated(seed: int | None, device: torch.device | None = None) -> Iterator[None]:
    """A private param store and, if ``seed`` is given, a private seeded RNG stream.

    The caller's RNG state is restored on exit, so evaluating during training
    does not change the training run.
    """
    devices = [device] if device is not None and device.type == "cuda" else []
    with pyro.get_param_store().scope(), torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def importance_terms(
    model: Callable,
    guide: Callable,
    batch: Mapping[str, torch.Tensor],
    num_particles: int,
    summary: PairSummary,
    vectorized: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-particle log-weights and ELBO terms, each ``(K, B)``, nats.

    Particles are drawn in one vectorized pass through an extra plate to the left
    of all of the pair's plates. Without enumerated guide sites both outputs are
    :math:`\log w_k = \log p(x, z_k) - \log q(z_k \mid x)`.

    Guide sites marked ``infer={"enumerate": "parallel"}`` (a discrete :math:`y`) are
    enumerated in parallel, to the left of the particle plate, and the rest of the
    guide (:math:`z_{k,y} \sim q(z \mid x, y)`) is drawn once per value. The weight
    of particle :math:`k` then sums over the values, a stratified estimator that
    needs no proposal for :math:`y`,

    .. math::

        w_k = \sum_y \frac{p(x, y, z_{k,y})}{q(z_{k,y} \mid x, y)}, \qquad
        \mathbb{E}[w_k] = \sum_y \int p(x, y, z)\, dz = p(x),

    and the ELBO term weights the values by the guide,
    :math:`\sum_y q(y \mid x)\,[\log p(x, y, z_{k,y}) - \log q(y \mid x)
    - \log q(z_{k,y} \mid x, y)]`, whose mean is the ELBO that ``TraceEnum_ELBO``
    maximizes.

    With ``vectorized=False`` the particles are drawn one pass each, without the plate
    of particles, for code that cannot broadcast over a leading dimension (boolean-mask
    indexing ``x[mask]``, ``view(B, ...)``): the same estimator, ``K`` times the passes.
    """
    if not vectorized:
        parts = [
            _importance_terms_once(model, guide, batch, 1, summary, particle_plate=False)
            for _ in range(num_particles)
        ]
        return torch.cat([w for w, _ in parts]), torch.cat([e for _, e in parts])
    return _importance_terms_once(model, guide, batch, num_particles, summary)


def _importance_terms_once(
    model: Callable,
    guide: Callable,
    batch: Mapping[str, torch.Tensor],
    num_particles: int,
    summary: PairSummary,
    particle_plate: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of :func:`importance_terms`: ``num_particles`` in a plate of particles, or
    one particle with no such plate (its dim is then a size-1 dim of every site)."""
    if summary.global_latent_sites:
        raise NotImplementedError(
            f"per-data-point evaluation needs every latent site inside the data plate, but "
            f"{summary.global_latent_sites} are global; evaluate such models with a "
            "joint (whole-batch) estimator instead"
        )
    guide_kwargs = call_arguments(guide, batch, "guide")
    model_kwargs = call_arguments(model, batch, "model")
    nesting = summary.max_plate_nesting + 1  # the pair's plates + the particle plate
    particles = (
        pyro.plate("_importance_particles", num_particles, dim=-nesting)
        if particle_plate
        else contextlib.nullcontext()
    )
    with particles:
        enumerated_guide = poutine.enum(guide, first_available_dim=-nesting - 1)
        guide_trace = poutine.trace(enumerated_guide).get_trace(**guide_kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            **model_kwargs
        )
    guide_latents = {n: s for n, s in guide_trace.nodes.items() if is_latent_site(s)}
    enumerated = [
        n for n, s in guide_latents.items() if s["infer"].get("_enumerate_dim") is not None
    ]
    num_enum = len(enumerated)

    def per_datapoint(site):
        return log_prob_per_datapoint(site, nesting, summary.data_dim, num_enum)

    log_joint = torch.zeros(())  # log p(x, y, z) - log q(z | x, y): (E..., K, B)
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if not site["is_observed"] and name not in guide_latents:
            continue  # drawn from its prior: part of the proposal, cancels
        log_joint = log_joint + per_datapoint(site)
    log_q_enumerated = torch.zeros(())
    for name, site in guide_latents.items():
        if name in enumerated:
            log_q_enumerated = log_q_enumerated + per_datapoint(site)
        else:
            log_joint = log_joint - per_datapoint(site)
    batch_size = batch_size_of(batch)
    shape = torch.broadcast_shapes(log_joint.shape, (1,) * num_enum + (num_particles, batch_size))
    log_joint = log_joint.expand(shape).reshape(-1, num_particles, batch_size)
    if not num_enum:
        return log_joint[0], log_joint[0]
    log_q = log_q_enumerated.expand(shape).reshape(-1, num_particles, batch_size)
    elbo = (log_q.exp() * (log_joint - log_q)).sum(0)
    return torch.logsumexp(log_joint, 0), elbo


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


def _batches(fields: Mapping[str, torch.Tensor], batch_size: int, device) -> Iterator[dict]:
    n = batch_size_of(fields)
    for start in range(0, n, batch_size):
        index = torch.arange(start, min(n, start + batch_size))
        yield {k: _to(batch_rows(v, index, k, n), device) for k, v in fields.items()}


def _to(value, device):
    return value.to(device) if hasattr(value, "to") and device is not None else value


#: what the fallback warning tells the user to change for vectorized particles
LOOP_ADVICE = (
    "write the model and guide so that they broadcast over extra leading batch "
    "dimensions: index with x[..., mask] or torch.where instead of x[mask], use "
    "x.shape[-k:] and reshape(*x.shape[:-1], ...) instead of fixed sizes, and put "
    "per-data-point sites in a plate with an explicit dim"
)


def probe_particle_mode(
    model: Callable, guide: Callable, batch: Mapping, summary: PairSummary, particles: int = 2
) -> str:
    """Draw a few particles as evaluation does: ``"vectorized"`` if one pass through a
    plate of particles gives finite weights of shape ``(K, B)``, else ``"loop"`` if one
    pass per particle does (with a warning, once, saying what to change for speed).

    :raises ContractError: if neither works, with both errors.
    """
    with torch.no_grad(), isolated(0), poutine.block():
        try:
            log_w, _ = importance_terms(model, guide, batch, particles, summary)
            if log_w.shape == (particles, batch_size_of(batch)):
                return "vectorized"
            vector_error = f"weights of shape {tuple(log_w.shape)}"
        except NotImplementedError:
            raise  # what no mode of drawing particles changes (global latents)
        except Exception as error:  # noqa: BLE001 - any failure selects the fallback
            vector_error = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        try:
            importance_terms(model, guide, batch, 1, summary, vectorized=False)
        except Exception as error:  # noqa: BLE001
            raise ContractError(
                "evaluation cannot draw particles for this pair, neither vectorized "
                f"({vector_error}) nor one at a time ({type(error).__name__}: "
                f"{str(error).splitlines()[0]})"
            ) from error
    warn_once(
        "particle-loop",
        f"the pair fails with vectorized particles ({vector_error}); evaluation draws "
        "them one pass each instead (the same estimator, K times slower). For speed, "
        + LOOP_ADVICE,
    )
    return "loop"


def pareto_k_hat(log_weights: np.ndarray) -> np.ndarray:
    """PSIS :math:`\\hat k` per row of ``log_weights`` ``(B, K)`` through ArviZ."""
    import arviz

    with warnings.catch_warnings():
        # ArviZ warns when k-hat is large; we report k-hat itself instead.
        warnings.simplefilter("ignore")
        _, k_hat = arviz.psislw(log_weights.astype(np.float64), reff=1.0)
    return np.asarray(k_hat, dtype=np.float64).reshape(-1)


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


#: bytes of memory per kept importance weight of one batch: float32 log-weights and ELBO
#: terms, their float64 concatenation, the softmax for the ESS and ArviZ's float64
#: copies for PSIS (measured peak about 60 bytes; rounded up)
BYTES_PER_WEIGHT = 64


def evaluation_memory_bytes(num_particles: int, batch_size: int, num_points: int) -> int:
    """Memory an evaluation needs for the weights of one batch, ``K * B`` of them
    (see :data:`BYTES_PER_WEIGHT`), besides one forward pass of :data:`MAX_ROWS` rows."""
    return BYTES_PER_WEIGHT * int(num_particles) * min(int(batch_size), int(num_points))


def available_memory_bytes(device: torch.device) -> int | None:
    """Free memory where the weights live: ``MemAvailable`` of the host for the CPU,
    the device's free memory for CUDA; ``None`` where it cannot be read."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:  # no driver query available: do not guess
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(num_particles: int, batch_size: int, num_points: int, device) -> None:
    """Refuse an evaluation whose weights cannot fit, before drawing any, saying how much
    memory it needs and what to lower."""
    need = evaluation_memory_bytes(num_particles, batch_size, num_points)
    have = available_memory_bytes(torch.device(device))
    if have is not None and need > have:
        raise MemoryError(
            f"evaluating with num_particles={num_particles} needs about {need / 2**30:.1f} GiB "
            f"for the {num_particles} x {min(batch_size, num_points)} importance weights of "
            f"one batch, and {have / 2**30:.1f} GiB are available on {device}; use fewer "
            "particles (--particles / --eval-particles) or a smaller batch_size"
        )


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
    :param pareto: also compute PSIS :math:`\hat k` (ArviZ), when ``K >= 100``.
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


@torch.no_grad()
def label_usage(
    model: Callable,
    guide: Callable,
    fields: Mapping[str, torch.Tensor],
    num_particles: int = 1000,
    label_field: str = "y",
    batch_size: int = 100,
    seed: int = 0,
    true_log_likelihood: torch.Tensor | None = None,
) -> dict:
    r"""How much a conditional model uses its labels: the importance-sampled
    :math:`\log p(x \mid y)` with the true labels and with the labels shuffled
    across data points (a seeded permutation, which keeps the class frequencies).

    A model that ignores ``y`` scores the same on both; the difference (nats per
    data point) is what the label is worth to it. Returns ``log_likelihood_true_labels``,
    ``log_likelihood_shuffled_labels``, their standard errors and ``label_gain``.

    :param true_log_likelihood: the per-point estimate with the true labels, if already
        computed with the same ``num_particles``, ``batch_size`` and stream (that of
        :func:`evaluate` with the same ``seed``): it is used instead of drawn again.
    """
    if label_field not in fields:
        raise ValueError(f"label_usage needs a '{label_field}' field in the data")
    labels = fields[label_field]
    perm = torch.randperm(labels.shape[0], generator=torch.Generator().manual_seed(seed))
    shuffled = dict(fields, **{label_field: labels[perm.to(labels.device)]})
    estimate = lambda data: (
        importance_log_likelihood(
            model, guide, data, num_particles, batch_size, pareto=False, seed=seed + 1
        ).log_likelihood
    )
    true = true_log_likelihood if true_log_likelihood is not None else estimate(fields)
    out = {}
    for name, ll in (("true_labels", true), ("shuffled_labels", estimate(shuffled))):
        out[f"log_likelihood_{name}"] = float(ll.mean())
        out[f"log_likelihood_{name}_se"] = float(ll.std() / math.sqrt(ll.numel()))
    out["label_gain"] = out["log_likelihood_true_labels"] - out["log_likelihood_shuffled_labels"]
    out["label_usage_particles"] = int(num_particles)
    return out


class ImplausibleEstimateError(ValueError):
    """An estimate that mathematics rules out (see :meth:`Evaluation.problems`): a bug or
    a numerically diverged model, never a result. ``evaluation`` holds the numbers."""

    def __init__(self, message: str, evaluation: Evaluation, problems: list[str]):
        super().__init__(message)
        self.evaluation = evaluation
        self.problems = problems


#: how many standard errors an estimate may stray above a bound before it is refused
BOUND_SLACK_SE = 4.0


@dataclass
class Evaluation:
    """Test metrics of a pair; :meth:`metrics` gives the summary written to ``metrics.json``."""

    elbo: torch.Tensor
    importance: ImportanceEstimate
    #: closed-form log-evidence per data point, for models that have one
    log_evidence: torch.Tensor | None = None
    #: whether every observed site has a discrete distribution (Bernoulli, categorical):
    #: then p(x) <= 1, so log p(x) <= 0 for every data point
    discrete_likelihood: bool = False

    def problems(self) -> list[str]:
        r"""What the estimates violate, in words; empty when they are plausible.

        Both the ELBO and the importance-sampled estimate are stochastic *lower* bounds
        of :math:`\log p(x)`: :math:`\mathbb{E}[\log \hat p_K(x)] \le \log p(x)`
        (Jensen; Burda et al., 2016). Their mean over test points may therefore exceed
        the mean exact evidence only by sampling noise, judged by the standard error of
        the per-point differences (:data:`BOUND_SLACK_SE` of them, plus float32
        round-off). For a discrete likelihood :math:`p(x) \le 1`, so the bound is 0.
        Non-finite means are refused too.
        """
        out = []
        n = self.elbo.numel()
        estimates = {
            "test ELBO": self.elbo.double(),
            "importance-sampled log-likelihood": self.importance.log_likelihood.double(),
        }
        for name, values in estimates.items():
            if not bool(torch.isfinite(values).all()):
                bad = int((~torch.isfinite(values)).sum())
                out.append(f"the {name} is not finite for {bad} of {n} test points")
        if out:
            return out

        def above(values: torch.Tensor, bound: torch.Tensor, bound_name: str, name: str):
            diff = values - bound
            se = float(diff.std() / math.sqrt(n)) if n > 1 else 0.0
            # float32 log-densities summed over D dimensions carry a relative round-off
            tolerance = BOUND_SLACK_SE * se + 1e-3 + 1e-5 * float(bound.abs().mean())
            excess = float(diff.mean())
            if excess > tolerance:
                ses = f"{excess / se:.3g} standard errors" if se > 0 else "with no noise"
                out.append(
                    f"the {name} ({float(values.mean()):.6g} nats per data point) is above "
                    f"{bound_name} ({float(bound.mean()):.6g}) by {excess:.3g} nats, {ses}, "
                    "which a lower bound of log p(x) cannot be"
                )

        for name, values in estimates.items():
            if self.log_evidence is not None:
                evidence = self.log_evidence.double().to(values.device)
                above(values, evidence, "the exact log-evidence", name)
            if self.discrete_likelihood:
                above(
                    values,
                    torch.zeros_like(values),
                    "0, the most log p(x) can be for a discrete likelihood,",
                    name,
                )
        return out

    def metrics(self) -> dict:
        """Means over data points (nats per data point) with their standard errors."""
        n = self.elbo.numel()
        se = lambda t: float(t.std() / math.sqrt(n)) if n > 1 else float("nan")
        ll = self.importance.log_likelihood
        out = {
            "test_elbo": float(self.elbo.mean()),
            "test_elbo_se": se(self.elbo),
            "test_log_likelihood": float(ll.mean()),
            "test_log_likelihood_se": se(ll),
            "log_likelihood_particles": self.importance.num_particles,
            "ess_mean": float(self.importance.ess.mean()),
            "num_test_points": n,
        }
        if self.importance.pareto_k is not None:
            k = self.importance.pareto_k
            out["pareto_k_mean"] = float(k.mean())
            out["pareto_k_fraction_above_0.7"] = float((k > 0.7).double().mean())
        if self.log_evidence is not None:
            out["test_log_evidence"] = float(self.log_evidence.mean())
            out["test_log_evidence_se"] = se(self.log_evidence)
        problems = self.problems()
        if problems:
            # an API user who built or kept an Evaluation by hand sees it in the numbers too
            out["problems"] = problems
        return out


def prepare_fields(
    data: Dataset | Mapping[str, torch.Tensor],
    transform: Transform | str | None,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Fields of a test set: checked, transformed once (stochastic transforms with the
    fixed test seed) and moved to ``device``.

    A mapping may hold NumPy arrays (converted to tensors). Empty data,
    fields with different numbers of rows, non-finite values and non-integer labels are
    refused with a ``ValueError`` naming the field.
    """
    if isinstance(data, Dataset):
        fields = data.fields()
        levels = data.levels
    elif isinstance(data, Mapping):
        # The data field is 'x', else the first array field that is not the labels; other
        # fields may be lists or PackedSequences (cut per batch, pyro_aevb.arguments).
        fields = {k: _as_tensor(v, k, strict=False) for k, v in data.items()}
        levels = None
        arrays = [k for k, v in fields.items() if isinstance(v, torch.Tensor) and k != "y"]
        reference = "x" if "x" in fields else (arrays[0] if arrays else None)
        if reference is None:
            raise ValueError(
                f"the test data need an 'x' field (or another data field), got fields "
                f"{sorted(fields)}"
            )
        fields[reference] = _as_tensor(data[reference], reference)
        validate_array(fields[reference], reference)
        n = fields[reference].shape[0]
        for k, v in fields.items():
            if isinstance(v, torch.Tensor) and (v.dim() == 0 or v.shape[0] != n):
                raise ValueError(
                    f"test field '{k}' has {v.shape[0] if v.dim() else 0} rows but "
                    f"'{reference}' has {n}"
                )
        if "y" in fields and fields["y"].is_floating_point():
            raise ValueError(
                f"test labels 'y' must be integers, got dtype {fields['y'].dtype}; "
                "convert them with y.long()"
            )
    else:
        raise ValueError(
            f"data must be a pyro_aevb Dataset or a mapping of fields, got {type(data).__name__}"
        )
    if transform is not None:
        fields["x"] = transform_test_set(fields["x"], get_transform(transform), levels)
    return {
        k: v.to(device) if device is not None and hasattr(v, "to") else v for k, v in fields.items()
    }


def _as_tensor(value, name: str, strict: bool = True):
    """NumPy arrays become tensors; with ``strict``, anything else but a tensor is refused."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if strict and not isinstance(value, torch.Tensor):
        raise ValueError(
            f"test field '{name}' must be a torch.Tensor or a NumPy array, "
            f"got {type(value).__name__}"
        )
    return value


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
    if device is None:
        modules = [m for m in (model, guide) if isinstance(m, torch.nn.Module)]
        params = [p for m in modules for p in m.parameters()]
        device = params[0].device if params else torch.device("cpu")
    else:
        from .device import resolve_device

        device = resolve_device(device)
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
    return evaluation
