"""The state of a run that a checkpoint holds, so that a resumed run continues exactly.

A checkpoint (``checkpoint.pt``, written atomically by :mod:`pyro_aevb.checkpoint`)
holds the pair's parameters and module buffers, the optimizer's and learning-rate
schedule's states, every random generator, the history, the settings that define
the run and a fingerprint of the pair (its parameters' names and shapes), so that a
resume refuses another pair or other settings instead of mixing two runs.
"""

from __future__ import annotations

import os

import pyro
import torch

from .. import checkpoint as ckpt
from .history import History, copy_params, load_module_states, module_states, params_snapshot
from .settings import LoopSettings, StepSettings
from .step import TrainingStep

#: layout version of the checkpoint dict (1: pyro.optim optimizer states, before 0.2)
CHECKPOINT_FORMAT = 2


def fingerprint(model, guide) -> dict[str, list[int]]:
    """Names and shapes of the pair's Pyro parameters and module states."""
    shapes = {f"param:{n}": list(p.shape) for n, p in pyro.get_param_store().named_parameters()}
    for role, states in module_states(model, guide).items():
        shapes.update({f"{role}:{k}": list(v.shape) for k, v in states.items()})
    return shapes


def save(
    path: str | os.PathLike,
    *,
    epoch: int,
    config: dict,
    model,
    guide,
    step: TrainingStep,
    generator: torch.Generator,
    history: History,
    train_seconds: float,
    metadata: dict | None = None,
    rank_rng: list | None = None,
) -> None:
    """Write the run's state to ``path`` atomically (``rank_rng``: every process's RNG
    state in a data-parallel run, :mod:`~pyro_aevb.training.distributed`)."""
    ckpt.atomic_save(
        {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "config": config,
            "run_metadata": dict(metadata or {}),
            "fingerprint": fingerprint(model, guide),
            "modules": module_states(model, guide),
            "params": params_snapshot(),
            "step": step.state_dict(),
            "rng": ckpt.rng_state(),
            "generator": generator.get_state(),
            "history": history.state_dict(),
            "train_seconds": train_seconds,
            **({"rank_rng": rank_rng} if rank_rng is not None else {}),
        },
        path,
    )


#: settings a resume may change: the learning rate (the advice of the divergence guard is to
#: lower it) and the early-stopping patience. They change how the run goes on, not what it
#: is: the model, data, objective, seed and the schedules stay as the checkpoint has them.
#: (The groups of fit's settings say which of their options these are.)
RESUME_MAY_CHANGE = StepSettings.RESUME_MAY_CHANGE | LoopSettings.RESUME_MAY_CHANGE


#: what ``None`` stands for in a run's config: the same setting spelled out is no change
_DEFAULTS = {"optimizer": "adam", "lr_schedule": "constant"}


def _with_defaults(config: dict) -> dict:
    return {k: (_DEFAULTS.get(k) if v is None and k in _DEFAULTS else v) for k, v in config.items()}


def check_resumable(
    state: dict, config: dict, model, guide, path, metadata: dict | None = None
) -> None:
    """Refuse a checkpoint of another format, pair or settings, naming the difference;
    :data:`RESUME_MAY_CHANGE` may differ (a learning rate only without a schedule, whose
    state spans the run)."""
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(
            f"{path} was written by an older pyro-aevb (checkpoint format "
            f"{state.get('format', 1)}, this version reads {CHECKPOINT_FORMAT}: the optimizer "
            "moved from pyro.optim to one torch optimizer); it cannot be resumed exactly. "
            "Start the run afresh (overwrite) or resume it with the version that wrote it"
        )
    # both ways: a setting only one side has (the data-parallel ones) differs too
    stored, now = _with_defaults(state["config"]), _with_defaults(config)
    changed = {
        k: (stored.get(k), now.get(k))
        for k in dict.fromkeys([*now, *stored])
        if stored.get(k) != now.get(k) and k not in RESUME_MAY_CHANGE
    }
    if state["config"].get("lr") != config.get("lr") and config.get("lr_schedule") not in (
        None,
        "constant",
    ):
        changed["lr"] = (state["config"].get("lr"), config.get("lr"))
    if changed:
        raise ValueError(
            "cannot resume with different settings (checkpoint value, now): "
            + ", ".join(f"{k}={a!r}->{b!r}" for k, (a, b) in changed.items())
        )
    stored_id, given_id = ckpt.stored_run_id(state), (metadata or {}).get("run_id")
    if stored_id is not None and given_id is not None and stored_id != given_id:
        raise ValueError(
            f"{path} belongs to run {stored_id}, not to run {given_id}; resume the run that "
            "wrote it, or start afresh (overwrite)"
        )
    now, then = fingerprint(model, guide), state["fingerprint"]
    if now != then:
        differ = sorted(k for k in set(now) | set(then) if now.get(k) != then.get(k))
        raise ValueError(
            f"{path} belongs to another model/guide pair: {len(differ)} parameter(s) differ "
            f"in name or shape, e.g. "
            + ", ".join(f"{k} {then.get(k)}->{now.get(k)}" for k in differ[:3])
            + "; resume with the pair that wrote it"
        )


def restore(
    state: dict, *, model, guide, step: TrainingStep, generator: torch.Generator, history: History
) -> tuple[int, float]:
    """Load a checkpoint's state in place; returns ``(epoch, train_seconds)``."""
    load_module_states(model, guide, state["modules"])
    copy_params(state["params"])
    step.load_state_dict(state["step"])
    ckpt.set_rng_state(state["rng"])
    generator.set_state(state["generator"])
    history.load_state_dict(state["history"])
    return state["epoch"], state["train_seconds"]


def trained_modules(state: dict) -> dict:
    """The module states a finished run reports: the best ones when early stopping kept
    them, else the last epoch's."""
    best = state["history"]["best"]
    return (best or state)["modules"]
