"""The per-batch terms of the collapse diagnostics: one pass of ``S`` draws per point
through the plate of particles, each latent site's per-dimension KL, posterior mean and
draws as ``(B, S, L)``, and the guide's densities for the aggregate posterior."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine

from ..contract import batch_size_of, call_arguments, is_latent_site
from ..objectives.free_bits import PerDimensionKLError, per_dimension_kl
from ..particles import PARTICLE_PLATE, particle_dim, trace_particles

#: the most densities (sample x point x dim) held at once in the aggregate-posterior pass
MAX_ELEMENTS = 20_000_000


class UnsupportedPairError(PerDimensionKLError):
    """The pair has no per-dimension diagnostics (densities that couple dimensions,
    global, plated or masked latents); the message says why and what works."""


def _points_first(t: torch.Tensor, site: dict, num_dims: int, data_dim: int) -> torch.Tensor:
    """A site's per-element tensor ``batch + event`` as ``(B, S, L)``: data plate, particle
    plate, the event flattened.

    :raises UnsupportedPairError: for other plates of size > 1 over the site.
    """
    event_dim = len(site["fn"].event_shape)
    batch = t.shape[: t.dim() - event_dim]
    batch = (1,) * (num_dims - len(batch)) + tuple(batch)
    t = t.reshape(batch + tuple(t.shape[t.dim() - event_dim :]))
    extra = [d for d in range(num_dims) if d not in (0, num_dims + data_dim) and batch[d] > 1]
    if extra:
        raise UnsupportedPairError(
            f"site '{site['name']}' lies in plates besides the data plate (batch shape "
            f"{tuple(site['fn'].batch_shape)}); the collapse diagnostics take latent sites "
            "whose only plate is the data plate: move other dimensions to the event"
        )
    t = t.movedim(num_dims + data_dim, 0)
    return t.reshape(t.shape[0], t.shape[1], -1) if event_dim else t.reshape(*t.shape[:2], 1)


def _check_unmasked(site: dict) -> None:
    mask = site["mask"]
    if mask is not None and not bool(torch.as_tensor(mask).all()):
        raise UnsupportedPairError(
            f"site '{site['name']}' is masked (e.g. variable-length sequences); the collapse "
            "diagnostics average over every test point and do not take masked sites yet"
        )


def _posterior_mean(q_fn, value: torch.Tensor) -> torch.Tensor:
    """E_q[z | x] per draw: the density's mean where it has one, else the draw itself
    (averaging over draws then gives the Monte Carlo mean)."""
    try:
        return q_fn.mean.expand_as(value)
    except NotImplementedError:
        return value


@dataclass
class _BatchTerms:
    """What one batch contributes: per-site tensors ``(B, S, L)`` and draws."""

    kl: dict[str, torch.Tensor]
    mean: dict[str, torch.Tensor]
    draws: dict[str, torch.Tensor]  # (B, S, *event)
    log_q: torch.Tensor  # (B, S), summed over the sites
    log_p: torch.Tensor  # (B, S)
    guide_fns: dict  # site -> q(z | x_b) with batch shape (B,), for the cross densities
    analytic: bool
    notes: dict[str, str]


def _points_first_lp(t: torch.Tensor, num_dims: int, data_dim: int) -> torch.Tensor:
    """A log-density of batch shape (no event) as ``(B, S)``."""
    t = t.reshape((1,) * (num_dims - t.dim()) + tuple(t.shape))
    t = t.movedim(num_dims + data_dim, 0)
    return t.reshape(t.shape[0], t.shape[1] if t.dim() > 1 else 1, -1).sum(-1)


def _prior_shared_by_points(model, kwargs, traces, names, summary) -> bool:
    """Whether p(z) is one density for every point: the model replayed with every
    point's latents set to point 0's gives the same log p at each point."""
    replay = traces.guide_trace.copy()
    for name in names:
        site = replay.nodes[name]
        value = site["value"]
        dim = value.dim() - len(site["fn"].event_shape) + summary.data_dim
        if dim >= 0:
            first = value.narrow(dim, 0, 1).expand_as(value)
            replay.nodes[name] = dict(site, value=first)
    with pyro.plate(PARTICLE_PLATE, traces.num_particles, dim=particle_dim(traces.num_dims - 1)):
        trace = poutine.trace(poutine.replay(model, trace=replay)).get_trace(**kwargs)
    log_p = sum(
        _points_first_lp(
            trace.nodes[n]["fn"].log_prob(trace.nodes[n]["value"]),
            traces.num_dims,
            summary.data_dim,
        )
        for n in names
    )
    return bool(torch.allclose(log_p, log_p[:1].expand_as(log_p), rtol=1e-5, atol=1e-5))


def _plain_guide_fns(guide, kwargs, values: dict, log_q: torch.Tensor, batch_size: int, notes):
    """q(z | x_b) of each site with batch shape ``(B,)``, from one run of the guide with
    no particle plate, for the cross densities q(z_n | x_m); ``None`` (and a note) if
    those cannot stand for the guide: a site depending on another's draw, or randomness."""
    trace = poutine.trace(guide).get_trace(**kwargs)
    fns, total = {}, 0.0
    for name, draws in values.items():  # draws (B, S, *event)
        fn = trace.nodes[name]["fn"]
        if tuple(fn.batch_shape) != (batch_size,):
            notes["mutual_information"] = (
                f"site '{name}' has batch shape {tuple(fn.batch_shape)} outside a particle "
                f"plate, not ({batch_size},)"
            )
            return None
        fns[name] = fn
        total = total + fn.log_prob(draws.movedim(0, 1)).movedim(0, 1)
    if not torch.allclose(total, log_q, rtol=1e-4, atol=1e-3):
        notes["mutual_information"] = (
            "q(z | x) is not a product over the latent sites given x alone (a site depends "
            "on another's draw, or the guide is random in eval mode), so q(z | x_m) cannot "
            "be evaluated at other points' draws"
        )
        return None
    return fns


def _batch_terms(model, guide, batch, summary, names, num_samples, analytic_kl) -> _BatchTerms:
    """Trace ``num_samples`` draws per point and collect the per-dimension terms."""
    guide_kwargs = call_arguments(guide, batch, "guide")
    model_kwargs = call_arguments(model, batch, "model")
    traces = trace_particles(
        model, guide, (), guide_kwargs, num_samples, summary.max_plate_nesting,
        model_kwargs=model_kwargs,
    )  # fmt: skip
    nd, data_dim = traces.num_dims, summary.data_dim
    kl, mean, draws, analytic, notes = {}, {}, {}, True, {}
    log_q, log_p = 0.0, 0.0
    for name in names:
        q_site, p_site = traces.guide_trace.nodes[name], traces.model_trace.nodes[name]
        _check_unmasked(q_site), _check_unmasked(p_site)
        value = q_site["value"]
        try:
            terms, exact = per_dimension_kl(q_site["fn"], p_site["fn"], value, name, analytic_kl)
        except PerDimensionKLError as error:
            raise UnsupportedPairError(f"{error}; pass sites=[...] to leave it out") from error
        analytic = analytic and exact
        kl[name] = _points_first(terms.expand_as(value), q_site, nd, data_dim)
        mean[name] = _points_first(_posterior_mean(q_site["fn"], value), q_site, nd, data_dim)
        event = tuple(q_site["fn"].event_shape)
        flat = _points_first(value, q_site, nd, data_dim)
        draws[name] = flat.reshape(flat.shape[:2] + event)
        log_q = log_q + _points_first_lp(q_site["fn"].log_prob(value), nd, data_dim)
        log_p = log_p + _points_first_lp(p_site["fn"].log_prob(value), nd, data_dim)
    every_site = [n for n, s in traces.guide_trace.nodes.items() if is_latent_site(s)]
    fns = None
    if set(every_site) != set(names):
        notes["mutual_information"] = (
            "it is computed over every latent site, but sites "
            f"{sorted(set(every_site) - set(names))} are left out"
        )
    elif not _prior_shared_by_points(model, model_kwargs, traces, names, summary):
        notes["mutual_information"] = (
            "p(z) depends on the data (a conditional prior p(z | y)), so KL(q(z) || p(z)) has "
            "no single prior to compare with"
        )
    else:
        fns = _plain_guide_fns(guide, guide_kwargs, draws, log_q, batch_size_of(batch), notes)
    return _BatchTerms(kl, mean, draws, log_q, log_p, fns, analytic, notes)


def _aggregate_log_density(draws: dict, fns: list[dict], num_points: int) -> torch.Tensor:
    r""":math:`\log \frac1N \sum_m q(z_{ns} \mid x_m)` at every draw, ``(N, S)``, from the
    per-batch densities ``fns``, at most :data:`MAX_ELEMENTS` densities at a time."""
    first = next(iter(draws.values()))
    n, s = first.shape[:2]
    flat = {k: v.reshape((n * s,) + tuple(v.shape[2:])) for k, v in draws.items()}
    largest_batch = max(fn.batch_shape[0] for batch_fns in fns for fn in batch_fns.values())
    width = sum(v[0].numel() for v in flat.values()) * largest_batch
    chunk = max(1, MAX_ELEMENTS // max(1, width))
    out = []
    for start in range(0, n * s, chunk):
        columns = []
        for batch_fns in fns:
            log_q = 0.0
            for name, fn in batch_fns.items():
                z = flat[name][start : start + chunk]
                log_q = log_q + fn.log_prob(z.unsqueeze(1))  # (C, M_b)
            columns.append(log_q)
        out.append(torch.logsumexp(torch.cat(columns, 1).double(), 1) - math.log(num_points))
    return torch.cat(out).reshape(n, s)
