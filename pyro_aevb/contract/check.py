""":func:`check_pair`: the contract's checks of a pair on its first batch, in order
(arguments and traces, sites, the data plate, observed values), and the summary of
what they found."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace

import torch

from .call import batch_size_of, trace_pair
from .errors import PairSummary, raise_problems
from .plates import data_plate_of, plate_layout
from .sites import (
    enumerated_guide_sites,
    enumerated_model_sites,
    enumeration_size,
    max_plate_nesting,
    param_names,
    site_problems,
)
from .support import observed_value_fields, support_check_enabled


def _refuse_particle_probe(check_evaluation: bool) -> None:
    if check_evaluation:
        raise TypeError(
            "check_pair checks the contract only; to draw evaluation's particles too "
            "(PairSummary.particle_mode) call pyro_aevb.particles.summarize_pair(model, "
            "guide, batch, ...) with the same arguments"
        )


def check_pair(
    model: Callable,
    guide: Callable,
    batch: Mapping[str, torch.Tensor],
    allow_model_enumeration: bool = False,
    check_support: bool = True,
    check_evaluation: bool = False,
) -> PairSummary:
    """Run ``guide`` and ``model`` on one batch and check the contract.

    :param batch: field name -> tensor with the data points on dim 0.
    :param allow_model_enumeration: let model sites marked
        ``infer={"enumerate": ...}`` be absent from the guide (``TraceEnum_ELBO``).
    :param check_support: check observed values against the likelihood's support;
        ``False`` (or an attribute ``check_support = False`` on the model or guide)
        skips it with a warning, for pairs that mean to train e.g. a Bernoulli
        likelihood on grey values, as Pyro's VAE example does.
    :param check_evaluation: no longer drawn here (the contract checks the programs;
        drawing particles is the particle layer's): ``True`` raises a ``TypeError``
        naming :func:`pyro_aevb.particles.summarize_pair`, which runs this check and
        then draws evaluation's particles (:attr:`PairSummary.particle_mode`).
    :raises ContractError: naming every missing, extra or misshaped site, a
        missing data plate, or observed values outside the likelihood's support.
    """
    _refuse_particle_probe(check_evaluation)
    traces = trace_pair(model, guide, batch)
    enumerated = enumerated_model_sites(traces.model_latents, traces.guide_latents)
    problems = site_problems(traces, enumerated, allow_model_enumeration)
    plate, plate_problems = data_plate_of(traces)
    layout = plate_layout(traces, plate, batch_size_of(batch))
    raise_problems(problems + plate_problems + layout.problems)
    supports_checked = support_check_enabled(model, guide, check_support)
    observed_fields = observed_value_fields(traces.observed, batch, supports_checked)
    model_params = param_names(traces.model_trace)
    enumerated_guide = enumerated_guide_sites(traces.guide_latents)
    return PairSummary(
        latent_sites=list(traces.model_latents),
        observed_sites=list(traces.observed),
        enumerated_model_sites=enumerated,
        global_latent_sites=layout.global_latents,
        data_dim=layout.data_dims.pop(),
        max_plate_nesting=max_plate_nesting(traces),
        observed_fields=observed_fields,
        model_params=model_params,
        guide_params=[n for n in param_names(traces.guide_trace) if n not in model_params],
        enumerated_guide_sites=list(enumerated_guide),
        guide_enumeration_size=enumeration_size(enumerated_guide),
        data_plate=plate,
        support_checked=supports_checked,
    )


def merge_summaries(labeled: PairSummary, unlabeled: PairSummary) -> PairSummary:
    """One summary of a semi-supervised pair from its labeled and unlabeled batches: the
    unlabeled batches' latents (the label among them), both batches' observed fields
    and parameters, and the deeper plate nesting."""
    params = list(dict.fromkeys(labeled.model_params + unlabeled.model_params))
    return replace(
        unlabeled,
        observed_fields={**unlabeled.observed_fields, **labeled.observed_fields},
        observed_sites=list(dict.fromkeys(labeled.observed_sites + unlabeled.observed_sites)),
        model_params=params,
        guide_params=[
            n
            for n in dict.fromkeys(labeled.guide_params + unlabeled.guide_params)
            if n not in params
        ],
        max_plate_nesting=max(labeled.max_plate_nesting, unlabeled.max_plate_nesting),
        particle_mode=labeled.particle_mode,
    )
