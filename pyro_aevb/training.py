"""Fitting a model/guide pair with SVI: epochs over minibatches, checkpoints, resume.

:func:`fit` is the one training loop of the library. It works for any pair that
follows :mod:`pyro_aevb.contract`, checks the pair and the data before the first
step, and writes a run directory that :func:`fit` can resume to the same
parameters an uninterrupted run reaches.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import pyro.optim
import torch
from pyro import poutine
from tqdm import tqdm

from . import checkpoint as ckpt
from .annealing import WEIGHTABLE_OBJECTIVES, KLAnnealing, LatentScale
from .arguments import adapt, batch_rows, label_field, num_rows, plan_batches, training_fields
from .arguments import steps_per_epoch as count_batches
from .contract import (
    PairSummary,
    call_arguments,
    check_data_support,
    check_pair,
    merge_summaries,
    objective_advice,
    observed_field,
    warn_once,
)
from .data.dataset import Dataset
from .data.transforms import Identity, Transform, get_transform, transform_test_set
from .device import resolve_device
from .evaluation import elbo_per_datapoint, exact_log_evidence, prepare_fields
from .objectives import make_objective
from .plate import full_data_size, scale_to_data_set
from .schedules import AlternatingSchedule, JointSchedule
from .steps import frozen_parameters, svi_step

HISTORY_NAME = "history.csv"


@dataclass
class FitResult:
    """What :func:`fit` returns; the trained parameters live in the model and guide."""

    #: one dict per epoch (or per ``eval_every`` steps): epoch, step, train_loss,
    #: test_elbo and, for models with exact evidence, test_log_evidence (nats per
    #: data point), the schedule's phase, the KL weight, and seconds
    history: list[dict]
    #: wall-clock seconds spent in training steps (evaluation excluded), all sessions
    train_seconds: float
    epochs_completed: int
    stopped_early: bool
    #: epoch whose parameters the pair holds when early stopping restored the best
    best_epoch: int | None
    run_dir: Path | None
    summary: PairSummary | None = field(repr=False, default=None)


def _bind(fn: Callable, names: list[str]) -> Callable:
    """Call ``fn`` with only the batch fields it takes (SVI passes all fields to both)."""
    return lambda **batch: fn(**{k: batch[k] for k in names})


def _first(fields: Mapping, exclude: torch.Tensor | None, size: int | None = None) -> dict:
    """The first ``size`` data points (all if ``None``), leaving out the rows ``exclude``
    marks (a semi-supervised batch holds labeled or unlabeled points, never both)."""
    n = next(n for n in map(num_rows, fields.values()) if n is not None)
    rows = torch.arange(n) if exclude is None else (~exclude.cpu()).nonzero().flatten()
    rows = rows[: size if size is not None else n]
    return {k: batch_rows(v, rows, k, n) for k, v in fields.items()}


def _write_history(history: list[dict], path: Path) -> None:
    if not history:
        return
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    os.replace(tmp, path)


def _params_snapshot(store) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in store.named_parameters()}


def _copy_params(store, values: Mapping[str, torch.Tensor]) -> None:
    params = dict(store.named_parameters())
    missing = sorted(set(values) - set(params))
    if missing:
        raise ValueError(
            f"checkpoint holds parameters {missing} that this model/guide pair does not have; "
            "resume with the same model and guide that wrote it"
        )
    with torch.no_grad():
        for name, value in values.items():
            params[name].copy_(value)


def fit(
    model: Callable,
    guide: Callable,
    train: Dataset | Mapping[str, torch.Tensor],
    test: Dataset | Mapping[str, torch.Tensor] | None = None,
    *,
    transform: Transform | str | None = None,
    objective: str = "elbo",
    num_particles: int = 1,
    objective_options: dict | None = None,
    epochs: int | None = 10,
    batch_size: int = 100,
    lr: float = 1e-3,
    device: str | torch.device = "cpu",
    seed: int = 0,
    run_dir: str | os.PathLike | None = None,
    resume: bool = False,
    overwrite: bool = False,
    patience: int | None = None,
    schedule: AlternatingSchedule | JointSchedule | None = None,
    eval_every: int | None = None,
    kl_annealing: KLAnnealing | None = None,
    history_metrics: Callable[..., dict] | None = None,
    progress: bool = True,
    arguments: Mapping[str, str] | None = None,
    check_support: bool = True,
) -> FitResult:
    """Train ``model`` and ``guide`` by stochastic variational inference.

    :param train: training data, a :class:`Dataset` in the shape the pair reads
        (e.g. ``train.flat()``) or a mapping of fields (``x`` first dim ``N``).
    :param test: optional test data; its ELBO (nats per data point) is computed
        after every epoch and drives early stopping.
    :param transform: applied to ``x`` (name or :class:`Transform`); stochastic
        transforms are redrawn every epoch, the test set is drawn once.
    :param objective: a registered objective name (:mod:`pyro_aevb.objectives`).
    :param num_particles: samples per data point and step.
    :param objective_options: extra options of the objective (e.g. ``alpha``).
    :param epochs: total epochs (a resumed run counts the epochs already done);
        ``None`` with a schedule of finitely many rounds: until the schedule ends.
    :param batch_size: data points per step. The loss of a step is an unbiased estimate
        of the per-data-point negative ELBO: the data plate scales the batch by
        ``N / batch_size`` and the objective is divided by ``N``.
    :param lr: Adam learning rate.
    :param device: ``"cpu"`` or ``"cuda[:N]"``; model, guide and data are moved there.
    :param seed: seeds Python, NumPy, PyTorch and the shuffling; CPU runs are reproducible.
    :param run_dir: where to write ``checkpoint.pt`` (every epoch, atomically) and
        ``history.csv``; ``None`` keeps everything in memory.
    :param resume: continue from ``run_dir``'s checkpoint to the same parameters an
        uninterrupted run reaches.
    :param overwrite: allow starting afresh over an existing checkpoint.
    :param patience: stop after this many epochs without a better test ELBO and
        restore the best parameters (needs ``test``).
    :param schedule: which parameters each step updates, e.g.
        :class:`~pyro_aevb.schedules.AlternatingSchedule` for variational EM
        (guide-only and model-only periods); default: all of them, every step.
        Training ends when ``epochs`` run out or the schedule ends, whichever is first.
    :param eval_every: write a history row (with the test ELBO, and the exact
        evidence if the model has a ``log_evidence`` method) every this many steps
        and where the schedule ends, instead of once per epoch.
    :param kl_annealing: a weight on the latent sites' terms (the KL) and its warm-up,
        :class:`~pyro_aevb.annealing.KLAnnealing`, for the ``elbo`` and ``meanfield``
        objectives. The training loss is then the weighted one; the test ELBO in the
        history stays the unweighted bound. The weight of each row's last step is
        recorded as ``kl_weight``.
    :param history_metrics: ``history_metrics(model, guide, test_fields) -> dict`` of
        extra test metrics for every history row (e.g. clustering accuracy).
    :param progress: show a tqdm progress bar with the running loss.
    :param arguments: the pair's parameter name -> data field, for a model and guide
        whose arguments are named otherwise (``{"xs": "x", "ys": "y"}``); see
        :mod:`pyro_aevb.arguments`.
    :param check_support: ``False`` skips the check of observed values against the
        likelihood's support (with a warning), for pairs that mean to train e.g. a
        Bernoulli likelihood on grey values.
    :raises NonFiniteLossError: on a NaN or infinite loss or gradient, naming the
        epoch and step; the parameters and the last checkpoint stay as they were.
    """
    # Every check that can fail runs before any work is done.
    model, guide = adapt(model, arguments), adapt(guide, arguments)
    dev = resolve_device(device)
    elbo = make_objective(objective, num_particles, **(objective_options or {}))
    transform = get_transform(transform) if transform is not None else Identity()
    schedule = schedule if schedule is not None else JointSchedule()
    if epochs is None and schedule.total_steps is None:
        raise ValueError("epochs=None needs a schedule with a fixed number of rounds")
    if (epochs is not None and epochs < 0) or batch_size < 1:
        raise ValueError(f"need epochs >= 0 and batch_size >= 1, got {epochs}, {batch_size}")
    if kl_annealing is not None and objective not in WEIGHTABLE_OBJECTIVES:
        raise ValueError(
            f"a KL weight applies to the objectives {list(WEIGHTABLE_OBJECTIVES)}, not "
            f"'{objective}': an importance-weighted bound mixes the likelihood and the "
            "latent terms inside a log-sum-exp, where no weight separates them"
        )
    if eval_every is not None and eval_every < 1:
        raise ValueError(f"eval_every must be a positive number of steps, got {eval_every}")
    if patience is not None and test is None:
        raise ValueError("early stopping (patience) needs test data")
    raw_fields, levels, n_train = training_fields(train)
    semi_supervised = label_field(raw_fields, model, guide)
    missing = semi_supervised[1] if semi_supervised is not None else None
    batch_size = min(batch_size, n_train)
    steps_per_epoch = count_batches(n_train, batch_size, missing)
    # the field a transform applies to: 'x', else the one the model observes
    data_field = "x" if "x" in raw_fields else observed_field(model, _first(raw_fields, missing))
    if not isinstance(transform, Identity) and data_field is None:
        raise ValueError(
            f"transform {transform!r} applies to the data field, but no field of "
            f"{sorted(raw_fields)} is named 'x' or observed by the model on the first batch"
        )
    if epochs is None:
        epochs = math.ceil(schedule.total_steps / steps_per_epoch)
    test_fields = None
    if test is not None:
        test_fields = prepare_fields(test, transform if data_field == "x" else None, dev)
        if data_field != "x" and not isinstance(transform, Identity):
            test_fields[data_field] = transform_test_set(test_fields[data_field], transform, levels)

    run_dir = Path(run_dir) if run_dir is not None else None
    checkpoint_path = run_dir / ckpt.CHECKPOINT_NAME if run_dir is not None else None
    if resume and run_dir is None:
        raise ValueError("resume=True needs the run_dir of the run to resume")
    state = None
    if checkpoint_path is not None and checkpoint_path.exists():
        if resume:
            state = ckpt.load(checkpoint_path)
        elif not overwrite:
            raise FileExistsError(
                f"{checkpoint_path} exists; pass resume=True to continue that run, "
                "overwrite=True to start afresh, or another run_dir"
            )
    run_config = {
        "objective": objective,
        "num_particles": int(num_particles),
        "objective_options": objective_options or {},
        "batch_size": batch_size,
        "lr": lr,
        "seed": seed,
        "transform": repr(transform),
        "num_train": n_train,
        "patience": patience,
        "schedule": schedule.describe(),
        "eval_every": eval_every,
        "kl_annealing": kl_annealing.describe() if kl_annealing is not None else None,
    }
    if state is not None:
        changed = {
            k: (state["config"].get(k), v)
            for k, v in run_config.items()
            if state["config"].get(k) != v
        }
        if changed:
            raise ValueError(
                "cannot resume with different settings (checkpoint value, now): "
                + ", ".join(f"{k}={a!r}->{b!r}" for k, (a, b) in changed.items())
            )

    for module in (model, guide):
        if isinstance(module, torch.nn.Module):
            module.to(dev)
    pyro.set_rng_seed(seed)
    # Shuffling and per-epoch transforms draw from a generator on the data's device
    # (a CPU generator cannot drive CUDA sampling); its state is checkpointed.
    generator = torch.Generator(device=dev).manual_seed(seed)
    fields = {k: v.to(dev) if hasattr(v, "to") else v for k, v in raw_fields.items()}
    deterministic_x = None
    if not transform.resample_each_epoch and data_field is not None:
        deterministic_x = transform(fields[data_field], None, levels)
    # A seeded preview draw of the transformed data for the checks; it leaves the
    # training generator untouched.
    preview = dict(fields)
    if data_field is not None:
        preview[data_field] = transform_test_set(fields[data_field], transform, levels)

    store = pyro.get_param_store()
    history: list[dict] = []
    with store.scope():
        first = _first(preview, missing, batch_size)
        with full_data_size(n_train):
            summary = check_pair(
                model,
                guide,
                first,
                allow_model_enumeration=objective == "enum",
                check_support=check_support,
                check_evaluation=True,
            )
            if missing is not None and bool(missing.any()) and not bool(missing.all()):
                # a semi-supervised data set: check the unlabeled batches too
                unlabeled = check_pair(
                    model,
                    guide,
                    _first(preview, ~missing, batch_size),
                    allow_model_enumeration=objective == "enum",
                    check_support=check_support,
                )
                summary = merge_summaries(summary, unlabeled)
        advice = objective_advice(summary, objective)
        if advice is not None:
            warn_once(f"objective-{objective}", advice)
        check_data_support(summary, preview)
        frozen = frozen_parameters(schedule, summary)
        if getattr(elbo, "max_plate_nesting", None) == float("inf"):
            # The contract check has counted the plates: Pyro's ELBOs need not guess (as
            # they do for a finite value given at construction, one more for the plate of
            # vectorized particles).
            vectorized = getattr(elbo, "vectorize_particles", False)
            elbo.max_plate_nesting = summary.max_plate_nesting + int(vectorized)
        if test_fields is not None:
            check_data_support(summary, test_fields)
        # The data plate scales a batch to the full data set (so global and local terms
        # keep their relative weight); dividing the whole objective by N then makes the
        # loss the per-data-point negative ELBO, the scale of plain PyTorch's batch-mean
        # loss at which learning rates and Adam's eps are usually chosen. (On the default
        # VAE both scalings gave test log-likelihoods within run-to-run variation.)
        per_point = 1.0 / n_train
        latent_scale = LatentScale(1.0)  # the KL weight, set before every step
        # The pair's own data plate (any name, sized or not, subsampled or not) weighs a
        # batch's points N / B, as the library's data_plate does (pyro_aevb.plate).
        model_fn = latent_scale(
            poutine.scale(
                scale_to_data_set(
                    _bind(model, list(call_arguments(model, first, "model"))),
                    summary.data_plate,
                    n_train,
                ),
                per_point,
            )
        )
        guide_fn = latent_scale(
            poutine.scale(
                scale_to_data_set(
                    _bind(guide, list(call_arguments(guide, first, "guide"))),
                    summary.data_plate,
                    n_train,
                ),
                per_point,
            )
        )
        optim = pyro.optim.Adam({"lr": lr})
        # Modules whose training depends on the step (a Gumbel-softmax temperature) say so
        # with a set_training_step method; the step count is checkpointed, so a resumed
        # run sets the same values.
        step_hooks = [
            m.set_training_step
            for m in (model, guide)
            if callable(getattr(m, "set_training_step", None))
        ]

        start_epoch, train_seconds, best, stopped = 0, 0.0, None, False
        # steps, loss and seconds since the last history row (carried across epochs)
        pending = {"steps": 0, "loss": 0.0, "seconds": 0.0}
        if state is not None:
            _load_module_states(model, guide, state["modules"])
            _copy_params(store, state["params"])
            optim.set_state(state["optimizer"])
            ckpt.set_rng_state(state["rng"])
            generator.set_state(state["generator"])
            history = list(state["history"])
            start_epoch, train_seconds = state["epoch"], state["train_seconds"]
            best, stopped = state["best"], state["stopped"]
            pending = dict(state.get("pending", pending))

        def save_checkpoint(epoch):
            if checkpoint_path is None:
                return
            ckpt.atomic_save(
                {
                    "epoch": epoch,
                    "config": run_config,
                    "modules": _module_states(model, guide),
                    "params": _params_snapshot(store),
                    "optimizer": optim.get_state(),
                    "rng": ckpt.rng_state(),
                    "generator": generator.get_state(),
                    "history": history,
                    "train_seconds": train_seconds,
                    "best": best,
                    "stopped": stopped,
                    "pending": pending,
                },
                checkpoint_path,
            )
            _write_history(history, run_dir / HISTORY_NAME)

        def record(epoch, step_count, phase):
            """Append a history row for the steps since the last one (nats per point)."""
            nonlocal best, stopped
            row = {
                "epoch": epoch,
                "step": step_count,
                "train_loss": pending["loss"] / max(1, pending["steps"]),
            }
            if not isinstance(schedule, JointSchedule):
                row["phase"] = phase
            if kl_annealing is not None:
                row["kl_weight"] = latent_scale.weight
            if test_fields is not None:
                test_elbo = elbo_per_datapoint(model, guide, test_fields, seed=seed)
                row["test_elbo"] = float(test_elbo.mean())
                evidence = exact_log_evidence(model, test_fields)
                if evidence is not None:
                    row["test_log_evidence"] = float(evidence.mean())
                if history_metrics is not None:
                    row.update(history_metrics(model, guide, test_fields))
            row["train_seconds"] = pending["seconds"]
            pending.update(steps=0, loss=0.0, seconds=0.0)
            history.append(row)
            if patience is not None:
                if best is None or row["test_elbo"] > best["test_elbo"]:
                    best = {
                        "epoch": epoch,
                        "test_elbo": row["test_elbo"],
                        "params": _params_snapshot(store),
                        "modules": _module_states(model, guide),
                    }
                elif epoch - best["epoch"] >= patience:
                    stopped = True

        total_steps = epochs * steps_per_epoch
        if schedule.total_steps is not None:
            total_steps = min(total_steps, schedule.total_steps)
        done = min(start_epoch * steps_per_epoch, total_steps)
        bar = tqdm(
            total=max(0, total_steps - done),
            disable=not progress or stopped,
            desc="fit",
            dynamic_ncols=True,
        )
        epoch, last_phase = start_epoch, None
        try:
            while epoch < epochs and not stopped:
                step_count = epoch * steps_per_epoch
                if schedule.phase(step_count) is None:
                    break
                epoch += 1
                x = deterministic_x
                if x is None and data_field is not None:
                    x = transform(fields[data_field], generator, levels)
                perm = torch.randperm(n_train, generator=generator, device=dev)
                plan = plan_batches(perm, batch_size, missing)
                for module in (model, guide):
                    if isinstance(module, torch.nn.Module):
                        module.train()
                epoch_loss, epoch_steps = 0.0, 0
                for step in range(steps_per_epoch):
                    phase = schedule.phase(step_count)
                    if phase is None:
                        break
                    if kl_annealing is not None:
                        latent_scale.weight = kl_annealing.weight(step_count)
                    for hook in step_hooks:
                        hook(step_count)
                    t0 = time.perf_counter()
                    idx = plan[step]
                    batch = {
                        k: batch_rows(x if k == data_field else v, idx, k, n_train)
                        for k, v in fields.items()
                    }
                    with full_data_size(n_train):
                        loss = svi_step(
                            elbo, optim, model_fn, guide_fn, batch, epoch, step, frozen[phase]
                        )
                    seconds = time.perf_counter() - t0
                    train_seconds += seconds
                    step_count += 1
                    epoch_loss, epoch_steps = epoch_loss + loss, epoch_steps + 1
                    pending["loss"] += loss
                    pending["steps"] += 1
                    pending["seconds"] += seconds
                    last_phase = phase
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{epoch_loss / epoch_steps:.2f}")
                    if eval_every is not None and step_count % eval_every == 0:
                        record(epoch, step_count, last_phase)
                        if stopped:
                            break
                # With eval_every, rows fall every eval_every steps and where the schedule
                # ends, not where the epochs run out: a run extended by a resume then
                # writes the same rows as one that was never stopped.
                finished = schedule.phase(step_count) is None
                if pending["steps"] and (eval_every is None or finished) and not stopped:
                    record(epoch, step_count, last_phase)
                save_checkpoint(epoch)
        finally:
            bar.close()

        best_epoch = None
        if best is not None:
            _load_module_states(model, guide, best["modules"])
            _copy_params(store, best["params"])
            best_epoch = best["epoch"]
    return FitResult(
        history=history,
        train_seconds=train_seconds,
        epochs_completed=epoch,
        stopped_early=stopped,
        best_epoch=best_epoch,
        run_dir=run_dir,
        summary=summary,
    )


def _module_states(model, guide) -> dict:
    """Copies of the ``nn.Module`` states (parameters and buffers) of the pair, by role."""
    return {
        role: {k: v.detach().clone() for k, v in m.state_dict().items()}
        for role, m in (("model", model), ("guide", guide))
        if isinstance(m, torch.nn.Module)
    }


def _load_module_states(model, guide, states: dict) -> None:
    """Load what :func:`_module_states` returned, in place."""
    for role, module in (("model", model), ("guide", guide)):
        if role in states:
            module.load_state_dict(states[role])


def save_json(obj, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON atomically."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)
