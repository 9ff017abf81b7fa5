r"""The particle engine: per-data-point log importance weights of vectorized particles,
for the training objectives (:mod:`pyro_aevb.importance_weighted`) and for evaluation
(:mod:`pyro_aevb.evaluation`) alike.

For a minibatch of ``B`` points and ``P`` particles per point, both need

.. math::

    \log w_{k,i} = \log p_\theta(x_i, z_{k,i}) - \log q_\phi(z_{k,i} \mid x_i),
    \qquad z_{k,i} \sim q_\phi(z \mid x_i),

as a ``(P, B)`` tensor. :func:`trace_particles` runs the guide once inside an extra
plate of ``P`` particles, :data:`PARTICLE_PLATE`, and the model replayed on its
samples. One plate convention throughout: with the pair's own plates nested
``n`` deep (:attr:`pyro_aevb.contract.PairSummary.max_plate_nesting`), the particle
plate sits at dim ``-(n + 1)`` (:func:`particle_dim`), so that, as Pyro counts, an
objective drawing vectorized particles has ``max_plate_nesting = n + 1``; guide sites
enumerated in parallel (evaluation only) take the dims to its left. Each site's
log-density is summed over every dimension but the particle plate and the data plate
(:func:`log_prob_per_datapoint`).

The log-densities are *unscaled*: the data plate's subsample scale ``N / B`` (and
any ``poutine.scale`` around the whole pair, as :func:`pyro_aevb.fit` applies) must
multiply the per-point bound, after the log-sum-exp over particles, not the
log-weights. :func:`check_sites` returns that scale and checks that every site
carries the same one.

Which pairs the training objectives accept (:func:`check_sites`), and why:

* every latent site lies inside ``pyro.plate("data")``: a global latent couples
  all data points, so there is no per-point weight to average;
* every guide site is reparameterizable: the objectives differentiate through
  the samples (score-function IWAE gradients are not implemented);
* the guide samples every latent site of the model and nothing is marked for
  enumeration (sum discrete sites out with the ``enum`` objective instead).

Evaluation differentiates nothing and accepts more (:func:`importance_terms`): guide
sites marked for enumeration are summed out, and a model latent the guide does not
sample is drawn from its prior, which is then part of the proposal and cancels from the
weight. Pairs that cannot broadcast over a leading particle dimension are evaluated one
particle per pass (:func:`probe_particle_mode`).
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import detach, scale_and_mask
from pyro.poutine.util import site_is_subsample

from .contexts import isolated, replayed_rng
from .contract import (
    ContractError,
    PairSummary,
    batch_size_of,
    call_arguments,
    warn_once,
)
from .contract import is_latent_site as _is_latent
from .plate import DATA_PLATE, find_data_plate

#: name of the plate that vectorizes the particles
PARTICLE_PLATE = "_particles"


def particle_dim(pair_nesting: int) -> int:
    """The dim of the particle plate for a pair whose plates nest ``pair_nesting`` deep."""
    return -(int(pair_nesting) + 1)


def log_prob_per_datapoint(
    site: dict, num_dims: int, data_dim: int, enum_dims: int = 0, detach_params: bool = False
) -> torch.Tensor:
    """Unscaled, masked log-density of a trace site summed to ``(P or 1, B or 1)``.

    :param num_dims: the number of batch dimensions, plates plus the particle plate
        on the left (dim 0 of the result).
    :param data_dim: the (negative) dim of the data plate.
    :param enum_dims: enumeration dimensions to the left of the particle plate, kept
        as the leading dims of the result: ``(E_n or 1, ..., E_1 or 1, P or 1, B or 1)``.
    :param detach_params: evaluate the density with its parameters detached, as a
        function of the value only (for path-derivative gradients).
    """
    fn = detach(site["fn"]) if detach_params else site["fn"]
    lp = fn.log_prob(site["value"])
    lp = scale_and_mask(lp, 1.0, site["mask"])
    total = num_dims + enum_dims
    if lp.dim() > total:
        raise ValueError(
            f"site '{site['name']}' has log_prob of shape {tuple(lp.shape)}, more batch "
            f"dims than the {num_dims - 1} plate(s) allow; declare batch dims with "
            "pyro.plate or move them to the event with .to_event(...)"
        )
    lp = lp.reshape((1,) * (total - lp.dim()) + tuple(lp.shape))
    keep = set(range(enum_dims + 1)) | {total + data_dim}
    dims = [d for d in range(total) if d not in keep]
    return lp.sum(dims) if dims else lp


def _data_frame(site, plate: str = DATA_PLATE):
    return next((f for f in site["cond_indep_stack"] if f.vectorized and f.name == plate), None)


def _same_scale(a, b) -> bool:
    if isinstance(a, numbers.Number) and isinstance(b, numbers.Number):
        return abs(a - b) <= 1e-6 * max(abs(a), abs(b))
    return bool(
        torch.allclose(
            torch.as_tensor(a, dtype=torch.float64),
            torch.as_tensor(b, dtype=torch.float64),
            rtol=1e-6,
        )
    )


def check_sites(model_trace, guide_trace) -> tuple[int, int, float | torch.Tensor]:
    """Check a particle-plated pair of traces; return ``(data_dim, batch_size, scale)``.

    :raises NotImplementedError: for global latent sites or guide sites without
        ``rsample``.
    :raises ValueError: for unguided or enumerated latents, observations outside
        the data plate, or sites with different scales.
    """
    plate = find_data_plate(model_trace, ignore=frozenset({PARTICLE_PLATE})) or DATA_PLATE
    guide_latents = {n: s for n, s in guide_trace.nodes.items() if _is_latent(s)}
    model_sites = {
        n: s
        for n, s in model_trace.nodes.items()
        if s["type"] == "sample" and not site_is_subsample(s)
    }
    enumerated = [
        n
        for n, s in list(guide_latents.items()) + list(model_sites.items())
        if s["infer"].get("enumerate") is not None
    ]
    if enumerated:
        raise ValueError(
            f"site(s) {sorted(set(enumerated))} are marked for enumeration; importance-"
            "weighted objectives sample every latent. Use the 'enum' objective "
            "(TraceEnum_ELBO) to sum discrete sites out"
        )
    unguided = [n for n, s in model_sites.items() if _is_latent(s) and n not in guide_latents]
    if unguided:
        raise ValueError(
            f"the guide does not sample the model's latent site(s) {unguided}; importance-"
            "weighted objectives need a proposal for every latent, so add them to the guide"
        )
    discrete = [n for n, s in guide_latents.items() if not s["fn"].has_rsample]
    if discrete:
        raise NotImplementedError(
            f"guide site(s) {discrete} are not reparameterizable (discrete, or wrapped for "
            "the score-function estimator); score-function gradients of importance-weighted "
            "bounds are not supported. Enumerate discrete latents in the model with the "
            "'enum' objective (TraceEnum_ELBO), or use a reparameterizable guide"
        )
    global_latents = [n for n, s in guide_latents.items() if _data_frame(s, plate) is None]
    if global_latents:
        raise NotImplementedError(
            f"latent site(s) {global_latents} are global (outside pyro.plate('{plate}')); "
            "importance-weighted objectives weight each data point separately, which needs "
            "every latent inside the data plate. Make them parameters (pyro.param), move "
            "them into pyro_aevb.data_plate(x), or train with 'elbo' or 'renyi'"
        )
    sites = [s for s in model_sites.values()] + list(guide_latents.values())
    loose = [s["name"] for s in sites if _data_frame(s, plate) is None]
    if loose:
        raise ValueError(
            f"site(s) {loose} are outside pyro.plate('{plate}'); wrap "
            "per-data-point sites in pyro_aevb.data_plate(x)"
        )
    frames = {(_data_frame(s, plate).dim, _data_frame(s, plate).size) for s in sites}
    if len(frames) > 1:
        raise ValueError(f"the '{plate}' plate appears with different (dim, size) {frames}")
    scale = sites[0]["scale"]
    odd = [s["name"] for s in sites if not _same_scale(s["scale"], scale)]
    if odd or (isinstance(scale, torch.Tensor) and scale.numel() != 1):
        raise ValueError(
            "importance weighting needs one scalar scale shared by every site (the data "
            "plate's N/B times any poutine.scale around the whole pair), but site(s) "
            f"{odd or [sites[0]['name']]} are scaled differently or per element; a partial "
            "scale such as KL annealing does not define an importance-weighted bound"
        )
    ((data_dim, batch_size),) = frames
    if int(batch_size) <= 0:
        # a plate without a size (pyro.plate("data")) takes the batch's: read it off the
        # sites' batch shapes
        shapes = [tuple(s["fn"].batch_shape) for s in sites]
        batch_size = max(s[data_dim] if len(s) >= -data_dim else 1 for s in shapes)
    return data_dim, batch_size, scale



@dataclass
class ParticleTraces:
    """One vectorized pass of the guide and of the model replayed on its samples."""

    model_trace: poutine.Trace
    guide_trace: poutine.Trace
    #: the guide trace with the values the model saw, to replay the guide on them
    replay_trace: poutine.Trace
    #: latent name -> (the guide's sample, the value the model saw)
    latents: dict[str, tuple[torch.Tensor, torch.Tensor]]
    num_particles: int
    #: batch dims of every site: the pair's plates and the particle plate
    num_dims: int

    def model_sites(self) -> list[dict]:
        return [
            s
            for s in self.model_trace.nodes.values()
            if s["type"] == "sample" and not site_is_subsample(s)
        ]

    def guide_latent_sites(self) -> list[dict]:
        return [s for s in self.guide_trace.nodes.values() if _is_latent(s)]


def trace_particles(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    num_particles: int,
    pair_nesting: int,
    *,
    vectorized: bool = True,
    enumerate_guide: bool = False,
    detach_latents: bool | Callable[[poutine.Trace], bool] = False,
    model_kwargs: dict | None = None,
) -> ParticleTraces:
    """Trace the guide inside the particle plate and the model replayed on its samples.

    :param pair_nesting: how deep the pair's own plates nest.
    :param vectorized: draw ``num_particles`` in the plate of particles; ``False`` draws
        one particle with no such plate (its dim is then a size-1 dim of every site).
    :param enumerate_guide: enumerate guide sites marked for parallel enumeration, in
        the dims to the left of the particle plate.
    :param detach_latents: let the model see the samples as fresh leaf tensors
        (``z.detach().requires_grad_()``), so that gradients with respect to the
        latents can be taken apart from the guide's own graph; a function of the guide
        trace decides once the guide has run.
    :param model_kwargs: the model's keyword arguments, where they differ from the
        guide's ``kwargs``.
    """
    dim = particle_dim(pair_nesting)
    plate = (
        pyro.plate(PARTICLE_PLATE, num_particles, dim=dim)
        if vectorized
        else contextlib.nullcontext()
    )
    with plate:
        traced = poutine.enum(guide, first_available_dim=dim - 1) if enumerate_guide else guide
        guide_trace = poutine.trace(traced).get_trace(*args, **kwargs)
        if callable(detach_latents):
            detach_latents = detach_latents(guide_trace)
        replay_trace = guide_trace
        latents = {}
        if detach_latents:
            replay_trace = guide_trace.copy()
        for name, site in guide_trace.nodes.items():
            if _is_latent(site):
                seen = site["value"].detach().requires_grad_() if detach_latents else site["value"]
                latents[name] = (site["value"], seen)
                if detach_latents:
                    replay_trace.nodes[name] = dict(site, value=seen)
        model_trace = poutine.trace(poutine.replay(model, trace=replay_trace)).get_trace(
            *args, **(kwargs if model_kwargs is None else model_kwargs)
        )
    return ParticleTraces(
        model_trace,
        guide_trace,
        replay_trace,
        latents,
        num_particles if vectorized else 1,
        -dim,
    )


def _sum_sites(sites, num_dims, data_dim, shape, detach_params=False) -> torch.Tensor:
    total = torch.zeros(())
    for site in sites:
        total = total + log_prob_per_datapoint(
            site, num_dims, data_dim, detach_params=detach_params
        )
    return total.expand(shape)


@dataclass
class ParticleDraws:
    """The checked log-densities of one vectorized pass, for the training objectives."""

    #: :math:`\log p(x_i, z_{k,i})`, shape ``(P, B)``, unscaled
    log_p: torch.Tensor
    #: :math:`\log q(z_{k,i} \mid x_i)`, shape ``(P, B)``, unscaled
    log_q: torch.Tensor
    #: the common scale of all sites (``N / B`` inside :func:`pyro_aevb.fit`-like loops)
    scale: float | torch.Tensor
    traces: ParticleTraces
    data_dim: int

    @property
    def log_w(self) -> torch.Tensor:
        return self.log_p - self.log_q

    @property
    def latents(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        return self.traces.latents

    @property
    def num_dims(self) -> int:
        return self.traces.num_dims

    def log_q_at_detached_params(self) -> torch.Tensor:
        r""":math:`\log q_{\bar\phi}(z_{k,i} \mid x_i)`, ``(P, B)``: the guide's densities
        with their parameters detached, a function of the samples only."""
        return _sum_sites(
            self.traces.guide_latent_sites(),
            self.num_dims,
            self.data_dim,
            self.log_q.shape,
            detach_params=True,
        )


def draw_particles(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    num_particles: int,
    pair_nesting: int,
    detach_latents: bool | Callable[[poutine.Trace], bool] = False,
) -> ParticleDraws:
    """Draw ``num_particles`` particles per data point in one vectorized pass, check the
    pair (:func:`check_sites`) and sum the log-densities per data point.

    :param pair_nesting: how deep the pair's own plates nest.
    :param detach_latents: see :func:`trace_particles` (split-gradient estimators).
    """
    traces = trace_particles(
        model, guide, args, kwargs, num_particles, pair_nesting, detach_latents=detach_latents
    )
    data_dim, batch_size, scale = check_sites(traces.model_trace, traces.guide_trace)
    shape = (num_particles, batch_size)
    return ParticleDraws(
        log_p=_sum_sites(traces.model_sites(), traces.num_dims, data_dim, shape),
        log_q=_sum_sites(traces.guide_latent_sites(), traces.num_dims, data_dim, shape),
        scale=scale,
        traces=traces,
        data_dim=data_dim,
    )


def guide_log_density_at(
    guide: Callable, draws: ParticleDraws, args: tuple, kwargs: dict, state: tuple
) -> torch.Tensor:
    r"""Re-run the guide replayed on the values the model saw; :math:`\log q`, ``(P, B)``.

    With leaf latents this is :math:`\log q_\phi(\bar z \mid x)` as a function of
    :math:`\phi` and of the latents taken as independent inputs, including a
    hierarchical guide's dependence of later sites on earlier latents. The guide
    runs from the random ``state`` it first ran from (taken before
    :func:`draw_particles`), so dropout draws the same masks as long as it comes
    before the guide's samples; the result is checked against the first pass.
    """
    num_particles = draws.log_q.shape[0]
    with replayed_rng(state), pyro.plate(PARTICLE_PLATE, num_particles, dim=-draws.num_dims):
        trace = poutine.trace(poutine.replay(guide, trace=draws.traces.replay_trace)).get_trace(
            *args, **kwargs
        )
    sites = [s for s in trace.nodes.values() if _is_latent(s)]
    log_q = _sum_sites(sites, draws.num_dims, draws.data_dim, draws.log_q.shape)
    if not torch.allclose(log_q.detach(), draws.log_q.detach(), rtol=1e-4, atol=1e-4):
        raise ValueError(
            "the guide's log-density changed when it was re-run on the same latent values; "
            "path-derivative estimators (DReG, STL) need a guide that is a deterministic "
            "function of its inputs and latents: remove randomness after the guide's "
            "sample sites (e.g. dropout) or put the guide in eval mode"
        )
    return log_q


# -- evaluation -------------------------------------------------------------------------


def importance_terms(
    model: Callable,
    guide: Callable,
    batch: Mapping[str, torch.Tensor],
    num_particles: int,
    summary: PairSummary,
    vectorized: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Per-particle log-weights and ELBO terms, each ``(K, B)``, nats.

    Particles are drawn in one vectorized pass through the plate of particles. Without
    enumerated guide sites both outputs are
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
            _importance_terms_once(model, guide, batch, 1, summary, vectorized=False)
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
    vectorized: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One pass of :func:`importance_terms`: ``num_particles`` in the plate of particles,
    or one particle with no such plate."""
    if summary.global_latent_sites:
        raise NotImplementedError(
            f"per-data-point evaluation needs every latent site inside the data plate, but "
            f"{summary.global_latent_sites} are global; evaluate such models with a "
            "joint (whole-batch) estimator instead"
        )
    traces = trace_particles(
        model,
        guide,
        (),
        call_arguments(guide, batch, "guide"),
        num_particles,
        summary.max_plate_nesting,
        vectorized=vectorized,
        enumerate_guide=True,
        model_kwargs=call_arguments(model, batch, "model"),
    )
    guide_latents = {s["name"]: s for s in traces.guide_latent_sites()}
    enumerated = [
        n for n, s in guide_latents.items() if s["infer"].get("_enumerate_dim") is not None
    ]
    num_enum = len(enumerated)

    def per_datapoint(site):
        return log_prob_per_datapoint(site, traces.num_dims, summary.data_dim, num_enum)

    log_joint = torch.zeros(())  # log p(x, y, z) - log q(z | x, y): (E..., K, B)
    for site in traces.model_sites():
        if not site["is_observed"] and site["name"] not in guide_latents:
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
