"""Starting the processes of a data-parallel fit under Lightning Fabric.

:func:`launch` is given the function every process runs (the loop's entry for one rank,
:func:`pyro_aevb.training.fitting.fit_in_rank`) and its arguments; it never calls
:func:`~pyro_aevb.fit` back. Launched from here (fork or spawn), rank 0 returns the
result and the trained state through a file, which is loaded into the caller's model and
guide; under an outside launcher (torchrun, srun, Fabric's script launcher) this process
is one rank and trains its own copy, like every other rank.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from ... import checkpoint as ckpt
from ...rundir import RunLock
from ..history import load_module_states, module_states
from .settings import LOGGERS, RankFailedError, Settings, launched_externally, require_fabric
from .strategy import FabricStrategy


def _start_method(strategy: str) -> str:
    if strategy == "ddp":
        return "popen"
    if strategy == "ddp_spawn":
        return "spawn"
    if strategy == "ddp_fork":
        return "fork"
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"




def _make_fabric(settings: Settings, run_dir):
    L = require_fabric()
    from lightning_fabric.strategies import DDPStrategy

    loggers = []
    if settings.logger is not None and settings.logger not in LOGGERS:
        loggers.append(settings.logger)  # a Lightning logger object (W&B, MLflow, ...)
    elif settings.logger is not None:
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
        method = "popen" if launched_externally() else _start_method(settings.strategy)
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




def _worker(
    fabric, run: Callable, args, kwargs, settings: Settings, errors, result_path=None, forked=False
):
    """One rank's fit, ``run(*args, strategy=..., **kwargs)`` (the body of every process);
    with ``result_path``, rank 0 writes
    the result and the trained module states there for the launching process."""
    if forked:
        # GNU OpenMP is not fork-safe: a forked process whose parent has run parallel
        # regions hangs in its first one with more than one thread
        torch.set_num_threads(1)
    if isinstance(args, bytes):  # pickled by launch_fit for a spawned process
        args, kwargs = pickle.loads(args)
    strategy = FabricStrategy(fabric, settings)
    try:
        kwargs = dict(kwargs, device=fabric.device)
        if fabric.global_rank != 0:
            kwargs["progress"] = False
        result = run(*args, strategy=strategy, **kwargs)
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


def launch(settings: Settings, run: Callable, args: tuple, kwargs: dict):
    """Run ``run(*args, strategy=FabricStrategy(...), **kwargs)`` in every process of a
    Fabric run with ``settings``; returns rank 0's result.

    Launched from here (fork or spawn), the processes' rank 0 returns the result and
    the trained state, which is loaded into the caller's model and guide; run by an
    outside launcher (torchrun, srun, Fabric's script launcher), this process is one
    rank and trains its own copy, like every other rank.
    """
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
            return _worker(fabric, run, args, kwargs, settings, None)
    method = launcher._start_method
    errors = multiprocessing.get_context(method).SimpleQueue()
    lock = RunLock(run_dir) if run_dir is not None else contextlib.nullcontext()
    # spawned processes unpickle the pair and the data; pickled here, as bytes, Fabric does
    # not walk them (it refuses frozen dataclasses, our Dataset)
    given = (pickle.dumps((args, kwargs)), None) if method == "spawn" else (args, kwargs)
    with lock, tempfile.TemporaryDirectory(prefix="pyro-aevb-fit-") as folder:
        result_path = os.path.join(folder, "rank0.pt")
        try:
            fabric.launch(_worker, run, *given, settings, errors, result_path, method == "fork")
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


