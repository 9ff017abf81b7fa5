"""The torch optimizer and learning-rate schedule of a training run.

``fit`` updates the pair with one ``torch.optim`` optimizer over the parameters that
:func:`~pyro_aevb.check_pair` found, in two parameter groups (the model's and the
guide's, so that an EM schedule can freeze one role without rebuilding anything).
Where the device supports it the optimizer runs its fused (one kernel for all
parameters) or ``foreach`` implementation; Pyro's ``pyro.optim`` wrappers, which keep
one optimizer per parameter, stay out of the hot loop.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence

import torch

#: optimizer names for ``fit(optimizer=...)`` and ``--optimizer``
OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}

#: learning-rate schedule names for ``fit(lr_schedule=...)`` and ``--lr-schedule``
LR_SCHEDULES = ("constant", "cosine", "exponential")


def _fast_implementation(cls, params: Sequence[torch.Tensor]) -> dict:
    """``fused=True`` where the class and every parameter's device support it, else
    ``foreach=True`` where the class has it; nothing for other optimizers."""
    accepted = inspect.signature(cls.__init__).parameters
    devices = {p.device.type for p in params}
    if (
        "fused" in accepted
        and devices <= {"cpu", "cuda"}
        and all(
            p.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16) for p in params
        )
    ):
        return {"fused": True}
    if "foreach" in accepted:
        return {"foreach": True}
    return {}


def make_optimizer(
    optimizer: str | type[torch.optim.Optimizer] | Callable[..., torch.optim.Optimizer],
    param_groups: list[dict],
    lr: float,
) -> torch.optim.Optimizer:
    """Build the run's optimizer.

    :param optimizer: a name in :data:`OPTIMIZERS`, a ``torch.optim.Optimizer``
        subclass, or a factory ``f(param_groups, lr=...) -> Optimizer``
        (e.g. ``functools.partial(torch.optim.Adam, betas=(0.9, 0.99))``).
    :param param_groups: ``[{"params": [...], "role": "model"}, ...]``.
    :param lr: the learning rate of every group.
    """
    if isinstance(optimizer, str):
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer '{optimizer}'; choose one of {sorted(OPTIMIZERS)}")
        optimizer = OPTIMIZERS[optimizer]
    params = [p for g in param_groups for p in g["params"]]
    if isinstance(optimizer, type) and issubclass(optimizer, torch.optim.Optimizer):
        return optimizer(param_groups, lr=lr, **_fast_implementation(optimizer, params))
    if callable(optimizer):
        built = optimizer(param_groups, lr=lr)
        if not isinstance(built, torch.optim.Optimizer):
            raise TypeError(
                f"the optimizer factory returned {type(built).__name__}, not a torch.optim."
                "Optimizer; pass a torch optimizer class or a factory f(params, lr=...)"
            )
        return built
    raise TypeError(
        f"optimizer must be a name {sorted(OPTIMIZERS)}, a torch.optim.Optimizer class or a "
        f"factory, got {optimizer!r}"
    )


def make_lr_scheduler(
    schedule: str | Callable | None, optimizer: torch.optim.Optimizer, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """The learning-rate schedule, stepped once per training step.

    :param schedule: ``None``/``"constant"``; ``"cosine"`` (cosine decay to 0 over
        ``total_steps``, Loshchilov & Hutter, 2017); ``"exponential"`` (decay by
        a factor 0.1 over ``total_steps``, Pyro's ``ClippedAdam`` ``lrd`` made
        explicit); or a factory ``f(optimizer) -> LRScheduler``.
    """
    if schedule is None or schedule == "constant":
        return None
    if schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, total_steps))
    if schedule == "exponential":
        gamma = math.exp(math.log(0.1) / max(1, total_steps))
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=gamma)
    if isinstance(schedule, str):
        raise ValueError(f"unknown lr_schedule '{schedule}'; choose one of {list(LR_SCHEDULES)}")
    if callable(schedule):
        built = schedule(optimizer)
        if not isinstance(built, torch.optim.lr_scheduler.LRScheduler):
            raise TypeError(
                f"the lr_schedule factory returned {type(built).__name__}, not a "
                "torch.optim.lr_scheduler.LRScheduler"
            )
        return built
    raise TypeError(f"lr_schedule must be a name {list(LR_SCHEDULES)} or a factory")


def describe(optimizer, schedule) -> dict:
    """JSON-able names of the optimizer and schedule, stored in checkpoints."""

    def name(obj):
        if obj is None or isinstance(obj, str):
            return obj
        return getattr(obj, "__qualname__", None) or repr(obj)

    return {"optimizer": name(optimizer), "lr_schedule": name(schedule)}
