"""Where a fit runs: the device, host reads and CUDA graphs, and the data-parallel settings.

:class:`PlacementSettings` is the last settings group :func:`~pyro_aevb.fit` builds: the
refusals that pair a placement option with another group's option (``validate`` with
deferred reads, ``cuda_graph`` with KL annealing) live here, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..device import resolve_device
from .distributed.settings import DEFAULTS as PARALLEL_DEFAULTS
from .distributed.settings import Settings as ParallelSettings
from .distributed.settings import resolve_settings
from .settings import ObjectiveSettings, StepSettings, integer


@dataclass(frozen=True)
class PlacementSettings:
    """Where and how the steps run.

    :param device: ``"cpu"`` or ``"cuda[:N]"``; model, guide and data are moved there.
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
    :param devices, strategy, num_nodes, accelerator, precision, logger: data-parallel
        training through Lightning Fabric (:mod:`~pyro_aevb.training.distributed`):
        ``devices`` processes per machine on ``num_nodes`` machines; ``batch_size`` stays
        the global batch. ``precision="bf16-mixed"`` autocasts the step; ``logger``
        (``"csv"``, ``"tensorboard"``) also sends the history rows to ``run_dir/logs``.
        The defaults train in this process without Fabric.
    """

    device: str | torch.device = "cpu"
    sync_every: int | None = None
    cuda_graph: bool = False
    devices: int = 1
    strategy: str = "auto"
    num_nodes: int = 1
    accelerator: str = "auto"
    precision: str = "32-true"
    logger: Any = None
    #: the run directory (a logger writes there) and the groups the refusals pair with
    run_dir: Any = field(default=None, repr=False)
    objective: ObjectiveSettings | None = field(default=None, repr=False)
    step: StepSettings | None = field(default=None, repr=False)
    #: the resolved device and data-parallel settings (``None``: this process alone)
    torch_device: torch.device = field(init=False, repr=False)
    parallel: ParallelSettings | None = field(init=False, repr=False)

    def __post_init__(self):
        dev = resolve_device(self.device)
        cuda_graph = bool(self.cuda_graph)
        default_reads = 50 if cuda_graph else 1
        sync_every = self.sync_every if self.sync_every is not None else default_reads
        object.__setattr__(self, "torch_device", dev)
        object.__setattr__(self, "cuda_graph", cuda_graph)
        object.__setattr__(self, "sync_every", integer(sync_every, "sync_every", 1))
        parallel = resolve_settings(
            **{name: getattr(self, name) for name in PARALLEL_DEFAULTS},
            device=self.device,
            run_dir=self.run_dir,
        )
        if parallel is not None and self.deferred:
            raise ValueError(
                "sync_every > 1 and cuda_graph=True run one process's step without host "
                "reads; they are not supported with devices, precision or a logger "
                "(Lightning Fabric) yet"
            )
        object.__setattr__(self, "parallel", parallel)
        self._refuse_combinations()

    @property
    def deferred(self) -> bool:
        """Whether steps after the first skip the per-step host read."""
        return self.sync_every > 1 or self.cuda_graph

    def _refuse_combinations(self) -> None:
        if self.cuda_graph and self.torch_device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs a CUDA device, not '{self.torch_device}'")
        if self.step is not None and self.step.validate and self.deferred:
            raise ValueError(
                "validate=True checks every step's distribution arguments on the host, which "
                "needs a synchronisation per step: it cannot be combined with cuda_graph=True "
                "or sync_every > 1"
            )
        annealed = self.objective is not None and self.objective.kl_annealing is not None
        if self.cuda_graph and annealed:
            raise ValueError(
                "cuda_graph=True with kl_annealing is not supported: a graph would replay the "
                "KL weight of its capture; use cuda_graph=False"
            )

    def check_step_hooks(self, hooks: list) -> None:
        """Refuse CUDA graphs for a pair whose modules take the step count."""
        if self.cuda_graph and hooks:
            raise ValueError(
                "cuda_graph=True is not supported for a pair whose modules take the step "
                "count (set_training_step, e.g. an annealed Gumbel-softmax temperature): a "
                "graph would replay the value of its capture; use cuda_graph=False"
            )
