"""Calling a pair on a batch: the arguments each program takes (rule 1 of
:mod:`pyro_aevb.contract`), the batch's size, and the traces of one run of both."""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ..arguments import ArgumentAdapter, num_rows
from .errors import ContractError
from .sites import is_latent_site


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


def batch_size_of(batch: Mapping) -> int:
    """The number of data points of a batch: the rows of its first per-point field."""
    for value in batch.values():
        rows = num_rows(value)
        if rows is not None:
            return rows
    raise ContractError(f"no field of {sorted(batch)} has data points on dim 0")


#: Pyro's message when a site's batch shape does not fit a plate around it
_PLATE_MISMATCH = re.compile(
    r"Shape mismatch inside plate\('(?P<plate>[^']*)'\) at site (?P<site>\S+) "
    r"dim (?P<dim>-?\d+), (?P<plate_size>\d+) vs (?P<site_size>\d+)"
)


def _plate_mismatch(error: ValueError, role: str) -> ContractError | None:
    """Pyro's shape mismatch inside a plate as the contract's message, or ``None``."""
    found = _PLATE_MISMATCH.search(str(error))
    if found is None:
        return None
    plate, site, dim = found["plate"], found["site"], found["dim"]
    return ContractError(
        f"the {role}'s site '{site}' does not fit plate '{plate}': its distribution has "
        f"{found['site_size']} elements at dim {dim}, where the plate has "
        f"{found['plate_size']} (Pyro: {str(error).splitlines()[0]}). Dimensions of a value "
        "that are not plates are its event: declare them with .to_event(n), e.g. "
        "dist.Normal(loc, scale).to_event(1) for a vector per data point, with the same "
        "event_dim in the model and the guide"
    )


def run_program(fn, kwargs: dict, role: str):
    """Trace ``fn`` on a batch; a crash that integer labels explain, or a site whose
    shape does not fit its plates (a missing ``.to_event``), is named as such."""
    try:
        return poutine.trace(fn).get_trace(**kwargs)
    except ValueError as error:
        mismatch = _plate_mismatch(error, role)
        if mismatch is None:
            raise
        raise mismatch from error
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


@dataclass
class PairTraces:
    """One run of the guide and of the model on a batch, and their sites by kind."""

    model_trace: object
    guide_trace: object
    model_latents: dict
    guide_latents: dict
    #: the model's observed sites (plate subsamples excluded)
    observed: dict


def trace_pair(model: Callable, guide: Callable, batch: Mapping) -> PairTraces:
    """Run ``guide`` and then ``model`` on ``batch`` (each with the fields it takes)."""
    guide_kwargs = call_arguments(guide, batch, "guide")
    model_kwargs = call_arguments(model, batch, "model")
    guide_trace = run_program(guide, guide_kwargs, "guide")
    # The model runs on its own prior draws, not replayed on the guide's: a
    # misshaped guide sample would crash the model before the check could name it.
    model_trace = run_program(model, model_kwargs, "model")
    return PairTraces(
        model_trace=model_trace,
        guide_trace=guide_trace,
        model_latents={n: s for n, s in model_trace.nodes.items() if is_latent_site(s)},
        guide_latents={n: s for n, s in guide_trace.nodes.items() if is_latent_site(s)},
        observed={
            n: s
            for n, s in model_trace.nodes.items()
            if s["type"] == "sample" and s["is_observed"] and not site_is_subsample(s)
        },
    )
