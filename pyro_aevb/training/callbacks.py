"""What the training loop calls around its steps: the hooks it does not inline.

A callback overrides the hooks it needs of :class:`Callback` (a template, as Lightning's
callbacks are): ``on_step_start`` before every step with the 0-based step count, and
``on_epoch_end`` after every epoch with the loop. The loop's own callbacks are the KL
weight's warm-up (:class:`KLWeight`), the modules' step-count hooks
(:class:`StepCountHooks`), the checkpoint (:class:`~pyro_aevb.training.checkpointing.
Checkpointer` through :class:`CheckpointEachEpoch`) and the loggers (:class:`LogRows`).
"""

from __future__ import annotations

from collections.abc import Callable

from ..annealing import KLAnnealing


class Callback:
    """No-op hooks; subclasses override the ones they need."""

    def on_step_start(self, step_count: int) -> None:
        """Before the step with 0-based index ``step_count`` (counted over the run)."""

    def on_epoch_end(self, loop) -> None:
        """After an epoch; ``loop`` is the :class:`~pyro_aevb.training.loop.FitLoop`."""


class KLWeight(Callback):
    """Sets the step's KL weight from its annealing schedule before every step; the
    weight of a history row's last step is recorded with it."""

    def __init__(self, annealing: KLAnnealing | None, latent_scale):
        self.annealing, self.latent_scale = annealing, latent_scale
        #: the weight of the last step (1: the ELBO)
        self.weight = 1.0

    def on_step_start(self, step_count: int) -> None:
        if self.annealing is not None:
            self.weight = self.annealing.weight(step_count)
            self.latent_scale.weight = self.weight


class StepCountHooks(Callback):
    """Calls the pair's ``set_training_step`` methods (e.g. an annealed Gumbel-softmax
    temperature); the step count is checkpointed, so a resumed run sets the same values."""

    def __init__(self, model, guide):
        self.hooks: list[Callable[[int], None]] = [
            m.set_training_step
            for m in (model, guide)
            if callable(getattr(m, "set_training_step", None))
        ]

    def on_step_start(self, step_count: int) -> None:
        for hook in self.hooks:
            hook(step_count)


class CheckpointEachEpoch(Callback):
    """Writes the run's checkpoint after every epoch."""

    def __init__(self, checkpointer):
        self.checkpointer = checkpointer

    def on_epoch_end(self, loop) -> None:
        self.checkpointer.on_epoch_end(loop.epoch, loop.train_seconds)


class LogRows(Callback):
    """Sends the history's new rows to the strategy's loggers after every epoch."""

    def __init__(self, strategy):
        self.strategy = strategy

    def on_epoch_end(self, loop) -> None:
        self.strategy.log_rows(loop.history.rows)
