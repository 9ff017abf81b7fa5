"""The model/guide contract, and the check that enforces it on the first batch.

A *model* and a *guide* are callables, ideally ``nn.Module`` s whose ``forward``
is the Pyro program, that follow four rules:

1. **Same arguments.** Both are called with keyword arguments taken from the
   batch by name (``x`` the data, ``y`` the labels, ...). Each receives the
   fields its signature names (all of them if it takes ``**kwargs``).
2. **One data plate.** Per-data-point sites live in an outermost
   ``pyro.plate("data", ...)``; use :func:`pyro_aevb.data_plate` so that
   minibatch losses are scaled to the full data set during :func:`fit`.
3. **Observed sites** are given with ``obs=``.
4. **Matching latents.** The guide samples every latent site of the model, with
   the same name, shape and ``event_dim`` (a model site marked for enumeration
   may be left out of the guide when the objective enumerates).

Parameters are registered with Pyro (``pyro.module`` or ``PyroModule``) so that
SVI optimizes them. A new pair takes twenty lines::

    import pyro, pyro.distributions as dist, torch
    from torch import nn
    from pyro_aevb import data_plate

    class LinearGaussian(nn.Module):              # p(z) p(x | z)
        def __init__(self, x_dim, z_dim):
            super().__init__()
            self.z_dim, self.decoder = z_dim, nn.Linear(z_dim, x_dim)

        def forward(self, x):
            pyro.module("decoder", self.decoder)
            with data_plate(x):
                z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
                pyro.sample("x", dist.Normal(self.decoder(z), 1.0).to_event(1), obs=x)

    class LinearEncoder(nn.Module):               # q(z | x)
        def __init__(self, x_dim, z_dim):
            super().__init__()
            self.loc, self.log_scale = nn.Linear(x_dim, z_dim), nn.Parameter(torch.zeros(z_dim))

        def forward(self, x):
            pyro.module("encoder", self)
            with data_plate(x):
                pyro.sample("z", dist.Normal(self.loc(x), self.log_scale.exp()).to_event(1))

:func:`check_pair` runs both on the first batch before any training step and
raises :class:`ContractError` naming the missing, extra or misshaped sites.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.poutine.util import site_is_subsample

from .plate import DATA_PLATE


class ContractError(ValueError):
    """A model/guide pair does not follow the contract of :mod:`pyro_aevb.contract`."""


def call_arguments(fn: Callable, batch: Mapping[str, torch.Tensor], role: str) -> dict:
    """Select the batch fields that ``fn`` takes, by parameter name.

    :raises ContractError: if ``fn`` requires an argument that the batch lacks.
    """
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    params = inspect.signature(target).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return dict(batch)
    kwargs, missing = {}, []
    for p in params:
        if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.POSITIONAL_ONLY):
            continue
        if p.name in batch:
            kwargs[p.name] = batch[p.name]
        elif p.default is inspect.Parameter.empty:
            missing.append(p.name)
    if missing:
        raise ContractError(
            f"the {role} requires argument(s) {missing} but the data provide only "
            f"{sorted(batch)}; name the {role}'s arguments after the data fields"
        )
    return kwargs


@dataclass
class PairSummary:
    """What :func:`check_pair` learned about a pair from the first batch."""

    latent_sites: list[str]
    observed_sites: list[str]
    enumerated_model_sites: list[str]
    global_latent_sites: list[str]
    data_dim: int
    max_plate_nesting: int
    #: observed site name -> (data field it observes, elementwise support of its distribution)
    observed_fields: dict[str, tuple[str, constraints.Constraint]] = field(default_factory=dict)
    #: names of the Pyro parameters the model uses (those it shares with the guide included)
    model_params: list[str] = field(default_factory=list)
    #: names of the Pyro parameters only the guide uses
    guide_params: list[str] = field(default_factory=list)
    #: guide sites marked for parallel enumeration, and the number of joint values
    #: they take (the factor by which enumeration multiplies a batch's rows)
    enumerated_guide_sites: list[str] = field(default_factory=list)
    guide_enumeration_size: int = 1


def _frames(site):
    return [f for f in site["cond_indep_stack"] if f.vectorized]


def is_latent_site(site) -> bool:
    """A sample site that is neither observed, a plate subsample nor auxiliary."""
    return (
        site["type"] == "sample"
        and not site["is_observed"]
        and not site_is_subsample(site)
        and not site["infer"].get("is_auxiliary", False)
    )


def elementwise_support(constraint: constraints.Constraint) -> constraints.Constraint:
    """Strip ``independent`` wrappers so a support can be checked value by value."""
    while isinstance(constraint, constraints.independent):
        constraint = constraint.base_constraint
    return constraint


def check_pair(
    model: Callable,
    guide: Callable,
    batch: Mapping[str, torch.Tensor],
    allow_model_enumeration: bool = False,
) -> PairSummary:
    """Run ``guide`` and ``model`` on one batch and check the contract.

    :param batch: field name -> tensor with the data points on dim 0.
    :param allow_model_enumeration: let model sites marked
        ``infer={"enumerate": ...}`` be absent from the guide (``TraceEnum_ELBO``).
    :raises ContractError: naming every missing, extra or misshaped site, a
        missing data plate, or observed values outside the likelihood's support.
    """
    guide_kwargs = call_arguments(guide, batch, "guide")
    model_kwargs = call_arguments(model, batch, "model")
    guide_trace = poutine.trace(guide).get_trace(**guide_kwargs)
    # The model runs on its own prior draws, not replayed on the guide's: a
    # misshaped guide sample would crash the model before the check could name it.
    model_trace = poutine.trace(model).get_trace(**model_kwargs)
    model_latents = {n: s for n, s in model_trace.nodes.items() if is_latent_site(s)}
    guide_latents = {n: s for n, s in guide_trace.nodes.items() if is_latent_site(s)}
    observed = {
        n: s
        for n, s in model_trace.nodes.items()
        if s["type"] == "sample" and s["is_observed"] and not site_is_subsample(s)
    }

    problems = []
    enumerated = [
        n
        for n, s in model_latents.items()
        if n not in guide_latents and s["infer"].get("enumerate")
    ]
    missing = [n for n in model_latents if n not in guide_latents and n not in enumerated]
    if enumerated and not allow_model_enumeration:
        missing += enumerated
    if missing:
        problems.append(
            f"the guide does not sample the model's latent site(s) {missing}; "
            "add pyro.sample(<same name>, ...) to the guide"
        )
    extra = [n for n in guide_latents if n not in model_latents]
    if extra:
        problems.append(
            f"the guide samples site(s) {extra} that the model does not have "
            "(or observes); rename them to match the model's latent sites"
        )
    for name in set(model_latents) & set(guide_latents):
        m_fn, g_site = model_latents[name]["fn"], guide_latents[name]
        value_shape = tuple(g_site["value"].shape)
        if m_fn.event_dim != g_site["fn"].event_dim:
            problems.append(
                f"site '{name}' has event_dim {g_site['fn'].event_dim} in the guide but "
                f"{m_fn.event_dim} in the model; use .to_event(...) to make them agree"
            )
        elif tuple(m_fn.shape()) != value_shape:
            problems.append(
                f"site '{name}' has shape {value_shape} in the guide but the model's "
                f"distribution has shape {tuple(m_fn.shape())}"
            )
    if not observed:
        problems.append("the model observes no site; pass the data with obs=")

    batch_size = next(iter(batch.values())).shape[0]
    data_dims = set()
    global_latents = []
    for name, site in list(observed.items()) + list(model_latents.items()):
        frames = _frames(site)
        data_frames = [f for f in frames if f.name == DATA_PLATE]
        if not data_frames:
            if name in observed:
                problems.append(
                    f"observed site '{name}' is not inside pyro.plate('{DATA_PLATE}', ...); "
                    "wrap per-data-point sites in pyro_aevb.data_plate(x)"
                )
            else:
                global_latents.append(name)
            continue
        frame = data_frames[0]
        if frames[0].name != DATA_PLATE:
            problems.append(
                f"site '{name}': the '{DATA_PLATE}' plate must be the outermost plate, "
                f"but '{frames[0].name}' encloses it"
            )
        if frame.size != batch_size:
            problems.append(
                f"site '{name}': the '{DATA_PLATE}' plate has {frame.size} elements "
                f"but the batch has {batch_size} data points"
            )
        data_dims.add(frame.dim)
    if len(data_dims) > 1:
        problems.append(f"the '{DATA_PLATE}' plate appears at several dims {sorted(data_dims)}")

    if problems:
        raise ContractError(
            "the model/guide pair does not follow the contract (see pyro_aevb.contract):\n  - "
            + "\n  - ".join(problems)
        )

    observed_fields = {}
    for name, site in observed.items():
        support = elementwise_support(site["fn"].support)
        value = site["value"]
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ContractError(f"observed site '{name}' contains NaN or infinite values")
        ok = support.check(value)
        if not bool(ok.all()):
            bad = value[~ok.expand_as(value)] if ok.shape == value.shape else value.flatten()
            raise ContractError(
                f"observed site '{name}' has values outside the support of "
                f"{type(site['fn']).__name__} ({support}), e.g. {bad.flatten()[0].item():.4g}"
                + support_hint(support)
            )
        # The field itself, or else the one field it is a view of (a sequence model
        # observes x[:, t] at step t); then check_data_support checks the whole field.
        exact = [
            f
            for f, t in batch.items()
            if t.data_ptr() == value.data_ptr() and t.numel() == value.numel()
        ]
        views = [f for f, t in batch.items() if _same_storage(t, value)]
        matched = exact or (views if len(views) == 1 else [])
        if matched:
            observed_fields[name] = (matched[0], support)

    all_dims = [
        f.dim
        for s in list(model_trace.nodes.values()) + list(guide_trace.nodes.values())
        if s["type"] == "sample"
        for f in _frames(s)
    ]
    model_params = _param_names(model_trace)
    enumerated_guide = {
        n: s["fn"].enumerate_support(expand=False).shape[0]
        for n, s in guide_latents.items()
        if s["infer"].get("enumerate") == "parallel"
    }
    return PairSummary(
        latent_sites=list(model_latents),
        observed_sites=list(observed),
        enumerated_model_sites=enumerated,
        global_latent_sites=global_latents,
        data_dim=data_dims.pop(),
        max_plate_nesting=-min(all_dims) if all_dims else 0,
        observed_fields=observed_fields,
        model_params=model_params,
        guide_params=[n for n in _param_names(guide_trace) if n not in model_params],
        enumerated_guide_sites=list(enumerated_guide),
        guide_enumeration_size=math.prod(enumerated_guide.values()),
    )


def _same_storage(field: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether an observed value is a data field or a view into it."""
    if not isinstance(value, torch.Tensor) or value.device != field.device:
        return False
    return value.untyped_storage().data_ptr() == field.untyped_storage().data_ptr()


def _param_names(trace) -> list[str]:
    return [n for n, s in trace.nodes.items() if s["type"] == "param"]


def support_hint(support: constraints.Constraint) -> str:
    """A sentence telling the user how to bring data into ``support``."""
    if support is constraints.boolean:
        return (
            "; a Bernoulli likelihood needs binary data: binarize it "
            "(transform 'dynamic', 'fixed' or 'threshold') or use a continuous Bernoulli"
        )
    if support is constraints.unit_interval:
        return "; a continuous Bernoulli needs values in [0, 1]: rescale the data"
    return ""


def check_data_support(summary: PairSummary, fields: Mapping[str, torch.Tensor]) -> None:
    """Check whole data fields against the support of the sites that observe them.

    :func:`check_pair` sees one batch; this checks every data point before
    training, for the observed sites whose value is a data field.
    """
    for site, (field_name, support) in summary.observed_fields.items():
        ok = support.check(fields[field_name])
        if not bool(ok.all()):
            rows = (~ok).reshape(ok.shape[0], -1).any(-1).nonzero().flatten()
            raise ContractError(
                f"data field '{field_name}' (observed at site '{site}') has values outside "
                f"the support ({support}) in {rows.numel()} data point(s), first at index "
                f"{rows[0].item()}" + support_hint(support)
            )
