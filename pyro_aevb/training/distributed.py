r"""Data-parallel training through Lightning Fabric: several processes, one run.

:func:`~pyro_aevb.fit` keeps its own loop (schedules, guards, exact resume); for
``devices > 1`` (or mixed precision, or a logger) `Lightning Fabric
<https://lightning.ai/docs/fabric/>`_ launches the processes, wraps the pair for
``DistributedDataParallel`` and handles precision. Fabric is imported only then: one
device with the default settings never imports it and runs exactly as before.

The mathematics of a data-parallel step. One process at global batch :math:`B` of
:math:`N` points minimises

.. math:: L = \frac1N\Big[G + \frac NB\sum_{i\in\text{batch}}\ell_i\Big],

with :math:`G` the terms outside the data plate (global latents, priors of parameters)
and :math:`\ell_i` the per-data-point terms (for the importance-weighted bounds and
enumeration too: their bounds are sums over the data plate). Rank :math:`r` of
:math:`W` gets the consecutive chunk :math:`b_r` of the global batch (:math:`B_r`
points), its data plate scales by :math:`N/B_r` (the per-rank batch, as for any
minibatch), and its loss is weighted by :math:`w_r = W B_r / B`:

.. math:: \frac1W\sum_r w_r\,\frac1N\Big[G + \frac N{B_r}\sum_{i\in b_r}\ell_i\Big]
          = \frac1N\Big[G + \frac NB\sum_{i\in\text{batch}}\ell_i\Big] = L,

so the mean that DDP's all-reduce takes of the per-rank gradients is the single-process
gradient, for chunks of any sizes (:math:`w_r = 1` when :math:`W` divides :math:`B`).
``batch_size`` is therefore the *global* batch, as in one process; each rank computes
about ``batch_size / W`` points per step.

Randomness. Shuffling and per-epoch transforms (dynamic binarization) draw from the run's
data generator, seeded alike on every rank: every rank draws the whole epoch's
permutation and transformed data set, the same as one process, and keeps its chunk, so
the union over ranks is exactly what one process draws. Network initialisation is seeded
alike too (and DDP broadcasts rank 0's values). The particle noise of the objective
(the guide's reparameterized samples, dropout) must differ between ranks, else the ranks
would reuse one another's noise: rank 0 keeps the stream seeded by ``seed`` (as one
process), rank ``r > 0`` reseeds Python, NumPy and PyTorch from ``(seed, r)``. A 2-rank
run thus draws other noise than a 1-process run (same distribution, so the same expected
gradient); with the noise fixed per data point, the two reach the same parameters up to
all-reduce round-off (``tests/test_distributed.py``).

Checkpoints are written by rank 0 only (atomically, as always), with every rank's RNG
state, so that ``resume`` continues every rank exactly. Every rank computes the history's
test ELBO itself (a single-process evaluation of the same parameters with the same seed,
identical on all ranks, so early stopping stops all of them together); rank 0's history
is the run's. The trained parameters come back to the calling process.

Launching. ``strategy="auto"`` forks the processes from the caller (no ``__main__`` guard
needed, nothing pickled); a forked process computes on one CPU thread, since GNU OpenMP
hangs a forked child's parallel region once the parent has used its threads.
``"ddp_spawn"`` starts fresh interpreters (the pair and data pickled; ``cores // N``
threads each), ``"ddp"`` is Fabric's script launcher (re-runs ``sys.argv``). Under an
outside launcher (torchrun, srun) every process calls :func:`~pyro_aevb.fit` itself.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import pickle
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyro
import torch

from .history import load_module_states, module_states
from .step import TrainingStep

INSTALL_HINT = 'pip install "pyro-aevb[distributed]"'

#: fit's arguments of this module and their defaults (the single-device run)
DEFAULTS = {
    "devices": 1,
    "strategy": "auto",
    "num_nodes": 1,
    "accelerator": "auto",
    "precision": "32-true",
    "logger": None,
}
#: "auto": Fabric's DDP started by fork where the platform has it (else spawn);
#: "ddp": Fabric's script launcher (re-runs the command line; also what torchrun,
#: SLURM and other launchers that start the processes themselves use)
STRATEGIES = ("auto", "ddp", "ddp_fork", "ddp_spawn")
ACCELERATORS = ("auto", "cpu", "cuda", "gpu")
PRECISIONS = ("32-true", "bf16-mixed")
LOGGERS = ("csv", "tensorboard")


class FabricMissingError(ImportError):
    """Lightning Fabric is needed for the settings asked for but is not installed."""


class RankFailedError(RuntimeError):
    """A process of a data-parallel run died or failed; every rank has stopped."""


def require_fabric():
    """``lightning_fabric``, or a clear error saying how to install it."""
    try:
        import lightning_fabric
    except ImportError as e:
        raise FabricMissingError(
            "training on several devices, in mixed precision or with a logger runs through "
            f"Lightning Fabric, which is not installed: {INSTALL_HINT} (or pip install "
            '"lightning-fabric>=2.4"). One device with the default settings needs nothing more.'
        ) from e
    return lightning_fabric


@dataclass
class Settings:
    """The validated data-parallel settings of a run."""

    devices: int
    strategy: str
    num_nodes: int
    #: "cpu" or "cuda" (resolved from "auto" and fit's ``device``)
    accelerator: str
    precision: str
    logger: str | None

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes

    def run_config(self) -> dict:
        """The settings a resume must repeat (the logger is not one: it changes no number)."""
        return {
            "devices": self.devices,
            "strategy": self.strategy,
            "num_nodes": self.num_nodes,
            "accelerator": self.accelerator,
            "precision": self.precision,
        }


def _count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def resolve_settings(
    devices=1,
    strategy="auto",
    num_nodes=1,
    accelerator="auto",
    precision="32-true",
    logger=None,
    device="cpu",
    run_dir=None,
    command_line=False,
) -> Settings | None:
    """Validate fit's data-parallel arguments before any work; ``None`` for the default
    single-device run (which then never imports Fabric).

    :raises ValueError: for a value that is not one of the choices, CUDA asked for where
        PyTorch sees no GPU or fewer GPUs than ``devices``, a ``device`` that contradicts
        ``accelerator``, a logger without a ``run_dir``, several machines without a
        launcher that starts their processes, or (``command_line``: the ``pyro-aevb``
        command) a launch that re-runs the command in every process.
    :raises FabricMissingError: when the settings need Fabric and it is not installed.
    """
    devices = _count(devices, "devices")
    num_nodes = _count(num_nodes, "num_nodes")
    for value, name, choices in (
        (strategy, "strategy", STRATEGIES),
        (accelerator, "accelerator", ACCELERATORS),
        (precision, "precision", PRECISIONS + ("16-mixed",)),
        (logger, "logger", (None,) + LOGGERS),
    ):
        if value not in choices:
            shown = [c for c in choices if c is not None]
            raise ValueError(f"{name} must be one of {shown}, got {value!r}")
    if precision == "16-mixed":
        raise ValueError(
            "precision '16-mixed' is not supported yet: float16 needs a loss scaler, whose "
            "skipped steps the NaN guard would report as a diverged run; use 'bf16-mixed' "
            "(CPU and recent GPUs) or '32-true'"
        )
    given = {
        "devices": devices,
        "strategy": strategy,
        "num_nodes": num_nodes,
        "accelerator": accelerator,
        "precision": precision,
        "logger": logger,
    }
    if given == DEFAULTS:
        return None
    device_type = torch.device(device).type if device is not None else "cpu"
    kind = {"auto": device_type, "gpu": "cuda"}.get(accelerator, accelerator)
    if accelerator != "auto" and device_type == "cuda" and kind != "cuda":
        raise ValueError(
            f"device '{device}' and accelerator '{accelerator}' disagree; give one of them"
        )
    if kind == "cuda":
        available = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if available == 0:
            raise ValueError(
                f"{devices} CUDA device(s) requested (--devices {devices} on cuda) but PyTorch "
                f"sees no CUDA device (torch {torch.__version__}, built with CUDA "
                f"{torch.version.cuda}); use --accelerator cpu / --device cpu, or run on a "
                "machine with GPUs and a CUDA build of PyTorch"
            )
        if devices > available:
            raise ValueError(
                f"--devices {devices} on cuda but only {available} CUDA device(s) are visible "
                f"on this machine; use --devices <= {available} (processes per machine)"
            )
    if logger is not None and run_dir is None:
        raise ValueError(f"logger '{logger}' writes into the run directory; give run_dir (--out)")
    if logger == "tensorboard" and not _tensorboard_available():
        raise ValueError(
            "logger 'tensorboard' needs the tensorboard package: pip install tensorboard "
            "(or use logger 'csv')"
        )
    require_fabric()
    external = _launched_externally()
    if num_nodes > 1 and not external:
        raise ValueError(
            f"num_nodes={num_nodes}: the processes of every machine must be started by a "
            "launcher (torchrun, SLURM's srun) that runs your script on each machine; see the "
            "README's 'From one device to many'. On one machine use devices alone"
        )
    if command_line and (strategy == "ddp" or external):
        raise ValueError(
            "the pyro-aevb command starts its own processes on one machine (--devices N with "
            "--strategy auto, ddp_fork or ddp_spawn); under torchrun or srun, or with "
            "--strategy ddp, every process would write the run directory. Launch a Python "
            "script that calls pyro_aevb.fit(..., devices=N, num_nodes=M) instead (README, "
            "'From one device to many')"
        )
    return Settings(devices, strategy, num_nodes, kind, precision, logger)


def _tensorboard_available() -> bool:
    import importlib.util

    return any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX"))


def fit_options(config: dict) -> dict:
    """fit's data-parallel keyword arguments that ``config`` sets (CLI runs)."""
    return {k: config[k] for k in DEFAULTS if config.get(k) is not None}


def add_cli_options(parser) -> None:
    """The CLI options of data-parallel training (``pyro-aevb fit``), added to ``parser``
    or, when it is already an argument group, to that group: argparse shows no help for a
    group nested in a group (and deprecates nesting)."""
    if isinstance(parser, argparse._ArgumentGroup):
        group = parser
    else:
        group = parser.add_argument_group(
            "devices", "data-parallel training through Lightning Fabric (" + INSTALL_HINT + ")"
        )
    group.add_argument(
        "--devices", type=int, help="processes per machine, one per device (default 1)"
    )
    group.add_argument(
        "--strategy",
        choices=STRATEGIES,
        help="auto (default): processes forked from this one; ddp: the command is re-run "
        "per process (Fabric's script launcher)",
    )
    group.add_argument("--num-nodes", type=int, help="machines, each with --devices (default 1)")
    group.add_argument("--accelerator", choices=ACCELERATORS, help="default: from --device")
    group.add_argument(
        "--precision", choices=PRECISIONS, help="32-true (default) or bf16-mixed autocast"
    )
    group.add_argument("--logger", choices=LOGGERS, help="also log history rows (RUN_DIR/logs)")


# -- the processes ----------------------------------------------------------------------

#: the rank context of the fit running in this process (set only inside a Fabric run)
_CURRENT: list[RankContext] = []


def current() -> RankContext | None:
    """The :class:`RankContext` of the data-parallel fit running here, else ``None``."""
    return _CURRENT[-1] if _CURRENT else None


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

    def __init__(self, *args, context: RankContext, **kwargs):
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


class RankContext:
    """What :func:`~pyro_aevb.fit` asks of the data-parallel run in one process."""

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
        smallest = min(len(b) for b in batches)
        if smallest < self.world_size:
            raise ValueError(
                f"an epoch has a batch of {smallest} data point(s), which cannot be split over "
                f"{self.world_size} processes (every process needs at least one point): use a "
                f"batch_size and data set size whose every batch has >= {self.world_size} points, "
                "or fewer devices"
            )

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
        from .. import checkpoint as ckpt

        state = ckpt.rng_state()
        if self.world_size == 1:
            return [state]
        gathered = [None] * self.world_size
        torch.distributed.all_gather_object(gathered, state)
        return gathered

    def restore_rng(self, state: dict) -> None:
        """This rank's RNG state from a checkpoint written by :meth:`gather_rng`'s run."""
        from .. import checkpoint as ckpt

        states = state.get("rank_rng")
        if states is None or len(states) != self.world_size:
            raise ValueError(
                "the checkpoint holds no RNG state for each of "
                f"{self.world_size} processes; resume with the settings that wrote it"
            )
        ckpt.set_rng_state(states[self.rank])

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


def _start_method(strategy: str) -> str:
    if strategy == "ddp":
        return "popen"
    if strategy == "ddp_spawn":
        return "spawn"
    if strategy == "ddp_fork":
        return "fork"
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"


def _launched_externally() -> bool:
    """Whether a launcher (torchrun, SLURM's srun, Fabric's script launcher) started this
    process as one rank of the run."""
    from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    return (
        "LOCAL_RANK" in os.environ
        or TorchElasticEnvironment.detect()
        or (SLURMEnvironment.detect())
    )


def _make_fabric(settings: Settings, run_dir):
    L = require_fabric()
    from lightning_fabric.strategies import DDPStrategy

    loggers = []
    if settings.logger is not None:
        root = Path(run_dir) / "logs"
        if settings.logger == "csv":
            from lightning_fabric.loggers import CSVLogger

            loggers.append(CSVLogger(root, name="csv"))
        else:
            from lightning_fabric.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(root, name="tensorboard"))
    if settings.world_size == 1 and settings.strategy == "auto":
        strategy = "auto"
    else:
        method = "popen" if _launched_externally() else _start_method(settings.strategy)
        strategy = DDPStrategy(
            process_group_backend="nccl" if settings.accelerator == "cuda" else "gloo",
            start_method=method,
            # the safe setting; DistributedStep turns it off where the loss reaches every
            # parameter of the pair
            find_unused_parameters=True,
        )
    return L.Fabric(
        accelerator=settings.accelerator,
        devices=settings.devices,
        num_nodes=settings.num_nodes,
        strategy=strategy,
        precision=settings.precision,
        loggers=loggers,
    )


def _inner_fit(*args, **kwargs):
    """fit's body, without the launch and the run lock (importable by name, so that a
    spawned process can unpickle it)."""
    from .loop import fit

    return fit.__wrapped__(*args, **kwargs)


def _worker(fabric, args, kwargs, settings: Settings, errors, result_path=None, forked=False):
    """One rank's fit (the body of every process); with ``result_path``, rank 0 writes
    the result and the trained module states there for the launching process."""
    if forked:
        # GNU OpenMP is not fork-safe: a forked process whose parent has run parallel
        # regions hangs in its first one with more than one thread
        torch.set_num_threads(1)
    if isinstance(args, bytes):  # pickled by launch_fit for a spawned process
        args, kwargs = pickle.loads(args)
    context = RankContext(fabric, settings)
    _CURRENT.append(context)
    try:
        kwargs = dict(kwargs, device=fabric.device)
        if fabric.global_rank != 0:
            kwargs["progress"] = False
        result = _inner_fit(*args, **kwargs)
        if result_path is None:
            return result
        if fabric.global_rank == 0:
            # the pair's modules carry its trained parameters back (fit's param store
            # scope drops the rest, in one process as here). Through a file, not Fabric's
            # return queue: a pipe, whose buffer (64 KiB) a network's state overfills,
            # which the caller reads only once every process has exited: a deadlock
            out = {"result": result, "modules": module_states(*_pair(args, kwargs))}
            torch.save(out, result_path)
        return None
    except BaseException as e:
        if errors is not None:
            with contextlib.suppress(Exception):
                errors.put((fabric.global_rank, e))
        raise
    finally:
        _CURRENT.pop()
        # a logger's writer may hold rows in a queue of its own (TensorBoard's event
        # writer does): close it before the process exits, whatever the outcome
        for logger in fabric.loggers:
            with contextlib.suppress(Exception):
                logger.finalize("success")


def _failure(exc, errors, world_size: int, run_dir) -> BaseException:
    """The error a user sees when a process of the run failed: the failing rank's own
    exception where it could be sent back, else what happened to the process."""
    reported = {}
    while errors is not None and not errors.empty():
        rank, error = errors.get()
        reported.setdefault(rank, error)
    signal_name = getattr(exc, "signal_name", None)
    index = getattr(exc, "error_index", None)
    if signal_name is None and reported:
        # the first rank's error (a consistent one, a NaN loss, arrives from all ranks)
        rank = index if index in reported else min(reported)
        error = reported[rank]
        if not isinstance(error, (ConnectionError, RuntimeError)) or rank == index:
            return error
    saved = ""
    if run_dir is not None:
        from .. import checkpoint as ckpt

        path = Path(run_dir) / ckpt.CHECKPOINT_NAME
        if path.exists():
            with contextlib.suppress(Exception):
                epoch = ckpt.load(path)["epoch"]
                saved = (
                    f" The last checkpoint, {path} (epoch {epoch}), is intact: continue with "
                    "resume=True (--resume) and the same devices."
                )
        if not saved:
            saved = " No checkpoint was written yet."
    if signal_name is not None:
        what = f"process {index} of {world_size} was killed ({signal_name})"
    else:
        code = getattr(exc, "exit_code", None)
        what = f"process {index} of {world_size} failed" + (
            f" (exit code {code})" if code is not None else ""
        )
        # a process that failed before it ran fit (it could not unpickle the pair, say)
        # sent no error of its own: the end of its traceback says why
        text = str(getattr(exc, "msg", "") or "").strip().splitlines()
        if text:
            what += f" with {text[-1].strip()}"
    return RankFailedError(
        f"data-parallel training stopped: {what}, so every process has stopped.{saved}"
    )


def launch_fit(settings: Settings, args: tuple, kwargs: dict):
    """Run fit's body on ``args`` and ``kwargs`` under Fabric with ``settings``.

    Launched from here (fork or spawn), the processes' rank 0 returns the result and
    the trained state, which is loaded into the caller's model and guide; run by an
    outside launcher (torchrun, srun, Fabric's script launcher), this process is one
    rank and trains its own copy, like every other rank.
    """
    from ..rundir import RunLock

    fabric = _make_fabric(settings, kwargs.get("run_dir"))
    run_dir = kwargs.get("run_dir")
    launcher = fabric.strategy.launcher
    multiprocess = launcher is not None and type(launcher).__name__ == "_MultiProcessingLauncher"
    if not multiprocess:
        # one process, or an outside launcher / Fabric's script launcher (which starts the
        # other ranks here): this process is one rank; rank 0 holds the run's lock
        fabric.launch()
        owns = run_dir is not None and fabric.global_rank == 0
        with RunLock(run_dir) if owns else contextlib.nullcontext():
            return _worker(fabric, args, kwargs, settings, None)
    method = launcher._start_method
    errors = multiprocessing.get_context(method).SimpleQueue()
    lock = RunLock(run_dir) if run_dir is not None else contextlib.nullcontext()
    # spawned processes unpickle the pair and the data; pickled here, as bytes, Fabric does
    # not walk them (it refuses frozen dataclasses, our Dataset)
    given = (pickle.dumps((args, kwargs)), None) if method == "spawn" else (args, kwargs)
    with lock, tempfile.TemporaryDirectory(prefix="pyro-aevb-fit-") as folder:
        result_path = os.path.join(folder, "rank0.pt")
        try:
            fabric.launch(_worker, *given, settings, errors, result_path, method == "fork")
        except Exception as e:
            from torch.multiprocessing import ProcessExitedException, ProcessRaisedException

            if isinstance(e, (ProcessExitedException, ProcessRaisedException)):
                raise _failure(e, errors, settings.world_size, run_dir) from None
            raise
        out = torch.load(result_path, weights_only=False)
    load_module_states(*_pair(args, kwargs), out["modules"])
    return out["result"]


def _pair(args: tuple, kwargs: dict) -> tuple:
    """fit's model and guide, given by position or by name."""
    names = ("model", "guide")
    return tuple(args[i] if len(args) > i else kwargs[n] for i, n in enumerate(names))


__all__ = [
    "DEFAULTS",
    "FabricMissingError",
    "RankFailedError",
    "RankContext",
    "Settings",
    "ObjectiveModule",
    "DistributedStep",
    "add_cli_options",
    "current",
    "fit_options",
    "launch_fit",
    "rank_seed",
    "require_fabric",
    "resolve_settings",
    "unreached_parameters",
]
