"""Fitting a model/guide pair with SVI: :func:`fit`, a composition of the training parts.

:func:`fit` validates its settings (:mod:`~pyro_aevb.training.options`), then either
trains in this process or hands :func:`fit_in_rank` to the data-parallel launcher
(:mod:`~pyro_aevb.training.distributed`), which runs it in every process with that
process's strategy. :func:`train_pair` is the body both run: plan the data, open the run
directory, seed, check the pair, build the step, the history and the callbacks, restore
a resumed run, and run the :class:`~pyro_aevb.training.loop.FitLoop`. A run directory's
checkpoint lets :func:`fit` resume to the same parameters an uninterrupted run reaches.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path

import pyro
import torch

from ..arguments import adapt
from ..contract import PairSummary
from ..schedules import JointSchedule
from . import distributed
from .callbacks import CheckpointEachEpoch, KLWeight, LogRows, StepCountHooks
from .checkpointing import Checkpointer
from .data_plan import TrainingData
from .graphs import make_sync_free_step
from .history import History
from .loop import FitLoop, ReadEachStep
from .options import FitSettings, signature
from .pair_check import check_training_pair
from .progress import Progress
from .strategy import LocalStrategy


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


def fit(model, guide, train, test=None, **options) -> FitResult:
    """Train ``model`` and ``guide`` by stochastic variational inference.

    :param train: training data, a :class:`~pyro_aevb.data.Dataset` in the shape the pair
        reads (e.g. ``train.flat()``) or a mapping of fields (``x`` first dim ``N``).
    :param test: optional test data; its ELBO (nats per data point) is computed after
        every epoch (or every ``eval_every`` steps) and drives early stopping.
    :param options: keyword settings, each documented with its group and validated there
        before any work (:mod:`pyro_aevb.training.settings`): the objective
        (:class:`~pyro_aevb.training.settings.ObjectiveSettings`), the step
        (:class:`~pyro_aevb.training.settings.StepSettings`), the data
        (:class:`~pyro_aevb.training.settings.DataSettings`), the loop
        (:class:`~pyro_aevb.training.settings.LoopSettings`), the placement and
        data-parallel training (:class:`~pyro_aevb.training.placement.PlacementSettings`)
        and the run directory (:class:`~pyro_aevb.training.checkpointing.RunDirSettings`).
    :raises NonFiniteLossError: on a NaN or infinite loss or gradient (or a diverging
        loss), naming the epoch and step; the parameters and the last checkpoint stay as
        they were.
    """
    settings = FitSettings.from_options(options)
    settings.loop.check_test_set(test is not None)
    parallel = settings.placement.parallel
    if parallel is None:
        strategy = LocalStrategy()
        return settings.run_dir.holding_lock(
            lambda: train_pair(model, guide, train, test, settings, strategy)
        )
    # an epoch that the processes cannot share is refused before any of them starts
    with pyro.get_param_store().scope(), torch.random.fork_rng(devices=[]):
        arguments = settings.data.arguments
        data, _, _ = TrainingData.plan(adapt(model, arguments), adapt(guide, arguments),
                                       train, settings.data)  # fmt: skip
    distributed.check_batch_split(data.epoch_batches(), parallel.world_size)
    in_rank = {k: v for k, v in options.items() if k not in distributed.DEFAULTS}
    return distributed.launch(parallel, fit_in_rank, (model, guide, train, test), in_rank)


fit.__signature__ = signature(inspect.signature(fit))


def fit_in_rank(model, guide, train, test=None, *, strategy, **options) -> FitResult:
    """:func:`fit`'s body in one process of a data-parallel run (``options`` without the
    data-parallel ones; ``strategy``: this rank's
    :class:`~pyro_aevb.training.distributed.FabricStrategy`)."""
    settings = FitSettings.from_options(options)
    return train_pair(model, guide, train, test, settings, strategy)


def train_pair(model, guide, train, test, settings: FitSettings, strategy) -> FitResult:
    """Plan, check, build and run one fit (every check that can fail runs before any
    step); the composition :func:`fit` and :func:`fit_in_rank` share."""
    s = settings
    model, guide = adapt(model, s.data.arguments), adapt(guide, s.data.arguments)
    data, model, guide = TrainingData.plan(model, guide, train, s.data)
    strategy.check_batches(data.epoch_batches(), data.missing)
    epochs, total_steps = s.loop.plan(data.steps_per_epoch)
    device = s.placement.torch_device
    data.prepare_test(test, device, model)
    state = s.run_dir.load()
    config = {**s.run_config(batch_size=data.batch_size, num_train=data.num_train,
                             total_steps=total_steps), **strategy.run_config()}  # fmt: skip
    modules = [m for m in (model, guide) if isinstance(m, torch.nn.Module)]
    for module in modules:
        module.to(device)
    pyro.set_rng_seed(s.data.seed)
    # Shuffling and per-epoch transforms draw from a generator on the data's device (a
    # CPU generator cannot drive CUDA sampling); its state is checkpointed.
    generator = torch.Generator(device=device).manual_seed(s.data.seed)
    data.place(device)
    with pyro.get_param_store().scope():
        summary = check_training_pair(model, guide, data, s.objective, s.data.check_support)
        step = strategy.make_step(
            model, guide, s.objective.elbo, summary, data.first_batch(), data.num_train,
            optimizer=s.step.optimizer, lr=s.step.lr, clip_norm=s.step.clip_norm,
            clip_value=s.step.clip_value,
            schedule=s.loop.schedule, lr_schedule=s.step.lr_schedule,
            total_steps=total_steps, divergence_factor=s.step.divergence_factor,
        )  # fmt: skip
        history = History(
            model, guide, data.test_fields, seed=s.data.seed, patience=s.loop.patience,
            history_metrics=s.loop.history_metrics,
            record_phase=not isinstance(s.loop.schedule, JointSchedule),
            record_kl_weight=s.objective.kl_annealing is not None, summary=summary,
        )  # fmt: skip
        hooks = StepCountHooks(model, guide)
        s.placement.check_step_hooks(hooks.hooks)
        strategy.seed_rank(s.data.seed)
        checkpointer = Checkpointer(s.run_dir, config, strategy, model=model, guide=guide,
                                    step=step, generator=generator, history=history)  # fmt: skip
        start = checkpointer.restore(state, s.step.lr) if state is not None else (0, 0.0)
        loop = _make_loop(s, data, step, history, generator, strategy, start, epochs,
                          hooks, checkpointer, resumed=state is not None)  # fmt: skip
        done = min(start[0] * data.steps_per_epoch, total_steps)
        progress = Progress(s.loop.progress and not history.stopped,
                            max(0, total_steps - done), epochs)  # fmt: skip
        try:
            loop.run(modules, progress)
        finally:
            progress.close()
        best_epoch = history.restore_best()
    return FitResult(history=history.rows, train_seconds=loop.train_seconds,
                     epochs_completed=loop.epoch, stopped_early=history.stopped,
                     best_epoch=best_epoch, run_dir=s.run_dir.run_dir, summary=summary)  # fmt: skip


def _make_loop(s: FitSettings, data, step, history, generator, strategy, start, epochs,
               hooks, checkpointer, resumed: bool) -> FitLoop:  # fmt: skip
    """The loop and its callbacks; the first step of a fresh run is read at once and
    validated, later ones may defer their read (``sync_every``) and run as CUDA graphs."""
    eager = deferred = ReadEachStep(step)
    if s.placement.deferred:
        deferred = make_sync_free_step(
            step, cuda_graph=s.placement.cuda_graph, read_every=s.placement.sync_every
        )
    kl = KLWeight(s.objective.kl_annealing, step.pair.latent_scale)
    callbacks = [kl, hooks, CheckpointEachEpoch(checkpointer), LogRows(strategy)]
    return FitLoop(
        data=data, generator=generator, eager=eager, deferred=deferred, history=history,
        kl=kl, callbacks=callbacks, strategy=strategy, schedule=s.loop.schedule,
        epochs=epochs, eval_every=s.loop.eval_every, validate=s.step.validate,
        start_epoch=start[0], train_seconds=start[1], validated_step=-1 if resumed else 0,
    )  # fmt: skip
