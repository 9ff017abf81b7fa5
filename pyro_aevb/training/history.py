"""The history of a run: one row per epoch (or per ``eval_every`` steps), and early stopping.

A row holds the epoch and step, ``train_elbo`` (the mean training objective of the
steps since the previous row, as an ELBO: nats per data point, higher is better, the
same sign as ``test_elbo``; with a KL weight it is the weighted objective), the test
ELBO and, for models with closed-form evidence, ``test_log_evidence``, the schedule's
phase, the KL weight, extra metrics, and the seconds spent in training steps.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping
from pathlib import Path

import pyro
import torch

from ..contract import PairSummary
from ..particles.estimators import elbo_per_datapoint, exact_log_evidence

HISTORY_NAME = "history.csv"


def params_snapshot() -> dict[str, torch.Tensor]:
    """Copies of every Pyro parameter (unconstrained), by name."""
    return {n: p.detach().clone() for n, p in pyro.get_param_store().named_parameters()}


def copy_params(values: Mapping[str, torch.Tensor]) -> None:
    """Copy ``values`` into the Pyro parameters of the same names, in place."""
    params = dict(pyro.get_param_store().named_parameters())
    missing = sorted(set(values) - set(params))
    if missing:
        raise ValueError(
            f"checkpoint holds parameters {missing} that this model/guide pair does not have; "
            "resume with the same model and guide that wrote it"
        )
    with torch.no_grad():
        for name, value in values.items():
            params[name].copy_(value)


def module_states(model, guide) -> dict:
    """Copies of the ``nn.Module`` states (parameters and buffers) of the pair, by role."""
    return {
        role: {k: v.detach().clone() for k, v in m.state_dict().items()}
        for role, m in (("model", model), ("guide", guide))
        if isinstance(m, torch.nn.Module)
    }


def load_module_states(model, guide, states: dict) -> None:
    """Load what :func:`module_states` returned, in place."""
    for role, module in (("model", model), ("guide", guide)):
        if role in states:
            module.load_state_dict(states[role])


class History:
    """Rows of a run and the early-stopping state; :meth:`state_dict` is checkpointed.

    :param test_fields: prepared test data, or ``None`` (rows then have no test metrics).
    :param seed: the seed of the test ELBO's draws (the same draws in every row).
    :param patience: stop after this many epochs without a better test ELBO.
    :param history_metrics: ``f(model, guide, test_fields) -> dict`` for every row.
    :param summary: the pair's check as ``fit`` computed it
        (:func:`~pyro_aevb.particles.summarize_pair`): the per-epoch test ELBO uses it
        instead of checking the pair again on the test set every row (and so honours
        ``fit``'s ``check_support=False``).
    """

    def __init__(
        self,
        model,
        guide,
        test_fields: Mapping[str, torch.Tensor] | None,
        *,
        seed: int,
        patience: int | None = None,
        history_metrics: Callable[..., dict] | None = None,
        record_phase: bool = False,
        record_kl_weight: bool = False,
        summary: PairSummary | None = None,
    ):
        self.model, self.guide, self.test_fields = model, guide, test_fields
        self.summary = summary
        self.seed, self.patience, self.history_metrics = seed, patience, history_metrics
        self.record_phase, self.record_kl_weight = record_phase, record_kl_weight
        self.rows: list[dict] = []
        #: the best row so far under early stopping, with its parameters
        self.best: dict | None = None
        self.stopped = False
        #: steps, summed loss and seconds since the last row (carried across epochs)
        self.pending = {"steps": 0, "loss": 0.0, "seconds": 0.0}

    def add_step(self, loss: float, seconds: float) -> None:
        self.pending["steps"] += 1
        self.pending["loss"] += loss
        self.pending["seconds"] += seconds

    def record(self, epoch: int, step: int, phase: str | None, kl_weight: float) -> dict:
        """Append a row for the steps since the last one; returns it."""
        pending = self.pending
        row = {
            "epoch": epoch,
            "step": step,
            "train_elbo": -pending["loss"] / max(1, pending["steps"]),
        }
        if self.record_phase:
            row["phase"] = phase
        if self.record_kl_weight:
            row["kl_weight"] = kl_weight
        if self.test_fields is not None:
            test_elbo = elbo_per_datapoint(
                self.model, self.guide, self.test_fields, seed=self.seed, summary=self.summary
            )
            row["test_elbo"] = float(test_elbo.mean())
            evidence = exact_log_evidence(self.model, self.test_fields)
            if evidence is not None:
                row["test_log_evidence"] = float(evidence.mean())
            if self.history_metrics is not None:
                row.update(self.history_metrics(self.model, self.guide, self.test_fields))
        row["train_seconds"] = pending["seconds"]
        self.pending = {"steps": 0, "loss": 0.0, "seconds": 0.0}
        self.rows.append(row)
        if self.patience is not None:
            if self.best is None or row["test_elbo"] > self.best["test_elbo"]:
                self.best = {
                    "epoch": epoch,
                    "test_elbo": row["test_elbo"],
                    "params": params_snapshot(),
                    "modules": module_states(self.model, self.guide),
                }
            elif epoch - self.best["epoch"] >= self.patience:
                self.stopped = True
        return row

    def restore_best(self) -> int | None:
        """Put the best parameters back (early stopping); returns their epoch."""
        if self.best is None:
            return None
        load_module_states(self.model, self.guide, self.best["modules"])
        copy_params(self.best["params"])
        return self.best["epoch"]

    def state_dict(self) -> dict:
        return {
            "rows": self.rows,
            "best": self.best,
            "stopped": self.stopped,
            "pending": dict(self.pending),
        }

    def load_state_dict(self, state: dict) -> None:
        self.rows = list(state["rows"])
        self.best, self.stopped = state["best"], state["stopped"]
        self.pending = dict(state["pending"])

    def write_csv(self, path: str | os.PathLike) -> None:
        """Write the rows to ``path`` atomically (columns: the union, in first-seen order)."""
        if not self.rows:
            return
        path = Path(path)
        columns = list(dict.fromkeys(k for row in self.rows for k in row))
        tmp = path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
        os.replace(tmp, path)
