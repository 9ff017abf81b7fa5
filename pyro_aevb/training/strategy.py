"""How the processes of a fit share its work: the strategy the training loop is given.

The loop (:mod:`~pyro_aevb.training.loop`) never asks how many processes there are; it
asks its strategy to shard a batch, to build the step, to seed the particle noise, and
which process writes. :class:`LocalStrategy` is one process doing all of it;
:class:`~pyro_aevb.training.distributed.strategy.FabricStrategy` is one rank of a
data-parallel run under Lightning Fabric and overrides these hooks (as a Pyro ``ELBO``
subclass overrides its loss). Neither calls :func:`~pyro_aevb.fit`: the launcher is
handed the function each process runs.
"""

from __future__ import annotations

import torch

from .step import TrainingStep


class LocalStrategy:
    """One process: the whole batch, its own step, its own writes."""

    #: the processes of the run
    world_size = 1
    #: whether this process writes the run's files
    writes = True

    def run_config(self) -> dict:
        """Settings of the strategy that a resume must repeat (none for one process)."""
        return {}

    def check_batches(self, batches: list[torch.Tensor], missing=None) -> None:
        """Refuse an epoch plan this strategy cannot run (one process runs any)."""

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This process's rows of the global batch ``idx``."""
        return idx

    def make_step(self, *args, **kwargs) -> TrainingStep:
        """The training step (:class:`TrainingStep`'s arguments)."""
        return TrainingStep(*args, **kwargs)

    def seed_rank(self, seed: int) -> None:
        """Give this process its stream of particle noise (one process keeps ``seed``'s)."""

    def gather_rng(self) -> list | None:
        """Every process's RNG state for the checkpoint (``None``: the process's own,
        which the checkpoint holds anyway)."""
        return None

    def restore_rng(self, state: dict) -> None:
        """This process's RNG state from a checkpoint (restored with the rest already)."""

    def resumed(self, rows: list[dict]) -> None:
        """A resume restored ``rows`` of history."""

    def log_rows(self, rows: list[dict]) -> None:
        """Send the history's new rows to the loggers (one process has none)."""
