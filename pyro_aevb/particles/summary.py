"""The full first-batch check of a pair: the contract's checks, then evaluation's particles.

:func:`pyro_aevb.contract.check_pair` checks what the contract says about the programs
(sites, plates, arguments, supports); drawing particles is this layer's business, so the
particle-mode probe (:func:`~pyro_aevb.particles.importance.probe_particle_mode`) runs
here, on top of it. Every caller that needs :attr:`PairSummary.particle_mode` (``fit``,
evaluation) calls :func:`summarize_pair`; the contract layer never imports upwards.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch

from ..contract import PairSummary, check_pair
from .importance import probe_particle_mode


def summarize_pair(
    model: Callable,
    guide: Callable,
    batch: Mapping[str, torch.Tensor],
    allow_model_enumeration: bool = False,
    check_support: bool = True,
    check_evaluation: bool = True,
    particles: int = 2,
) -> PairSummary:
    """:func:`~pyro_aevb.contract.check_pair` on ``batch``, then (``check_evaluation``)
    ``particles`` particles drawn as evaluation draws them, vectorized and, if that fails,
    one at a time, so that an evaluation-only failure shows before any training.

    The mode that works is :attr:`PairSummary.particle_mode` (``"vectorized"`` or
    ``"loop"``); it stays ``None`` for pairs with global latents, which per-data-point
    evaluation refuses (:func:`pyro_aevb.contract.require_per_datapoint`), and without
    ``check_evaluation``. The other arguments are :func:`check_pair`'s.

    :raises ContractError: what :func:`check_pair` raises, or when evaluation can draw
        particles neither vectorized nor one at a time.
    """
    summary = check_pair(
        model,
        guide,
        batch,
        allow_model_enumeration=allow_model_enumeration,
        check_support=check_support,
    )
    if check_evaluation and not summary.global_latent_sites:
        summary.particle_mode = probe_particle_mode(model, guide, batch, summary, particles)
    return summary
