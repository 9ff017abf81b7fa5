r"""Per-data-point log importance weights of vectorized particles, for training.

The importance-weighted objectives of :mod:`pyro_aevb.importance_weighted` need,
for a minibatch of ``B`` points and ``P`` particles per point, the log-weights

.. math::

    \log w_{k,i} = \log p_\theta(x_i, z_{k,i}) - \log q_\phi(z_{k,i} \mid x_i),
    \qquad z_{k,i} \sim q_\phi(z \mid x_i),

as a ``(P, B)`` tensor that autograd can differentiate. :func:`draw_particles`
runs the guide once inside an extra plate of ``P`` particles, to the left of all
of the pair's plates, and the model replayed on its samples, as
:func:`pyro_aevb.evaluation.log_importance_weights` does; each site's
log-density is summed over every dimension but the particle plate and the data
plate (:func:`log_prob_per_datapoint`).

The log-densities are *unscaled*: the data plate's subsample scale ``N / B``
(and any ``poutine.scale`` around the whole pair, as :func:`pyro_aevb.fit`
applies) must multiply the per-point bound, after the log-sum-exp over
particles, not the log-weights. :func:`draw_particles` returns that scale and
checks that every site carries the same one.

Which pairs qualify, and why the others are rejected:

* every latent site lies inside ``pyro.plate("data")``: a global latent couples
  all data points, so there is no per-point weight to average;
* every guide site is reparameterizable: the objectives differentiate through
  the samples (score-function IWAE gradients are not implemented);
* the guide samples every latent site of the model and nothing is marked for
  enumeration (sum discrete sites out with the ``enum`` objective instead).
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample

from .contract import is_latent_site as _is_latent
from .plate import DATA_PLATE, find_data_plate

#: name of the plate that vectorizes the particles
PARTICLE_PLATE = "_iw_particles"


def log_prob_per_datapoint(
    site: dict, num_dims: int, data_dim: int, enum_dims: int = 0
) -> torch.Tensor:
    """Unscaled, masked log-density of a trace site summed to ``(P or 1, B or 1)``.

    :param num_dims: the number of batch dimensions, plates plus the particle plate
        on the left (dim 0 of the result).
    :param data_dim: the (negative) dim of the data plate.
    :param enum_dims: enumeration dimensions to the left of the particle plate, kept
        as the leading dims of the result: ``(E_n or 1, ..., E_1 or 1, P or 1, B or 1)``.
    """
    lp = site["fn"].log_prob(site["value"])
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
class ParticleDraws:
    """One vectorized pass of the guide and of the model replayed on its samples."""

    #: :math:`\log p(x_i, z_{k,i})`, shape ``(P, B)``, unscaled
    log_p: torch.Tensor
    #: :math:`\log q(z_{k,i} \mid x_i)`, shape ``(P, B)``, unscaled
    log_q: torch.Tensor
    #: the common scale of all sites (``N / B`` inside :func:`pyro_aevb.fit`-like loops)
    scale: float | torch.Tensor
    #: latent name -> (the guide's sample, the value the model saw)
    latents: dict[str, tuple[torch.Tensor, torch.Tensor]]
    #: the guide trace with the values the model saw, to replay the guide on them
    replay_trace: poutine.Trace
    data_dim: int
    num_dims: int

    @property
    def log_w(self) -> torch.Tensor:
        return self.log_p - self.log_q


def _sum_sites(sites, num_dims, data_dim, shape) -> torch.Tensor:
    total = torch.zeros(())
    for site in sites:
        total = total + log_prob_per_datapoint(site, num_dims, data_dim)
    return total.expand(shape)


def draw_particles(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    num_particles: int,
    max_plate_nesting: int,
    detach_latents: bool = False,
) -> ParticleDraws:
    """Draw ``num_particles`` particles per data point in one vectorized pass.

    :param detach_latents: let the model see the samples as fresh leaf tensors
        (``z.detach().requires_grad_()``), so that gradients with respect to the
        latents can be taken apart from the guide's own graph (DReG, STL, PIWAE).
    """
    dim = -(max_plate_nesting + 1)
    with pyro.plate(PARTICLE_PLATE, num_particles, dim=dim):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        replay_trace = guide_trace.copy()
        latents = {}
        for name, site in guide_trace.nodes.items():
            if _is_latent(site):
                seen = site["value"].detach().requires_grad_() if detach_latents else site["value"]
                latents[name] = (site["value"], seen)
                replay_trace.nodes[name] = dict(site, value=seen)
        model_trace = poutine.trace(poutine.replay(model, trace=replay_trace)).get_trace(
            *args, **kwargs
        )
    data_dim, batch_size, scale = check_sites(model_trace, guide_trace)
    num_dims = max_plate_nesting + 1
    shape = (num_particles, batch_size)
    model_sites = [
        s for s in model_trace.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)
    ]
    guide_sites = [s for s in guide_trace.nodes.values() if _is_latent(s)]
    return ParticleDraws(
        log_p=_sum_sites(model_sites, num_dims, data_dim, shape),
        log_q=_sum_sites(guide_sites, num_dims, data_dim, shape),
        scale=scale,
        latents=latents,
        replay_trace=replay_trace,
        data_dim=data_dim,
        num_dims=num_dims,
    )


def rng_state() -> tuple:
    """The CPU (and, if initialized, CUDA) random state, for :func:`replayed_rng`."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


@contextlib.contextmanager
def replayed_rng(state: tuple) -> Iterator[None]:
    """Run a block from the random ``state`` and restore the current state after it."""
    cpu, cuda = state
    with torch.random.fork_rng(devices=list(range(len(cuda))) if cuda is not None else []):
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        yield


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
        trace = poutine.trace(poutine.replay(guide, trace=draws.replay_trace)).get_trace(
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
