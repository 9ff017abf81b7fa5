"""The training loop: epochs of batches, a step each, reads, history rows, callbacks.

:class:`FitLoop` is what :func:`~pyro_aevb.fit` runs once the settings are validated and
the pair checked. One epoch draws its data and batch order from the run's generator,
runs the step on each batch (the first step of a run read at once and validated, later
ones possibly deferred, :mod:`~pyro_aevb.training.graphs`), reads the queued losses back
before any history row, and records a row per epoch or every ``eval_every`` steps. The
KL weight, the modules' step hooks, the checkpoint and the loggers are callbacks
(:mod:`~pyro_aevb.training.callbacks`); the strategy shards each batch
(:mod:`~pyro_aevb.training.strategy`).
"""

from __future__ import annotations

import time

import pyro
import torch

from .callbacks import Callback, KLWeight
from .data_plan import TrainingData
from .history import History
from .progress import Progress
from .step import TrainingStep


class ReadEachStep:
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


class FitLoop:
    """Runs the epochs of a fit from ``start_epoch`` to ``epochs``.

    :param eager: the step read every time (:class:`ReadEachStep`); ``deferred``: the one
        used after the first step (the same object unless reads are deferred).
    :param validated_step: the step count that runs eager and validated (the run's first
        step; ``-1`` on a resume).
    """

    def __init__(self, *, data: TrainingData, generator: torch.Generator, eager, deferred,
                 history: History, kl: KLWeight, callbacks: list[Callback], strategy,
                 schedule, epochs: int, eval_every: int | None, validate: bool,
                 start_epoch: int, train_seconds: float, validated_step: int):  # fmt: skip
        self.data, self.generator, self.eager, self.deferred = data, generator, eager, deferred
        self.history, self.kl, self.callbacks, self.strategy = history, kl, callbacks, strategy
        self.schedule, self.epochs, self.eval_every = schedule, epochs, eval_every
        self.validate, self.validated_step = validate, validated_step
        self.epoch, self.train_seconds, self.last_phase = start_epoch, train_seconds, None
        self.progress: Progress | None = None

    def run(self, modules, progress: Progress) -> int:
        """Train until the epochs or the schedule run out or early stopping stops;
        returns the epochs completed."""
        self.progress, history, steps = progress, self.history, self.data.steps_per_epoch
        while self.epoch < self.epochs and not history.stopped:
            if self.schedule.phase(self.epoch * steps) is None:
                break
            self.epoch += 1
            x, batches = self.data.epoch(self.generator)
            for module in modules:
                module.train()
            loss, row = self._run_epoch(x, batches)
            # With eval_every, rows fall every eval_every steps and where the schedule
            # ends, not where the epochs run out: a run extended by a resume then
            # writes the same rows as one that was never stopped.
            finished = self.schedule.phase(self.step_count) is None
            if history.pending["steps"] and not history.stopped:
                if self.eval_every is None or finished:
                    row = self._record()
            progress.epoch(self.epoch, loss, row)
            for callback in self.callbacks:
                callback.on_epoch_end(self)
        return self.epoch

    def _run_epoch(self, x, batches) -> tuple[float, dict | None]:
        """One epoch's steps; ``(mean loss, the last row recorded)``."""
        self.step_count = (self.epoch - 1) * self.data.steps_per_epoch
        self.losses, self.queued_seconds, row = [], 0.0, None
        runner = self.eager
        for index, rows in enumerate(batches):
            phase = self.schedule.phase(self.step_count)
            if phase is None:
                break
            started = time.perf_counter()
            runner = self._step(rows, x, phase, f"at epoch {self.epoch}, step {index + 1}")
            at_row = self.eval_every is not None and self.step_count % self.eval_every == 0
            self.queued_seconds += time.perf_counter() - started
            if runner.queued < runner.read_every and not at_row:
                continue
            self._read(runner)
            if at_row:
                row = self._record()
                if self.history.stopped:
                    break
        if not self.history.stopped:  # a stop came right after a read: nothing queued
            self._read(runner)  # the steps still queued at the epoch's end
        return sum(self.losses) / max(1, len(self.losses)), row

    def _step(self, rows, x, phase: str, where: str):
        for callback in self.callbacks:
            callback.on_step_start(self.step_count)
        batch = self.data.batch(x, self.strategy.shard(rows))
        first = self.step_count == self.validated_step
        runner = self.eager if first else self.deferred
        with pyro.validation_enabled(self.validate or first):
            runner(batch, phase, where)
        self.step_count += 1
        self.last_phase = phase
        return runner

    def _read(self, runner) -> None:
        """Read the queued steps' losses back (one synchronisation) into the history."""
        started = time.perf_counter()
        losses = runner.read()
        seconds = self.queued_seconds + time.perf_counter() - started
        self.queued_seconds = 0.0
        self.train_seconds += seconds
        for loss in losses:
            self.history.add_step(loss, seconds / len(losses))
        self.losses.extend(losses)
        self.progress.step(len(losses))

    def _record(self) -> dict:
        return self.history.record(self.epoch, self.step_count, self.last_phase, self.kl.weight)
