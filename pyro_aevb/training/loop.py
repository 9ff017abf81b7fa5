"""Fitting a model/guide pair with SVI: epochs over minibatches, checkpoints, resume.

:func:`fit` is the one training loop of the library. It works for any pair that
follows :mod:`pyro_aevb.contract`, checks the pair and the data before the first
step, and writes a run directory that :func:`fit` can resume to the same
parameters an uninterrupted run reaches. The step itself is
:class:`~pyro_aevb.training.step.TrainingStep`, the history
:class:`~pyro_aevb.training.history.History`, the checkpoint
:mod:`~pyro_aevb.training.state`.
"""

from __future__ import annotations

import functools
import math
import numbers
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch
from pyro.infer import ELBO
from tqdm import tqdm

from .. import checkpoint as ckpt
from ..annealing import KLAnnealing
from ..arguments import adapt, batch_rows, num_rows, plan_batches, training_fields
from ..arguments import steps_per_epoch as count_batches
from ..contract import (
    ContractError,
    PairSummary,
    check_data_support,
    check_pair,
    merge_summaries,
    objective_advice,
    observed_field,
    warn_once,
)
from ..data.dataset import Dataset
from ..data.transforms import Identity, Transform, get_transform, transform_test_set
from ..device import resolve_device
from ..objectives import objective_name, resolve_objective, with_capability
from ..pair_data import prepare_test_set, prepare_training
from ..plate import full_data_size
from ..rundir import RunLock
from ..schedules import AlternatingSchedule, JointSchedule
from . import distributed
from . import optim as optim_lib
from . import state as run_state
from .graphs import make_sync_free_step
from .history import HISTORY_NAME, History
from .step import TrainingStep, _where_invalid


@dataclass
class FitResult:
    """What :func:`fit` returns; the trained parameters live in the model and guide."""

    #: one dict per epoch (or per ``eval_every`` steps): epoch, step, train_elbo,
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


def _first(fields: Mapping, exclude: torch.Tensor | None, size: int | None = None) -> dict:
    """The first ``size`` data points (all if ``None``), leaving out the rows ``exclude``
    marks (a semi-supervised batch holds labeled or unlabeled points, never both)."""
    n = next(n for n in map(num_rows, fields.values()) if n is not None)
    rows = torch.arange(n) if exclude is None else (~exclude.cpu()).nonzero().flatten()
    rows = rows[: size if size is not None else n]
    return {k: batch_rows(v, rows, k, n) for k, v in fields.items()}


def _integer(value, name: str, minimum: int, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _positive(value, name: str, allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


class _ReadEachStep:
    """The eager step behind the interface of the deferred ones
    (:mod:`~pyro_aevb.training.graphs`): its loss is read back every step."""

    read_every = 1

    def __init__(self, step: TrainingStep):
        self.step, self.losses = step, []

    @property
    def queued(self) -> int:
        return len(self.losses)

    def __call__(self, batch, phase: str, where: str) -> None:
        self.losses.append(self.step(batch, phase, where))

    def read(self) -> list[float]:
        losses, self.losses = self.losses, []
        return losses


class _Progress:
    """A tqdm bar on a terminal; one plain line per epoch when stderr is redirected
    (a bar's carriage-return updates would fill a log file)."""

    def __init__(self, enabled: bool, total: int, epochs: int):
        self.terminal = enabled and sys.stderr.isatty()
        self.lines = enabled and not self.terminal
        self.epochs = epochs
        self.bar = tqdm(total=total, disable=not self.terminal, desc="fit", dynamic_ncols=True)

    def step(self, n: int = 1) -> None:
        self.bar.update(n)

    def epoch(self, epoch: int, loss: float, row: dict | None) -> None:
        self.bar.set_postfix(epoch=epoch, loss=f"{loss:.2f}")
        if self.lines:
            text = f"epoch {epoch}/{self.epochs}  train ELBO {-loss:.2f}"
            if row is not None and "test_elbo" in row:
                text += f"  test ELBO {row['test_elbo']:.2f}"
            print(text + " (nats per data point)", file=sys.stderr, flush=True)

    def close(self) -> None:
        self.bar.close()


def _holding_the_run_lock(fit_fn):
    """Run ``fit`` holding ``run_dir``'s lock (:class:`~pyro_aevb.rundir.RunLock`), so that
    a second fit into the same run directory is refused while the first one runs; a run
    directory the call created and left empty (it failed before writing) is removed."""

    @functools.wraps(fit_fn)
    def wrapper(*args, **kwargs):
        if distributed.current() is None:
            settings = distributed.resolve_settings(
                **{k: kwargs.pop(k) for k in distributed.DEFAULTS if k in kwargs},
                device=kwargs.get("device", "cpu"),
                run_dir=kwargs.get("run_dir"),
            )
            if settings is not None:  # several processes, mixed precision or a logger
                if kwargs.get("cuda_graph") or (kwargs.get("sync_every") or 1) > 1:
                    raise ValueError(
                        "sync_every > 1 and cuda_graph=True run one process's step without "
                        "host reads; they are not supported with devices, precision or a "
                        "logger (Lightning Fabric) yet"
                    )
                return distributed.launch_fit(settings, args, kwargs)
        run_dir = kwargs.get("run_dir")
        if run_dir is None:
            return fit_fn(*args, **kwargs)
        run_dir = Path(run_dir)
        existed = run_dir.exists()
        try:
            with RunLock(run_dir):
                return fit_fn(*args, **kwargs)
        except BaseException:
            if not existed and run_dir.is_dir() and not any(run_dir.iterdir()):
                run_dir.rmdir()
            raise

    return wrapper


@_holding_the_run_lock
def fit(
    model: Callable,
    guide: Callable,
    train: Dataset | Mapping[str, torch.Tensor],
    test: Dataset | Mapping[str, torch.Tensor] | None = None,
    *,
    transform: Transform | str | None = None,
    objective: str | ELBO = "elbo",
    num_particles: int = 1,
    objective_options: dict | None = None,
    epochs: int | None = 10,
    batch_size: int = 100,
    lr: float = 1e-3,
    optimizer="adam",
    clip_norm: float | None = None,
    lr_schedule=None,
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
    validate: bool = False,
    divergence_factor: float | None = 1e3,
    sync_every: int | None = None,
    cuda_graph: bool = False,
    run_metadata: dict | None = None,
    progress: bool = True,
    arguments: Mapping[str, str] | None = None,
    check_support: bool = True,
    devices: int = 1,
    strategy: str = "auto",
    num_nodes: int = 1,
    accelerator: str = "auto",
    precision: str = "32-true",
    logger: str | None = None,
) -> FitResult:
    """Train ``model`` and ``guide`` by stochastic variational inference.

    :param train: training data, a :class:`Dataset` in the shape the pair reads
        (e.g. ``train.flat()``) or a mapping of fields (``x`` first dim ``N``).
    :param test: optional test data; its ELBO (nats per data point) is computed
        after every epoch and drives early stopping.
    :param transform: applied to ``x`` (name or :class:`Transform`); stochastic
        transforms are redrawn every epoch, the test set is drawn once.
    :param objective: a registered objective name (:mod:`pyro_aevb.objectives`) or a
        Pyro ``ELBO`` instance, used as it is (as ``pyro.infer.SVI(loss=...)`` does; its
        capabilities are inferred, :func:`~pyro_aevb.objectives.capabilities_of`).
    :param num_particles: samples per data point and step.
    :param objective_options: extra options of the objective (e.g. ``alpha``).
    :param epochs: total epochs (a resumed run counts the epochs already done);
        ``None`` with a schedule of finitely many rounds: until the schedule ends.
    :param batch_size: data points per step. The loss of a step is an unbiased estimate
        of the per-data-point negative ELBO: the data plate scales the batch by
        ``N / batch_size`` and the objective is divided by ``N``.
    :param lr: the learning rate.
    :param optimizer: ``"adam"`` (default), ``"adamw"``, ``"sgd"``, a
        ``torch.optim.Optimizer`` class, or a factory ``f(param_groups, lr=...)``.
        Built-in classes run fused (or ``foreach``) where the device supports it.
    :param clip_norm: clip the gradient of all parameters together to this norm
        (as Pyro's ``ClippedAdam`` does per parameter); ``None``: no clipping.
    :param lr_schedule: ``None``, ``"cosine"``, ``"exponential"`` or a factory
        ``f(optimizer) -> torch.optim.lr_scheduler.LRScheduler``, stepped every step.
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
        objectives. The training objective is then the weighted one; the test ELBO in
        the history stays the unweighted bound. The weight of each row's last step is
        recorded as ``kl_weight``.
    :param history_metrics: ``history_metrics(model, guide, test_fields) -> dict`` of
        extra test metrics for every history row (e.g. clustering accuracy).
    :param validate: keep Pyro's and torch's argument validation on for every step.
        By default the contract check and the first step run with it (so bad
        parameters are named clearly) and later steps without it (it costs a check of
        every distribution's arguments); evaluation always validates.
    :param divergence_factor: stop with :class:`~pyro_aevb.training.step.DivergenceError`
        when a step's loss exceeds this many times the smallest loss magnitude so far
        (at least 1 nat per data point); ``None`` disables the check.
    :param sync_every: read the losses and the non-finite guard back to the host every
        this many steps (default 1; 50 with ``cuda_graph``). Above 1 the guard runs on the
        device (:class:`~pyro_aevb.training.graphs.DeviceGuardedStep`): a refused step
        halts every later update there, and the error is raised at the next read, naming
        the step, with the parameters of the last good step. The first step is always read
        at once. Needs a built-in (fused) optimizer and ``validate=False``.
    :param cuda_graph: on CUDA, capture each step as a CUDA graph per phase and batch
        shape and replay it (:class:`~pyro_aevb.training.graphs.CUDAGraphStep`); a capture
        that fails falls back to eager steps with a warning. Opt-in: not yet verified on a
        GPU by this project's tests. Not with ``kl_annealing``, an ``lr_schedule`` or a
        pair whose modules take the step count (``set_training_step``).
    :param run_metadata: JSON-able facts stored in the checkpoint (e.g. a run id).
    :param progress: a progress bar on a terminal, one line per epoch otherwise.
    :param arguments: the pair's parameter name -> data field, for a model and guide
        whose arguments are named otherwise (``{"xs": "x", "ys": "y"}``); see
        :mod:`pyro_aevb.arguments`. Fields with some rows missing (labels ``-1`` or NaN
        rows) make a semi-supervised data set: each batch is then labeled or unlabeled,
        and an unlabeled one calls the pair with the argument's default.
    :param check_support: ``False`` skips the check of observed values against the
        likelihood's support (with a warning), for pairs that mean to train e.g. a
        Bernoulli likelihood on grey values.
    :param devices, strategy, num_nodes, accelerator, precision, logger: data-parallel
        training through Lightning Fabric (:mod:`~pyro_aevb.training.distributed`):
        ``devices`` processes per machine on ``num_nodes`` machines; ``batch_size`` stays
        the global batch. ``precision="bf16-mixed"`` autocasts the step; ``logger``
        (``"csv"``, ``"tensorboard"``) also sends the history rows to ``run_dir/logs``.
        The defaults train in this process without Fabric.
    :raises NonFiniteLossError: on a NaN or infinite loss or gradient (or a diverging
        loss), naming the epoch and step; the parameters and the last checkpoint stay
        as they were.
    """
    # Every check that can fail runs before any work is done.
    rank = distributed.current()  # None unless this is one process of a Fabric run
    model, guide = adapt(model, arguments), adapt(guide, arguments)
    seed = _integer(seed, "seed", 0)
    batch_size = _integer(batch_size, "batch_size", 1)
    # 2.7 particles would silently train (and record) K = 2
    num_particles = _integer(num_particles, "num_particles", 1)
    epochs = _integer(epochs, "epochs", 0, allow_none=True)
    eval_every = _integer(eval_every, "eval_every", 1, allow_none=True)
    patience = _integer(patience, "patience", 1, allow_none=True)
    lr = _positive(lr, "lr")
    clip_norm = _positive(clip_norm, "clip_norm", allow_none=True)
    divergence_factor = _positive(divergence_factor, "divergence_factor", allow_none=True)
    dev = resolve_device(device)
    cuda_graph = bool(cuda_graph)
    sync_every = _integer(
        sync_every if sync_every is not None else (50 if cuda_graph else 1), "sync_every", 1
    )
    if cuda_graph and dev.type != "cuda":
        raise ValueError(f"cuda_graph=True needs a CUDA device, not '{dev}'")
    if validate and (cuda_graph or sync_every > 1):
        raise ValueError(
            "validate=True checks every step's distribution arguments on the host, which "
            "needs a synchronisation per step: it cannot be combined with cuda_graph=True or "
            "sync_every > 1"
        )
    if cuda_graph and kl_annealing is not None:
        raise ValueError(
            "cuda_graph=True with kl_annealing is not supported: a graph would replay the KL "
            "weight of its capture; use cuda_graph=False"
        )
    elbo, capabilities = resolve_objective(objective, num_particles, objective_options)
    objective = objective_name(objective)
    transform = get_transform(transform) if transform is not None else Identity()
    schedule = schedule if schedule is not None else JointSchedule()
    if epochs is None and schedule.total_steps is None:
        raise ValueError("epochs=None needs a schedule with a fixed number of rounds")
    if kl_annealing is not None and not capabilities.kl_weight:
        raise ValueError(
            f"a KL weight applies to the objectives {with_capability('kl_weight')}, not "
            f"'{objective}': an importance-weighted bound mixes the likelihood and the "
            "latent terms inside a log-sum-exp, where no weight separates them"
        )
    if patience is not None and test is None:
        raise ValueError("early stopping (patience) needs test data")
    raw_fields, levels, n_train = training_fields(train)
    if n_train == 0:
        raise ValueError("the training data has no data points")
    model, guide, raw_fields, missing = prepare_training(model, guide, raw_fields, n_train)
    batch_size = min(batch_size, n_train)
    steps_per_epoch = count_batches(n_train, batch_size, missing)
    if rank is not None:
        rank.check_batches(plan_batches(torch.arange(n_train), batch_size, missing), missing)
    # the field a transform applies to: 'x', else the one the model observes
    data_field = "x" if "x" in raw_fields else observed_field(model, _first(raw_fields, missing))
    if not isinstance(transform, Identity) and data_field is None:
        raise ValueError(
            f"transform {transform!r} applies to the data field, but no field of "
            f"{sorted(raw_fields)} is named 'x' or observed by the model on the first batch"
        )
    if epochs is None:
        epochs = math.ceil(schedule.total_steps / steps_per_epoch)
    total_steps = epochs * steps_per_epoch
    if schedule.total_steps is not None:
        total_steps = min(total_steps, schedule.total_steps)
    test_fields = None
    if test is not None:
        test_transform = transform if data_field == "x" else None
        test_fields = prepare_test_set(test, test_transform, dev, raw_fields, model)
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
    elif resume:
        raise FileNotFoundError(
            f"resume=True but {run_dir} holds no {ckpt.CHECKPOINT_NAME}; pass resume=False "
            "to start a new run there"
        )
    run_config = {
        "objective": objective,
        "num_particles": int(getattr(elbo, "num_particles", num_particles)),
        "objective_options": objective_options or {},
        "batch_size": batch_size,
        "lr": lr,
        **optim_lib.describe(optimizer, lr_schedule),
        "clip_norm": clip_norm,
        "seed": seed,
        "transform": repr(transform),
        "num_train": n_train,
        "patience": patience,
        "schedule": schedule.describe(),
        "eval_every": eval_every,
        "kl_annealing": kl_annealing.describe() if kl_annealing is not None else None,
    }
    if lr_schedule not in (None, "constant"):
        # the schedule spans the run: a resume with other epochs would bend it
        run_config["total_steps"] = total_steps
    if rank is not None:
        run_config.update(rank.run_config())

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
    with store.scope():
        first = _first(preview, missing, batch_size)
        try:
            with full_data_size(n_train), pyro.validation_enabled(True):
                # the check draws evaluation's particles too (PairSummary.particle_mode)
                summary = check_pair(
                    model,
                    guide,
                    first,
                    allow_model_enumeration=capabilities.enumerates,
                    check_support=check_support,
                )
                if missing is not None and bool(missing.any()) and not bool(missing.all()):
                    # a semi-supervised data set: check the unlabeled batches too
                    unlabeled = check_pair(
                        model,
                        guide,
                        _first(preview, ~missing, batch_size),
                        allow_model_enumeration=capabilities.enumerates,
                        check_support=check_support,
                    )
                    summary = merge_summaries(summary, unlabeled)
        except ValueError as e:
            if isinstance(e, ContractError) or "found invalid values" not in str(e):
                raise
            raise ContractError(
                "invalid distribution parameters on the first batch"
                f"{_where_invalid(e, model, guide)}: {str(e).splitlines()[0]}"
            ) from e
        advice = None if capabilities.enumerates else objective_advice(summary, objective)
        if advice is not None:
            warn_once(f"objective-{objective}", advice)
        check_data_support(summary, preview)
        if test_fields is not None:
            check_data_support(summary, test_fields)
        step_fn = (TrainingStep if rank is None else rank.make_step)(
            model,
            guide,
            elbo,
            summary,
            first,
            n_train,
            optimizer=optimizer,
            lr=lr,
            clip_norm=clip_norm,
            schedule=schedule,
            lr_schedule=lr_schedule,
            total_steps=total_steps,
            divergence_factor=divergence_factor,
        )
        history = History(
            model,
            guide,
            test_fields,
            seed=seed,
            patience=patience,
            history_metrics=history_metrics,
            record_phase=not isinstance(schedule, JointSchedule),
            record_kl_weight=kl_annealing is not None,
        )
        # Modules whose training depends on the step (a Gumbel-softmax temperature) say so
        # with a set_training_step method; the step count is checkpointed, so a resumed
        # run sets the same values.
        step_hooks = [
            m.set_training_step
            for m in (model, guide)
            if callable(getattr(m, "set_training_step", None))
        ]
        if cuda_graph and step_hooks:
            raise ValueError(
                "cuda_graph=True is not supported for a pair whose modules take the step "
                "count (set_training_step, e.g. an annealed Gumbel-softmax temperature): a "
                "graph would replay the value of its capture; use cuda_graph=False"
            )
        start_epoch, train_seconds = 0, 0.0
        if rank is not None:
            rank.seed_rank(seed)
        if state is not None:
            run_state.check_resumable(
                state, run_config, model, guide, checkpoint_path, run_metadata
            )
            start_epoch, train_seconds = run_state.restore(
                state, model=model, guide=guide, step=step_fn, generator=generator, history=history
            )
            # a resume may lower the learning rate (run_state.RESUME_MAY_CHANGE; only without
            # a schedule, whose restored state then holds the rate): the optimizer's restored
            # state carries the old one
            if state["config"].get("lr") != lr:
                for group in step_fn.optimizer.param_groups:
                    group["lr"] = lr
            if rank is not None:
                rank.restore_rng(state)
                rank.logged_rows = len(history.rows)

        def save_checkpoint(epoch):
            if checkpoint_path is None:
                return
            rank_rng = rank.gather_rng() if rank is not None else None
            if rank is not None and not rank.writes:
                return
            run_state.save(
                checkpoint_path,
                epoch=epoch,
                config=run_config,
                model=model,
                guide=guide,
                step=step_fn,
                generator=generator,
                history=history,
                train_seconds=train_seconds,
                metadata=run_metadata,
                rank_rng=rank_rng,
            )
            history.write_csv(run_dir / HISTORY_NAME)

        # The first step reads its loss at once (and runs validated); the later ones may
        # defer the read (sync_every) and run as CUDA graphs.
        eager = _ReadEachStep(step_fn)
        deferred = eager
        if sync_every > 1 or cuda_graph:
            deferred = make_sync_free_step(step_fn, cuda_graph=cuda_graph, read_every=sync_every)
        done = min(start_epoch * steps_per_epoch, total_steps)
        bar = _Progress(progress and not history.stopped, max(0, total_steps - done), epochs)
        epoch, last_phase, kl_weight = start_epoch, None, 1.0
        # Validation (Pyro's and torch's argument checks) for the first step of the run;
        # the later ones skip it unless asked (evaluation runs with the global setting).
        validated_step = 0 if state is None else -1
        try:
            while epoch < epochs and not history.stopped:
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
                epoch_loss, epoch_steps, row = 0.0, 0, None
                runner, queued_seconds = eager, 0.0
                for step in range(steps_per_epoch + 1):
                    phase = schedule.phase(step_count) if step < steps_per_epoch else None
                    if phase is not None:
                        if kl_annealing is not None:
                            kl_weight = kl_annealing.weight(step_count)
                            step_fn.pair.latent_scale.weight = kl_weight
                        for hook in step_hooks:
                            hook(step_count)
                        t0 = time.perf_counter()
                        idx = plan[step] if rank is None else rank.shard(plan[step])
                        batch = {
                            k: batch_rows(x if k == data_field else v, idx, k, n_train)
                            for k, v in fields.items()
                        }
                        runner = eager if step_count == validated_step else deferred
                        with pyro.validation_enabled(validate or step_count == validated_step):
                            runner(batch, phase, f"at epoch {epoch}, step {step + 1}")
                        step_count += 1
                        last_phase = phase
                        at_row = eval_every is not None and step_count % eval_every == 0
                        if runner.queued < runner.read_every and not at_row:
                            queued_seconds += time.perf_counter() - t0
                            continue
                    else:
                        t0 = time.perf_counter()
                    # read the queued steps back (one synchronisation) before any row
                    losses = runner.read()
                    seconds = queued_seconds + time.perf_counter() - t0
                    queued_seconds = 0.0
                    train_seconds += seconds
                    for loss in losses:
                        epoch_loss, epoch_steps = epoch_loss + loss, epoch_steps + 1
                        history.add_step(loss, seconds / len(losses))
                    bar.step(len(losses))
                    if phase is None:
                        break
                    if at_row:
                        row = history.record(epoch, step_count, last_phase, kl_weight)
                        if history.stopped:
                            break
                # With eval_every, rows fall every eval_every steps and where the schedule
                # ends, not where the epochs run out: a run extended by a resume then
                # writes the same rows as one that was never stopped.
                finished = schedule.phase(step_count) is None
                pending = history.pending["steps"]
                if pending and (eval_every is None or finished) and not history.stopped:
                    row = history.record(epoch, step_count, last_phase, kl_weight)
                bar.epoch(epoch, epoch_loss / max(1, epoch_steps), row)
                save_checkpoint(epoch)
                if rank is not None:
                    rank.log_rows(history.rows)
        finally:
            bar.close()
        best_epoch = history.restore_best()
    return FitResult(
        history=history.rows,
        train_seconds=train_seconds,
        epochs_completed=epoch,
        stopped_early=history.stopped,
        best_epoch=best_epoch,
        run_dir=run_dir,
        summary=summary,
    )
