"""One rank of a data-parallel fit: the Fabric strategy the training loop is given.

:class:`FabricStrategy` overrides :class:`~pyro_aevb.training.strategy.LocalStrategy`'s
hooks for rank ``r`` of ``W``: its chunk of each global batch and the chunk's loss weight
:math:`w_r`, a step whose loss runs through ``DistributedDataParallel``
(:class:`DistributedStep`), its own particle noise, every rank's RNG state in rank 0's
checkpoint, and rank 0's rows sent to the loggers. The mathematics is in
:mod:`pyro_aevb.training.distributed`.
"""

from __future__ import annotations

import warnings

import numpy as np
import pyro
import torch

from ... import checkpoint as ckpt
from ..step import TrainingStep
from ..strategy import LocalStrategy
from .settings import Settings, check_batch_split


def rank_seed(seed: int, rank: int) -> int:
    """Rank ``rank``'s seed of the particle noise, derived from the run's ``seed``
    (independent streams, :class:`numpy.random.SeedSequence`); rank 0 keeps ``seed``."""
    if rank == 0:
        return int(seed)
    return int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1)[0])



class ObjectiveModule(torch.nn.Module):
    """The objective's differentiable loss as an ``nn.Module`` (Pyro's ``ELBOModule``
    pattern), holding exactly the Pyro parameters the step trains, so that
    ``DistributedDataParallel`` all-reduces the gradient of each of them.

    The pair's module buffers (batch-norm statistics) are registered too: DDP then
    broadcasts rank 0's values before every forward pass, so all ranks hold rank 0's.
    """

    def __init__(self, step: TrainingStep):
        super().__init__()
        self._step = [step]  # a list: not a submodule (its parameters are registered below)
        for i, p in enumerate(step.parameters):
            # the store's own tensors (plain tensors for pyro.param, a module's
            # nn.Parameters for pyro.module): DDP must hook the tensors the loss reaches
            self._parameters[f"p{i}"] = p
        buffers = [
            b
            for m in (step.model, step.guide)
            if isinstance(m, torch.nn.Module)
            for b in m.buffers()
        ]
        for i, b in enumerate(dict.fromkeys(buffers)):
            self._buffers[f"b{i}"] = b
        self.weight = 1.0

    def forward(self, batch: dict) -> torch.Tensor:
        loss = self._step[0].differentiable_loss(batch)
        return loss * self.weight if self.weight != 1.0 else loss


def unreached_parameters(step: TrainingStep, batch: dict) -> list[str]:
    """Names of the step's parameters that the loss on ``batch`` does not depend on
    (their gradient is ``None``); draws from a forked RNG, so training is unchanged."""
    with torch.random.fork_rng(devices=[]):
        loss = step.differentiable_loss(batch)
        if not loss.requires_grad:
            return [step.names[p] for p in step.parameters]
        grads = torch.autograd.grad(loss, step.parameters, allow_unused=True)
    return [step.names[p] for p, g in zip(step.parameters, grads, strict=True) if g is None]


class DistributedStep(TrainingStep):
    """:class:`TrainingStep` whose loss runs through Fabric's module (DDP, precision).

    The forward pass of rank ``r`` is its chunk's loss times :math:`w_r` (module
    docstring); the backward pass all-reduces the gradients to their mean over ranks;
    the reported loss is the mean of the ranks' weighted losses, the single-process
    loss, the same number on every rank (so the NaN and divergence guards, which then
    see all-reduced gradients and the global loss, stop all ranks at the same step).
    """

    def __init__(self, *args, context: FabricStrategy, **kwargs):
        super().__init__(*args, **kwargs)
        if not self._differentiable:
            raise ValueError(
                f"data-parallel training needs an objective with differentiable_loss; "
                f"{type(self.objective).__name__} has none"
            )
        self.context = context
        first = args[4] if len(args) > 4 else kwargs["batch"]
        missed = unreached_parameters(self, dict(first))
        if missed:
            warnings.warn(
                f"the loss on the first batch does not reach the parameters {missed[:5]} "
                f"({len(missed)} of {len(self.parameters)}): they get no gradient there",
                stacklevel=2,
            )
        # DDP's search for parameters a step leaves out costs a traversal of the graph
        # every step: only where the first batch leaves some out, or where labeled and
        # unlabeled batches alternate (the pair may use other parameters on each)
        ddp_options = getattr(context.fabric.strategy, "_ddp_kwargs", None)
        if ddp_options is not None:
            ddp_options["find_unused_parameters"] = bool(missed) or context.mixed_batches
        self.objective_module = ObjectiveModule(self)
        self.module = context.fabric.setup_module(self.objective_module)

    def _loss_and_backward(self, batch) -> torch.Tensor:
        self.objective_module.weight = self.context.weight
        loss = self.module(batch)
        if loss.requires_grad:
            self.context.fabric.backward(loss)
        return self.context.mean(loss.detach().float())

    def _collect_new_parameters(self) -> None:
        if len(pyro.get_param_store()) != self._store_size:
            raise ValueError(
                "the pair created Pyro parameters after the first batch; under data-parallel "
                "training every parameter must exist from the first step (DDP wraps them "
                "once): build the networks before fit"
            )


class FabricStrategy(LocalStrategy):
    """The strategy of one rank of a data-parallel run under Lightning Fabric."""

    def __init__(self, fabric, settings: Settings):
        self.fabric, self.settings = fabric, settings
        self.rank, self.world_size = fabric.global_rank, fabric.world_size
        #: this rank's loss weight w_r for the current step
        self.weight = 1.0
        self.logged_rows = 0
        #: labeled and unlabeled batches alternate (a semi-supervised data set)
        self.mixed_batches = False

    @property
    def writes(self) -> bool:
        """Whether this process writes the run's files (rank 0)."""
        return self.rank == 0

    def run_config(self) -> dict:
        return self.settings.run_config()

    def check_batches(self, batches: list[torch.Tensor], missing=None) -> None:
        """Every batch of an epoch must give every rank at least one point."""
        self.mixed_batches = missing is not None and 0 < int(missing.sum()) < len(missing)
        check_batch_split(batches, self.world_size)

    def shard(self, idx: torch.Tensor) -> torch.Tensor:
        """This rank's consecutive chunk of the global batch ``idx``; sets its weight."""
        mine = idx.tensor_split(self.world_size)[self.rank]
        self.weight = self.world_size * len(mine) / len(idx)
        return mine

    def make_step(self, *args, **kwargs) -> DistributedStep:
        return DistributedStep(*args, context=self, **kwargs)

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return value
        return self.fabric.all_reduce(value, reduce_op="mean")

    def seed_rank(self, seed: int) -> None:
        """Give this rank its own stream of particle noise (rank 0 keeps ``seed``'s)."""
        if self.rank != 0:
            pyro.set_rng_seed(rank_seed(seed, self.rank))

    def gather_rng(self) -> list | None:
        """Every rank's RNG state (a collective: all ranks call it), for rank 0's checkpoint."""
        state = ckpt.rng_state()
        if self.world_size == 1:
            return [state]
        gathered = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, state)
        return gathered

    def restore_rng(self, state: dict) -> None:
        """This rank's RNG state from a checkpoint written by :meth:`gather_rng`'s run."""
        states = state.get("rank_rng")
        if states is None or len(states) != self.world_size:
            raise ValueError(
                "the checkpoint holds no RNG state for each of "
                f"{self.world_size} processes; resume with the settings that wrote it"
            )
        ckpt.set_rng_state(states[self.rank])

    def resumed(self, rows: list[dict]) -> None:
        """The restored rows were logged by the run that wrote them."""
        self.logged_rows = len(rows)

    def log_rows(self, rows: list[dict]) -> None:
        """Send the history rows not logged yet to the Fabric logger (rank 0 writes)."""
        new, self.logged_rows = rows[self.logged_rows :], len(rows)
        if not self.fabric.loggers:
            return
        for row in new:
            numbers = {
                k: float(v)
                for k, v in row.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "step"
            }
            self.fabric.log_dict(numbers, step=int(row["step"]))
        for logger in self.fabric.loggers:
            logger.save()


#: the name of earlier releases
RankContext = FabricStrategy
