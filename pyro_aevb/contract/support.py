"""Observed values against the supports of the likelihoods that observe them, on the
first batch and on whole data fields, and which data field each observed site reads."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.poutine.util import site_is_subsample

from ..arguments import missing_rows
from .call import call_arguments
from .errors import ContractError, warn_once


def elementwise_support(constraint: constraints.Constraint) -> constraints.Constraint:
    """Strip ``independent`` wrappers so a support can be checked value by value."""
    while isinstance(constraint, constraints.independent):
        constraint = constraint.base_constraint
    return constraint


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


def _opts_out_of_support_check(fn) -> bool:
    """Whether ``fn`` says ``check_support = False``: itself, the object whose bound method
    it is (``obj.model``), or what it wraps (an
    :class:`~pyro_aevb.arguments.ArgumentAdapter`'s callable and owner, ``__wrapped__``)."""
    seen, todo = [], [fn]
    while todo:
        item = todo.pop()
        if item is None or any(item is s for s in seen):
            continue
        seen.append(item)
        if getattr(item, "check_support", True) is False:
            return True
        todo += [getattr(item, name, None) for name in ("__self__", "owner", "fn", "__wrapped__")]
    return False


def _pair_opts_out_of_support_check(model, guide) -> bool:
    return any(_opts_out_of_support_check(fn) for fn in (model, guide))


def support_check_enabled(model, guide, check_support: bool) -> bool:
    """Whether observed values are checked: not when ``check_support`` is ``False`` or the
    model or guide says ``check_support = False``; then with a warning, once."""
    if check_support and not _pair_opts_out_of_support_check(model, guide):
        return True
    warn_once(
        "support",
        "the support check of observed values is off (check_support=False): values "
        "outside a likelihood's support give a log-density that is not a probability, "
        "and the ELBO of such a pair is no bound on log p(x)",
        stacklevel=4,  # the caller of check_pair, as before the checks were split
    )
    return False


def observed_value_fields(
    observed: dict, batch: Mapping, check_support: bool
) -> dict[str, tuple[str, constraints.Constraint]]:
    """Check each observed value (finite; in its likelihood's support if
    ``check_support``) and return site -> (the data field it observes, its support)."""
    observed_fields = {}
    tensors = {f: t for f, t in batch.items() if isinstance(t, torch.Tensor)}
    for name, site in observed.items():
        support = elementwise_support(site["fn"].support)
        value = site["value"]
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ContractError(f"observed site '{name}' contains NaN or infinite values")
        ok = support.check(value) if check_support else torch.ones((), dtype=torch.bool)
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
            for f, t in tensors.items()
            if t.data_ptr() == value.data_ptr() and t.numel() == value.numel()
        ]
        views = [f for f, t in tensors.items() if same_storage(t, value)]
        matched = exact or (views if len(views) == 1 else [])
        if matched:
            observed_fields[name] = (matched[0], support)
    return observed_fields


def same_storage(field: torch.Tensor, value: torch.Tensor) -> bool:
    """Whether an observed value is a data field or a view into it."""
    if not isinstance(value, torch.Tensor) or value.device != field.device:
        return False
    return value.untyped_storage().data_ptr() == field.untyped_storage().data_ptr()


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
        if same_storage(t, s["value"])
    }
    return max(found, key=lambda f: tensors[f][0].numel()) if found else None


def check_data_support(summary, fields: Mapping[str, torch.Tensor]) -> None:
    """Check whole data fields against the support of the sites that observe them.

    :func:`~pyro_aevb.contract.check_pair` sees one batch; this checks every data point
    before training, for the observed sites whose value is a data field (nothing if the
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
