"""One training step: which parameters it may change, and the guard that refuses a
non-finite update before it happens."""

from __future__ import annotations

import math

import torch
from pyro import poutine
from pyro.infer.util import zero_grads

from .contract import PairSummary
from .schedules import PHASES, AlternatingSchedule


class NonFiniteLossError(FloatingPointError):
    """The loss or a gradient became NaN or infinite; training stopped before the update."""


def frozen_parameters(schedule, summary: PairSummary) -> dict[str, frozenset[str]]:
    """For each phase, the names of the parameters its steps must leave unchanged."""
    roles = {"model": set(summary.model_params), "guide": set(summary.guide_params)}
    if isinstance(schedule, AlternatingSchedule):
        for role, names in roles.items():
            if not names:
                raise ValueError(
                    f"an alternating (EM) schedule needs {role} parameters, but the {role} "
                    "registers none with Pyro (pyro.module / pyro.param)"
                )
    return {
        phase: frozenset(n for role, names in roles.items() if role not in updated for n in names)
        for phase, updated in PHASES.items()
    }


def svi_step(
    elbo, optim, model_fn, guide_fn, batch, epoch: int, step: int, frozen=frozenset()
) -> float:
    """One SVI step (as ``pyro.infer.SVI.step``) that refuses a non-finite update and
    leaves the parameters named in ``frozen`` unchanged."""
    advice = (
        "training stopped before this update. The parameters are those after the last "
        "good step and the last checkpoint is intact. Lower the learning rate, check the "
        "data, or bound the scales the guide and model produce."
    )
    with poutine.trace(param_only=True) as param_capture:
        try:
            loss = elbo.loss_and_grads(model_fn, guide_fn, **batch)
        except ValueError as e:
            # PyTorch's argument validation: a distribution parameter became NaN,
            # infinite or left its constraint inside the forward pass.
            if "found invalid values" not in str(e):
                raise
            zero_grads({s["value"].unconstrained() for s in param_capture.trace.nodes.values()})
            raise NonFiniteLossError(
                f"invalid distribution parameters (NaN, infinite or outside their constraint) "
                f"at epoch {epoch}, step {step + 1}; {advice}\n{str(e).splitlines()[0]}"
            ) from e
    params = {site["value"].unconstrained() for site in param_capture.trace.nodes.values()}
    grads = [p.grad for p in params if p.grad is not None]
    # One sum per gradient detects NaN and inf (both propagate through a sum) without
    # allocating a boolean mask per element, which cost about 3 ms a step on the VAE.
    finite = math.isfinite(loss) and bool(
        torch.stack([g.sum() for g in grads]).isfinite().all() if grads else True
    )
    if not finite:
        zero_grads(params)
        what = f"loss {loss}" if not math.isfinite(loss) else "a non-finite gradient"
        raise NonFiniteLossError(f"{what} at epoch {epoch}, step {step + 1}; {advice}")
    if frozen:
        names = {site["value"].unconstrained(): n for n, site in param_capture.trace.nodes.items()}
        optim({p for p in params if names[p] not in frozen})
    else:
        optim(params)
    zero_grads(params)
    return float(loss)
