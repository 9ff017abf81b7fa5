"""A run's results: ``metrics.json`` (this evaluation's metrics plus the training keys)."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from .. import checkpoint as ckpt
from ..evaluation import evaluate
from ..training import FitResult, save_json
from .build import Run

METRICS_NAME = "metrics.json"
#: metrics.json keys that describe the training, not the evaluation
TRAINING_KEYS = (
    "train_seconds",
    "fit_seconds",
    "epochs_completed",
    "seconds_per_epoch",
    "stopped_early",
    "best_epoch",
    "final_train_elbo",
)


class ResultsNotSavedError(OSError):
    """Metrics were computed but could not be written; ``metrics`` holds them."""

    def __init__(self, message: str, metrics: dict, cause: OSError):
        super().__init__(cause.errno, message)
        self.metrics = metrics


def _training_metrics(result: FitResult | None, state: dict | None, previous: dict) -> dict:
    """The training keys of metrics.json, from the fit that just ran or else recomputed
    from the checkpoint; only ``fit_seconds`` (wall clock of a past command, stored
    nowhere else) is carried over from the previous file, by name."""
    if result is not None:
        history, seconds, epochs = result.history, result.train_seconds, result.epochs_completed
        stopped, best_epoch = result.stopped_early, result.best_epoch
    elif state is not None:
        recorded = state.get("history") or {}
        history, seconds = recorded.get("rows") or [], state.get("train_seconds")
        epochs, stopped = state.get("epoch"), recorded.get("stopped")
        best_epoch = (recorded.get("best") or {}).get("epoch")
    else:
        return {}
    out = {
        "train_seconds": seconds,
        "epochs_completed": epochs,
        "seconds_per_epoch": seconds / max(1, epochs) if seconds is not None and epochs else None,
        "stopped_early": stopped,
        "best_epoch": best_epoch,
        "final_train_elbo": history[-1]["train_elbo"] if history else None,
    }
    if result is None and previous.get("fit_seconds") is not None:
        out["fit_seconds"] = previous["fit_seconds"]
    return out


def evaluate_run(
    run: Run,
    run_dir: Path,
    particles: int,
    result: FitResult | None = None,
    fit_seconds: float | None = None,
    metrics_path: str | Path | None = None,
    progress: bool = False,
) -> dict:
    """Evaluate the run's pair on its test set and write ``metrics.json`` afresh.

    The file holds this evaluation's metrics and the training keys (from ``result``, or
    recomputed from the checkpoint): nothing of an earlier evaluation survives in it.

    :param metrics_path: where to write (default ``run_dir/metrics.json``).
    :raises ResultsNotSavedError: if the file cannot be written; it carries the metrics.
    """
    run_dir = Path(run_dir)
    path = Path(metrics_path) if metrics_path is not None else run_dir / METRICS_NAME
    t0 = time.perf_counter()
    ev = evaluate(
        run.model,
        run.guide,
        run.test,
        transform=run.config["transform"],
        num_particles=particles,
        seed=run.config.get("seed", 0),
        progress=progress,
    )
    metrics = ev.metrics()
    if run.spec.metrics is not None:
        metrics.update(run.spec.metrics(run, ev))
    metrics["evaluation_seconds"] = time.perf_counter() - t0
    previous = {}
    with contextlib.suppress(OSError, ValueError):
        previous = json.loads((run_dir / METRICS_NAME).read_text())
    state = None
    if result is None:
        with contextlib.suppress(OSError, ValueError):
            state = ckpt.load(run_dir / ckpt.CHECKPOINT_NAME)
    training = _training_metrics(result, state, previous)
    if result is not None:
        training["fit_seconds"] = fit_seconds
    out = {**training, **metrics}
    if run.config.get("run_id"):
        out["run_id"] = run.config["run_id"]
    try:
        save_json(out, path)
    except OSError as e:
        raise ResultsNotSavedError(
            f"could not write {path} ({e.strerror or e}); the metrics above were computed "
            "but not saved: free space or fix the permissions and run 'pyro-aevb evaluate' "
            "again, or pass --out FILE to write them elsewhere",
            out,
            e,
        ) from e
    return out
