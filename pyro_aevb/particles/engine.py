"""The particle pass: the guide in the plate of particles, the model replayed on its
samples, and each site's log-density summed per particle and data point."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import detach, scale_and_mask
from pyro.poutine.util import site_is_subsample

from ..contract import is_latent_site as _is_latent

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


def sum_sites(sites, num_dims, data_dim, shape, detach_params=False) -> torch.Tensor:
    """The per-datapoint log-densities of ``sites`` summed, expanded to ``shape``."""
    total = torch.zeros(())
    for site in sites:
        total = total + log_prob_per_datapoint(
            site, num_dims, data_dim, detach_params=detach_params
        )
    return total.expand(shape)
