"""The data-parallel settings of a fit: validated before any process starts.

:func:`resolve_settings` checks fit's ``devices``, ``strategy``, ``num_nodes``,
``accelerator``, ``precision`` and ``logger`` (and the CLI's options for them) and returns
``None`` for the default single-process run, which then never imports Lightning Fabric.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
from dataclasses import dataclass

import numpy as np
import torch

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


def _is_logger_object(logger) -> bool:
    """A Lightning logger instance (W&B, MLflow, ...), duck-typed so that checking a
    string never imports Fabric."""
    return not isinstance(logger, str) and all(
        callable(getattr(logger, name, None)) for name in ("log_metrics", "save", "finalize")
    )


def _check_choices(strategy, accelerator, precision, logger) -> None:
    for value, name, choices in (
        (strategy, "strategy", STRATEGIES),
        (accelerator, "accelerator", ACCELERATORS),
        (precision, "precision", PRECISIONS + ("16-mixed",)),
    ):
        if value not in choices:
            raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")
    if logger is not None and logger not in LOGGERS and not _is_logger_object(logger):
        raise ValueError(
            f"logger must be one of {list(LOGGERS)} or a Lightning logger object "
            f"(lightning_fabric.loggers.Logger: W&B, MLflow, ...), got {logger!r}"
        )
    if precision == "16-mixed":
        raise ValueError(
            "precision '16-mixed' is not supported yet: float16 needs a loss scaler, whose "
            "skipped steps the NaN guard would report as a diverged run; use 'bf16-mixed' "
            "(CPU and recent GPUs) or '32-true'"
        )


def _accelerator_kind(devices: int, accelerator: str, device) -> str:
    """``"cpu"`` or ``"cuda"``, from ``accelerator`` and fit's ``device``; refuses CUDA
    where PyTorch sees fewer GPUs than ``devices``."""
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
    return kind


def _check_logger(logger, run_dir) -> None:
    if logger in LOGGERS and run_dir is None:
        raise ValueError(f"logger '{logger}' writes into the run directory; give run_dir (--out)")
    if logger == "tensorboard" and not _tensorboard_available():
        raise ValueError(
            "logger 'tensorboard' needs the tensorboard package: pip install tensorboard "
            "(or use logger 'csv')"
        )


def _check_launch(strategy: str, num_nodes: int, command_line: bool) -> None:
    external = launched_externally()
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

    :param logger: ``"csv"``, ``"tensorboard"`` (written under ``run_dir/logs``) or a
        Lightning logger object (``lightning_fabric.loggers.Logger``: W&B, MLflow, ...),
        which receives the history rows.
    :raises ValueError: for a value that is not one of the choices, CUDA asked for where
        PyTorch sees no GPU or fewer GPUs than ``devices``, a ``device`` that contradicts
        ``accelerator``, a logger without a ``run_dir``, several machines without a
        launcher that starts their processes, or (``command_line``: the ``pyro-aevb``
        command) a launch that re-runs the command in every process.
    :raises FabricMissingError: when the settings need Fabric and it is not installed.
    """
    devices, num_nodes = _count(devices, "devices"), _count(num_nodes, "num_nodes")
    _check_choices(strategy, accelerator, precision, logger)
    given = {"devices": devices, "strategy": strategy, "num_nodes": num_nodes,
             "accelerator": accelerator, "precision": precision, "logger": logger}  # fmt: skip
    if given == DEFAULTS:
        return None
    kind = _accelerator_kind(devices, accelerator, device)
    _check_logger(logger, run_dir)
    require_fabric()
    _check_launch(strategy, num_nodes, command_line)
    return Settings(devices, strategy, num_nodes, kind, precision, logger)


def _tensorboard_available() -> bool:
    return any(importlib.util.find_spec(m) is not None for m in ("tensorboard", "tensorboardX"))


def launched_externally() -> bool:
    """Whether a launcher (torchrun, SLURM's srun, Fabric's script launcher) started this
    process as one rank of the run."""
    from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    return (
        "LOCAL_RANK" in os.environ
        or TorchElasticEnvironment.detect()
        or (SLURMEnvironment.detect())
    )


def check_batch_split(batches: list, world_size: int) -> None:
    """Every batch of an epoch must give each of ``world_size`` processes at least one
    point; checked in the launching process, before any process starts."""
    smallest = min(len(b) for b in batches)
    if smallest < world_size:
        raise ValueError(
            f"an epoch has a batch of {smallest} data point(s), which cannot be split over "
            f"{world_size} processes (every process needs at least one point): use a "
            f"batch_size and data set size whose every batch has >= {world_size} points, "
            "or fewer devices"
        )


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


