"""What the training objectives require of a particle pass (see :mod:`pyro_aevb.particles`)."""

from __future__ import annotations

import numbers

import torch
from pyro.poutine.util import site_is_subsample

from ..contract import is_latent_site as _is_latent
from ..plate import DATA_PLATE, find_data_plate
from .engine import PARTICLE_PLATE


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
