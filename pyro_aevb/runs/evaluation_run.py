"""A run's results: ``metrics.json`` (this evaluation's metrics plus the training keys).

Besides the bound and the log-likelihood, every evaluation measures posterior collapse
(:func:`pyro_aevb.collapse.collapse_report`, nats per data point): the KL of each latent
dimension, the active units (Burda et al., 2016) and the ELBO-surgery split of the average
KL into :math:`I(x; z)` and the marginal KL (Hoffman & Johnson, 2016), under
``metrics["collapse"]``; a pair whose densities couple the dimensions (a flow, a full
covariance) gets ``metrics["collapse_note"]`` saying why instead.
"""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from .. import checkpoint as ckpt
from ..collapse import COLLAPSE_ADVICE, UnsupportedPairError, collapse_report
from ..evaluation import evaluate, prepare_fields
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


#: test points and draws per point of the collapse diagnostics (the aggregate posterior
#: costs points^2 x draws densities: 10^7 at these values)
COLLAPSE_POINTS, COLLAPSE_SAMPLES = 1000, 10
#: the most per-dimension KLs the summary prints
SHOWN_UNITS = 20


def collapse_metrics(run: Run) -> dict:
    """``{"collapse": CollapseReport.to_dict()}`` of the run's pair on (a seeded subset of)
    its test set, or ``{"collapse_note": why}`` for a pair the report does not support."""
    device = next(iter(run.model.parameters()), None)
    device = device.device if device is not None else None
    fields = prepare_fields(run.test, run.config["transform"], device)
    try:
        report = collapse_report(
            run.model, run.guide, fields, num_samples=COLLAPSE_SAMPLES,
            max_points=COLLAPSE_POINTS, seed=run.config.get("seed", 0), warn=False,
        )  # fmt: skip
    except UnsupportedPairError as e:
        return {"collapse_note": f"no posterior-collapse diagnostics for this pair: {e}"}
    return {"collapse": report.to_dict()}


def collapse_lines(metrics: dict) -> list[str]:
    """The summary lines of the collapse diagnostics in ``metrics`` (none if absent): active
    units, the KL per dimension, I(x; z) and the marginal KL, and a warning when most units
    are inactive."""
    if "collapse_note" in metrics:
        return [f"collapse             {metrics['collapse_note']}"]
    c = metrics.get("collapse")
    if not c:
        return []
    shown = c["kl_nats_per_dim"][:SHOWN_UNITS]
    per_dim = ", ".join(f"{v:.2f}" for v in shown)
    if len(c["kl_nats_per_dim"]) > SHOWN_UNITS:
        per_dim += f", ... (all {len(c['kl_nats_per_dim'])} in metrics.json)"
    lines = [
        f"active units         {c['active_units']:9d} of {c['num_units']} "
        f"(Var_x E_q[z_j|x] > {c['active_unit_threshold']:g})",
        f"KL per dimension     {c['kl_nats_total']:9.2f} nats in all ({c['kl_method']}): {per_dim}",
    ]
    if c.get("mutual_information_nats") is not None:
        lines.append(
            f"I(x;z)               {c['mutual_information_nats']:9.2f} +- "
            f"{c['mutual_information_nats_se']:.2f} nats (at most log {c['collapse_points']} "
            f"= {c['mutual_information_nats_max']:.2f}); marginal KL(q(z)||p(z)) "
            f"{c['marginal_kl_nats']:.2f} nats"
        )
    for quantity, why in (c.get("collapse_unavailable") or {}).items():
        lines.append(f"{quantity.replace('_', ' '):<20} not computed: {why}")
    if c["active_units"] * 2 < c["num_units"]:
        lines.append(
            f"WARNING: posterior collapse: only {c['active_units']} of {c['num_units']} latent "
            "units are active, the decoder ignores the rest; " + COLLAPSE_ADVICE
        )
    return lines


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
        # the pair as fit checked it: evaluation need not check it again
        summary=result.summary if result is not None else None,
    )
    metrics = ev.metrics()
    if run.spec.metrics is not None:
        metrics.update(run.spec.metrics(run, ev))
    metrics.update(collapse_metrics(run))
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
