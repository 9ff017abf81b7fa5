"""The model/guide contract, and the check that enforces it on the first batch.

A *model* and a *guide* are callables, ideally ``nn.Module`` s whose ``forward``
is the Pyro program, that follow four rules:

1. **Same arguments.** Both are called with keyword arguments taken from the
   batch by name (``x`` the data, ``y`` the labels, ...). Each receives the
   fields its signature names (all of them if it takes ``**kwargs``); other
   names, positional-only arguments and ``model``/``guide`` methods of one
   ``nn.Module`` go through :mod:`pyro_aevb.arguments`.
2. **One data plate.** Per-data-point sites live in one outermost plate over
   the batch, whatever its name (:func:`pyro_aevb.plate.find_data_plate`):
   :func:`pyro_aevb.data_plate`, ``pyro.plate("data", len(x))``,
   ``pyro.plate("data")``, ``pyro.plate("data", N, subsample=idx)``. During
   :func:`fit` its sites weigh ``N / B``
   (:class:`pyro_aevb.plate.DataPlateScale`); the guide uses the same plate.
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
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.poutine.util import site_is_subsample

from .arguments import ArgumentAdapter, missing_rows, num_rows
from .plate import DATA_PLATE, find_data_plate, plate_scale


class ContractError(ValueError):
    """A model/guide pair does not follow the contract of :mod:`pyro_aevb.contract`."""


def call_arguments(fn: Callable, batch: Mapping[str, torch.Tensor], role: str) -> dict:
    """Select the batch fields that ``fn`` takes, by parameter name.

    A parameter with a default (``y=None``) that the batch lacks keeps its default; an
    :class:`~pyro_aevb.arguments.ArgumentAdapter` takes every field and maps them itself.

    :raises ContractError: if ``fn`` requires an argument that the batch lacks.
    """
    if isinstance(fn, ArgumentAdapter):
        missing = [f for f in fn.required_fields() if f not in batch]
        if missing:
            raise ContractError(
                f"the {role} requires data field(s) {missing} (through arguments="
                f"{fn.arguments}) but the data provide only {sorted(batch)}"
            )
        return dict(batch)
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
        example = ", ".join(f"'{m}': '<field>'" for m in missing)
        raise ContractError(
            f"the {role} requires argument(s) {missing} but the data provide only "
            f"{sorted(batch)}; name the {role}'s arguments after the data fields, pass the "
            f"data under the argument names, or map them with fit(..., arguments={{{example}}})"
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
    #: the name of the data plate, the outermost plate of the observed sites
    #: (``"data"`` for the library's :func:`~pyro_aevb.data_plate`)
    data_plate: str = DATA_PLATE
    #: how evaluation draws particles for this pair: ``"vectorized"`` (one pass through
    #: a plate of particles), ``"loop"`` (one pass per particle, for code that does not
    #: broadcast over a leading dimension) or ``None`` (not checked)
    particle_mode: str | None = None
    #: whether observed values were checked against the likelihoods' supports
    support_checked: bool = True


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


def batch_size_of(batch: Mapping) -> int:
    """The number of data points of a batch: the rows of its first per-point field."""
    for value in batch.values():
        rows = num_rows(value)
        if rows is not None:
            return rows
    raise ContractError(f"no field of {sorted(batch)} has data points on dim 0")


def _grouped(problems: dict[str, list[str]]) -> list[str]:
    """One line per kind of problem, naming every site it concerns."""
    return [template.format(names=names) for template, names in problems.items()]


def _run(fn, kwargs: dict, batch: Mapping, role: str):
    """Trace ``fn`` on a batch; a crash that integer labels explain is named as such."""
    try:
        return poutine.trace(fn).get_trace(**kwargs)
    except (RuntimeError, IndexError, TypeError) as error:
        integer = [
            k
            for k, v in kwargs.items()
            if isinstance(v, torch.Tensor) and v.dim() == 1 and not v.is_floating_point()
        ]
        if integer and isinstance(error, RuntimeError):
            raise ContractError(
                f"the {role} failed on the first batch ({str(error).splitlines()[0]}); its "
                f"argument(s) {integer} are integer labels of shape (B,): a {role} that "
                "expects one-hot floats needs them converted, e.g. "
                "fields['y'] = pyro_aevb.arguments.one_hot(y, num_classes)"
            ) from error
        raise


def _pair_opts_out_of_support_check(model, guide) -> bool:
    return any(getattr(fn, "check_support", True) is False for fn in (model, guide))


_warned: set[str] = set()


def warn_once(key: str, message: str) -> None:
    """Warn with ``message`` the first time ``key`` comes up in this process."""
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, stacklevel=3)


def check_pair(
    model: Callable,
    guide: Callable,
    batch: Mapping[str, torch.Tensor],
    allow_model_enumeration: bool = False,
    check_support: bool = True,
    check_evaluation: bool = True,
) -> PairSummary:
    """Run ``guide`` and ``model`` on one batch and check the contract.

    :param batch: field name -> tensor with the data points on dim 0.
    :param allow_model_enumeration: let model sites marked
        ``infer={"enumerate": ...}`` be absent from the guide (``TraceEnum_ELBO``).
    :param check_support: check observed values against the likelihood's support;
        ``False`` (or an attribute ``check_support = False`` on the model or guide)
        skips it with a warning, for pairs that mean to train e.g. a Bernoulli
        likelihood on grey values, as Pyro's VAE example does.
    :param check_evaluation: also draw a few particles as evaluation does, vectorized
        and, if that fails, one at a time (so an evaluation-only failure shows before
        any training); the mode that works is :attr:`PairSummary.particle_mode`
        (``None`` for pairs with global latents, which per-data-point evaluation refuses).
    :raises ContractError: naming every missing, extra or misshaped site, a
        missing data plate, or observed values outside the likelihood's support.
    """
    guide_kwargs = call_arguments(guide, batch, "guide")
    model_kwargs = call_arguments(model, batch, "model")
    guide_trace = _run(guide, guide_kwargs, batch, "guide")
    # The model runs on its own prior draws, not replayed on the guide's: a
    # misshaped guide sample would crash the model before the check could name it.
    model_trace = _run(model, model_kwargs, batch, "model")
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
    for name in [n for n in model_latents if n in guide_latents]:
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

    plate = find_data_plate(model_trace) if observed else None
    if observed and plate is None:
        unplated = [n for n, s in observed.items() if not _frames(s)]
        if unplated:
            problems.append(
                f"observed site(s) {unplated} are not inside a plate over the data points "
                f"(e.g. pyro.plate('{DATA_PLATE}', ...)); wrap per-data-point sites in "
                "pyro_aevb.data_plate(x) or a pyro.plate of the batch"
            )
        else:
            outer = sorted({_frames(s)[0].name for s in observed.values()})
            problems.append(
                f"the observed sites lie in different outermost plates {outer}; put every "
                "per-data-point site inside one plate over the data points"
            )
    plate = plate or DATA_PLATE

    batch_size = batch_size_of(batch)
    data_dims = set()
    global_latents = []
    misplaced: dict[str, list[str]] = {}
    for name, site in list(observed.items()) + list(model_latents.items()):
        frames = _frames(site)
        data_frames = [f for f in frames if f.name == plate]
        if not data_frames:
            if name not in observed:
                global_latents.append(name)
            continue
        frame = data_frames[0]
        if frames[0].name != plate:
            misplaced.setdefault(
                f"site(s) {{names}}: the '{plate}' plate must be the outermost plate, but "
                f"'{frames[0].name}' encloses it",
                [],
            ).append(name)
        # a plate without a size (pyro.plate("data")) has size -1 and takes the batch's
        if int(frame.size) > 0 and frame.size != batch_size:
            misplaced.setdefault(
                f"site(s) {{names}}: the '{plate}' plate has {frame.size} elements but the "
                f"batch has {batch_size} data points",
                [],
            ).append(name)
        data_dims.add(frame.dim)
    problems += _grouped(misplaced)
    if len(data_dims) > 1:
        problems.append(f"the '{plate}' plate appears at several dims {sorted(data_dims)}")
    problems += _guide_plate_problems(model_latents, guide_latents, plate)

    if problems:
        raise ContractError(
            "the model/guide pair does not follow the contract (see pyro_aevb.contract):\n  - "
            + "\n  - ".join(problems)
        )

    if not check_support or _pair_opts_out_of_support_check(model, guide):
        warn_once(
            "support",
            "the support check of observed values is off (check_support=False): values "
            "outside a likelihood's support give a log-density that is not a probability, "
            "and the ELBO of such a pair is no bound on log p(x)",
        )
        supports_checked = False
    else:
        supports_checked = True
    observed_fields = {}
    for name, site in observed.items():
        support = elementwise_support(site["fn"].support)
        value = site["value"]
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ContractError(f"observed site '{name}' contains NaN or infinite values")
        ok = support.check(value) if supports_checked else torch.ones((), dtype=torch.bool)
        if not bool(ok.all()):
            bad = value[~ok.expand_as(value)] if ok.shape == value.shape else value.flatten()
            raise ContractError(
                f"observed site '{name}' has values outside the support of "
                f"{type(site['fn']).__name__} ({support}), e.g. {bad.flatten()[0].item():.4g}"
                + support_hint(support)
            )
        # The field itself, or else the one field it is a view of (a sequence model
        # observes x[:, t] at step t); then check_data_support checks the whole field.
        tensors = {f: t for f, t in batch.items() if isinstance(t, torch.Tensor)}
        exact = [
            f
            for f, t in tensors.items()
            if t.data_ptr() == value.data_ptr() and t.numel() == value.numel()
        ]
        views = [f for f, t in tensors.items() if _same_storage(t, value)]
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
    summary = PairSummary(
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
        data_plate=plate,
        support_checked=supports_checked,
    )
    if check_evaluation and not global_latents:
        from .evaluation import probe_particle_mode

        summary.particle_mode = probe_particle_mode(model, guide, batch, summary)
    return summary


def merge_summaries(labeled: PairSummary, unlabeled: PairSummary) -> PairSummary:
    """One summary of a semi-supervised pair from its labeled and unlabeled batches: the
    unlabeled batches' latents (the label among them), both batches' observed fields
    and parameters, and the deeper plate nesting."""
    from dataclasses import replace

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


def _guide_plate_problems(model_latents, guide_latents, plate: str) -> list[str]:
    """The guide's data plate must be the model's: the same name, and the same scale for
    each per-data-point latent (else the ELBO's log q and log p terms would weigh a data
    point differently)."""
    outside: list[str] = []
    scaled: list[str] = []
    for name, m_site in model_latents.items():
        g_site = guide_latents.get(name)
        if g_site is None or not any(f.name == plate for f in _frames(m_site)):
            continue
        g_frame = next((f for f in _frames(g_site) if f.name == plate), None)
        if g_frame is None:
            names = [f.name for f in _frames(g_site)]
            outside.append(f"'{name}' (guide plates: {names or 'none'})")
            continue
        m_frame = next(f for f in _frames(m_site) if f.name == plate)
        m_scale = _as_float(m_site["scale"]) / plate_scale(m_frame)
        g_scale = _as_float(g_site["scale"]) / plate_scale(g_frame)
        if (
            m_scale is not None
            and g_scale is not None
            and abs(m_scale - g_scale) > 1e-6 * max(abs(m_scale), abs(g_scale))
        ):
            scaled.append(f"'{name}' (model {m_scale:.4g}, guide {g_scale:.4g})")
    out = []
    if outside:
        out.append(
            f"the guide samples the per-data-point latent site(s) {', '.join(outside)} "
            f"outside the model's data plate '{plate}'; sample them inside "
            f"pyro.plate('{plate}', ...) in the guide too"
        )
    if scaled:
        out.append(
            f"the guide scales latent site(s) {', '.join(scaled)} differently from the model "
            "(beyond the data plate's own subsample scale); use the same plate and no extra "
            "poutine.scale in the guide"
        )
    return out


def _as_float(scale) -> float | None:
    if isinstance(scale, torch.Tensor):
        return float(scale) if scale.numel() == 1 else None
    return float(scale)


def objective_advice(summary: PairSummary, objective: str) -> str | None:
    """A sentence naming the objective to use for a guide with sites marked for parallel
    enumeration under an objective that samples them instead, or ``None``."""
    if summary.enumerated_guide_sites and objective != "enum":
        return (
            f"the guide marks site(s) {summary.enumerated_guide_sites} for enumeration, "
            f"which objective '{objective}' ignores (it samples them, with a "
            "score-function gradient); use objective='enum' to sum them out exactly"
        )
    return None


def observed_field(model: Callable, batch: Mapping) -> str | None:
    """The data field the model's observed sites observe (directly or as views), found
    by one run of the model with validation off (before a transform brings the data
    into the likelihood's support): of several (data and observed labels), the one with
    the most values per data point; ``None`` if none."""
    import pyro

    kwargs = call_arguments(model, batch, "model")
    try:
        with pyro.validation_enabled(False), torch.no_grad(), torch.random.fork_rng():
            trace = poutine.trace(poutine.block(model, hide_types=["param"])).get_trace(**kwargs)
    except Exception:  # noqa: BLE001 - the contract check reports it properly later
        return None
    tensors = {f: t for f, t in batch.items() if isinstance(t, torch.Tensor)}
    found = {
        f
        for s in trace.nodes.values()
        if s["type"] == "sample" and s["is_observed"] and not site_is_subsample(s)
        for f, t in tensors.items()
        if _same_storage(t, s["value"])
    }
    return max(found, key=lambda f: tensors[f][0].numel()) if found else None


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
    training, for the observed sites whose value is a data field (nothing if the
    pair opted out of the support check).
    """
    if not summary.support_checked:
        return
    for site, (field_name, support) in summary.observed_fields.items():
        if not isinstance(fields.get(field_name), torch.Tensor):
            continue
        value = fields[field_name]
        ok = support.check(value).reshape(value.shape[0], -1).all(-1)
        # rows marked missing (a semi-supervised label field) are not observed there
        missing = missing_rows(value)
        if missing is not None:
            ok = ok | missing
        if not bool(ok.all()):
            rows = (~ok).nonzero().flatten()
            raise ContractError(
                f"data field '{field_name}' (observed at site '{site}') has values outside "
                f"the support ({support}) in {rows.numel()} data point(s), first at index "
                f"{rows[0].item()}" + support_hint(support)
            )
