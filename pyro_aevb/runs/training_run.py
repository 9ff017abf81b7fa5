"""The training run: fit a named pair into its run directory, then draw its figures and
evaluate it."""

from __future__ import annotations

import contextlib
import platform
import sys
import time
from pathlib import Path

import pyro
import torch

from .. import checkpoint as ckpt
from .. import rundir
from ..annealing import KLAnnealing
from ..device import resolve_device
from ..memory import available_memory_bytes
from ..schedules import AlternatingSchedule
from ..training import fit, save_json
from ..training.distributed import fit_options
from .build import Run, build_run
from .config import CONFIG_NAME
from .directory import (
    MANIFEST_NAME,
    _check_parents,
    _check_run_directory,
    _resume_config,
    clear_library_files,
    write_manifest,
)
from .evaluation_run import evaluate_run
from .figures import redraw_learning_curve, write_figures


def _versions() -> dict:
    return {
        "pyro_aevb": __import__("pyro_aevb").__version__,
        "pyro": pyro.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def train_run(config: dict, run_dir: str | Path, resume=False, overwrite=False, progress=True):
    """Fit the pair of ``config``, evaluate it and write the whole run directory.

    Everything that can be refused is refused before a file is written: a foreign
    non-empty folder, an existing run without ``resume``/``overwrite``, a resume whose
    settings differ from the stored ``config.json`` (every difference named), a run
    directory another live process is fitting into (:class:`~pyro_aevb.rundir.RunLock`),
    the data and labels. ``overwrite`` removes only pyro-aevb's own files. A fresh run
    that fails before its first checkpoint leaves no ``config.json`` behind.

    :param progress: fit's progress (a bar on a terminal, one line per epoch when stderr
        is redirected) and, on a terminal, the evaluation's bar.
    :returns: ``(run, fit_result, metrics)``.
    """
    run_dir = Path(run_dir)
    _check_parents(run_dir)
    if resume and overwrite:
        raise ValueError("--resume continues a run and --overwrite discards it: pass one")
    created = not run_dir.exists()
    try:
        # the lock first: a live fit in this directory is named before anything else
        with rundir.RunLock(run_dir):
            return _train_locked(config, run_dir, resume, overwrite, progress)
    finally:
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only if the failed command left it empty


#: bytes per activation of one row in a training step: float32 forward value, its
#: gradient and the autograd graph's saved copy
STEP_BYTES_PER_ACTIVATION = 12


def step_memory_bytes(run: Run, config: dict) -> int:
    """A rough estimate of one training step's memory: rows (particles x batch points x
    the pair's :attr:`~pyro_aevb.pairs.PairSpec.rows_per_point`) x activations per row
    (the widths of the pair's linear layers and the data) x
    :data:`STEP_BYTES_PER_ACTIVATION`."""
    widths = [
        m.out_features
        for module in (run.model, run.guide)
        for m in module.modules()
        if isinstance(m, torch.nn.Linear)
    ]
    per_row = sum(widths) + run.train.num_features
    rows_per_point = run.spec.rows_per_point
    enumerated = 1 if rows_per_point is None else rows_per_point(config)
    rows = int(config["num_particles"]) * min(int(config["batch_size"]), len(run.train))
    return STEP_BYTES_PER_ACTIVATION * rows * enumerated * per_row


def _check_step_memory(run: Run, config: dict) -> None:
    need = step_memory_bytes(run, config)
    have = available_memory_bytes(resolve_device(config["device"]))
    if have is not None and need > have:
        raise MemoryError(
            f"a training step with --particles {config['num_particles']} and --batch-size "
            f"{config['batch_size']} needs about {need / 2**30:.1f} GiB (rough estimate: "
            f"{config['num_particles']} x {config['batch_size']} rows through the networks) "
            f"and {have / 2**30:.1f} GiB are available; use fewer particles or a smaller batch"
        )


def fit_keywords(config: dict, run: Run) -> dict:
    """The keyword arguments of :func:`~pyro_aevb.fit` that ``config`` sets:
    the one place where a run's config maps onto the training settings (the run
    directory, resume/overwrite and the progress bar are the caller's)."""
    schedule, annealing = config.get("schedule"), config.get("kl_annealing")
    return dict(
        transform=config["transform"],
        objective=config["objective"],
        num_particles=config["num_particles"],
        objective_options=config.get("objective_options") or None,
        epochs=config["epochs"],
        batch_size=config["batch_size"],
        lr=config["lr"],
        optimizer=config.get("optimizer") or "adam",
        clip_norm=config.get("clip_norm"),
        clip_value=config.get("clip_value"),
        lr_schedule=config.get("lr_schedule"),
        device=config["device"],
        sync_every=config.get("sync_every"),
        cuda_graph=bool(config.get("cuda_graph")),
        seed=config["seed"],
        patience=config.get("patience"),
        schedule=AlternatingSchedule(**schedule) if schedule else None,
        eval_every=config.get("eval_every"),
        kl_annealing=KLAnnealing(**annealing) if annealing else None,
        history_metrics=run.spec.history_metrics,
        run_metadata={"run_id": config["run_id"]},
        **fit_options(config),  # --devices, --precision, ... (data-parallel runs)
    )


def _train_locked(config, run_dir: Path, resume, overwrite, progress):
    _check_run_directory(run_dir, resume, overwrite)
    stored = _resume_config(run_dir, config) if resume else None
    run = build_run(config)
    _check_step_memory(run, config)
    rundir.remove_orphan_temporaries(run_dir)  # ours, left by a killed write
    rundir.check_writable(run_dir, "the run's files")
    run_id = (stored or {}).get("run_id") or rundir.new_run_id()
    config = dict(config, run_id=run_id, versions=_versions())
    if overwrite:
        clear_library_files(run_dir)
    config_path = run_dir / CONFIG_NAME
    checkpoint_path = run_dir / ckpt.CHECKPOINT_NAME
    t0 = time.perf_counter()
    try:
        if stored is None or not (run_dir / MANIFEST_NAME).exists():
            write_manifest(run_dir, run_id)  # before the first file it lists
        if stored is None:
            save_json(config, config_path)
        result = fit(
            run.model,
            run.guide,
            run.train,
            run.test,
            **fit_keywords(config, run),
            run_dir=run_dir,
            resume=resume,
            overwrite=overwrite,
            progress=progress,
        )
    except BaseException:
        if stored is None and not checkpoint_path.exists():
            # failed before its first checkpoint: no stub config.json is left behind
            for path in (config_path, run_dir / MANIFEST_NAME):
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
        raise
    fit_seconds = time.perf_counter() - t0
    if stored is not None and rundir.config_differences(stored, config, allowed=("versions",)):
        save_json(config, config_path)  # e.g. more epochs: the file says what was run
    run.config = config
    write_figures(run, run_dir, result.history)
    metrics = evaluate_run(
        run,
        run_dir,
        config["log_likelihood_particles"],
        result,
        fit_seconds,
        progress=progress and sys.stderr.isatty(),  # a bar, only for a person at a terminal
    )
    # the curve again, now with the test log-likelihood the evaluation computed
    redraw_learning_curve(run_dir, result.history, metrics)
    return run, result, metrics
