"""The checked log-densities of a particle pass, for the training objectives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine

from ..contexts import replayed_rng
from ..contract import is_latent_site as _is_latent
from .checks import check_sites
from .engine import PARTICLE_PLATE, ParticleTraces, sum_sites, trace_particles


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
        return sum_sites(
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
        log_p=sum_sites(traces.model_sites(), traces.num_dims, data_dim, shape),
        log_q=sum_sites(traces.guide_latent_sites(), traces.num_dims, data_dim, shape),
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
    log_q = sum_sites(sites, draws.num_dims, draws.data_dim, draws.log_q.shape)
    if not torch.allclose(log_q.detach(), draws.log_q.detach(), rtol=1e-4, atol=1e-4):
        raise ValueError(
            "the guide's log-density changed when it was re-run on the same latent values; "
            "path-derivative estimators (DReG, STL) need a guide that is a deterministic "
            "function of its inputs and latents: remove randomness after the guide's "
            "sample sites (e.g. dropout) or put the guide in eval mode"
        )
    return log_q


# -- evaluation -------------------------------------------------------------------------
