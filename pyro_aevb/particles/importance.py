"""Per-particle log-weights and ELBO terms for evaluation, vectorized or one particle
per pass, with guide sites marked for enumeration summed out."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from pyro import poutine

from ..contexts import isolated
from ..contract import ContractError, PairSummary, batch_size_of, call_arguments, warn_once
from .engine import log_prob_per_datapoint, trace_particles


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
