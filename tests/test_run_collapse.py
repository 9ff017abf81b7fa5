"""Posterior collapse in a run's metrics (runs/evaluation_run.py): the CLI's evaluation writes
collapse_report's numbers into metrics.json and the summary, warns when most units are
inactive, and writes a note for a pair the report does not support."""

from __future__ import annotations

import json
import math

import pytest

from pyro_aevb.cli import main
from pyro_aevb.collapse import collapse_report
from pyro_aevb.evaluation import prepare_fields
from pyro_aevb.runs import load_run
from pyro_aevb.runs.evaluation_run import COLLAPSE_POINTS, COLLAPSE_SAMPLES, collapse_lines

TINY = ["--dataset", "digits", "--epochs", "1", "--hidden", "16", "--latent-dim", "3",
        "--max-train", "200", "--max-test", "60", "--eval-particles", "20",
        "--no-progress"]  # fmt: skip


def test_the_cli_writes_collapse_report_into_metrics_and_summary(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", "vae", *TINY, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    collapse = json.loads((out / "metrics.json").read_text())["collapse"]
    # the numbers are collapse_report's on the run's test set, with the run's seed
    run = load_run(out)
    fields = prepare_fields(run.test, run.config["transform"])
    report = collapse_report(
        run.model, run.guide, fields, num_samples=COLLAPSE_SAMPLES,
        max_points=COLLAPSE_POINTS, seed=run.config["seed"], warn=False,
    )  # fmt: skip
    assert collapse["kl_nats_per_dim"] == pytest.approx(report.kl_per_dim.tolist(), abs=1e-9)
    assert collapse["active_units"] == report.active_units
    assert collapse["mutual_information_nats"] == pytest.approx(report.mutual_information)
    assert collapse["marginal_kl_nats"] == pytest.approx(report.marginal_kl)
    assert collapse["num_units"] == 3 and collapse["collapse_points"] == 60
    assert 0 <= collapse["mutual_information_nats"] <= math.log(60) + 1e-9
    assert collapse["kl_nats_total"] == pytest.approx(sum(collapse["kl_nats_per_dim"]))
    assert "active units" in printed and "I(x;z)" in printed and "marginal KL" in printed
    # one epoch on 200 digits leaves most units unused: the summary says so and what to do
    assert collapse["active_units"] * 2 < collapse["num_units"]
    assert "WARNING: posterior collapse" in printed and "free bits" in printed
    # evaluate writes the same numbers again
    assert main(["evaluate", str(out), "--particles", "20"]) == 0
    again = json.loads((out / "metrics.json").read_text())["collapse"]
    assert again["kl_nats_per_dim"] == pytest.approx(collapse["kl_nats_per_dim"], abs=1e-9)


def test_a_flow_guide_gets_a_note_instead_of_collapse_numbers(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["fit", "vae", *TINY, "--guide", "iaf", "--flow-layers", "1",
                 "--out", str(out)]) == 0  # fmt: skip
    metrics = json.loads((out / "metrics.json").read_text())
    assert "collapse" not in metrics
    assert "TransformedDistribution" in metrics["collapse_note"]
    assert "no posterior-collapse diagnostics" in capsys.readouterr().out


def _collapse(active, units):
    return {"collapse": {"active_units": active, "num_units": units,
                         "active_unit_threshold": 0.01, "kl_nats_total": 1.0 * units,
                         "kl_nats_per_dim": [1.0] * units, "kl_method": "analytic"}}  # fmt: skip


def test_the_warning_comes_only_when_most_units_are_inactive():
    assert not any("WARNING" in line for line in collapse_lines(_collapse(3, 5)))
    assert any("WARNING" in line for line in collapse_lines(_collapse(2, 5)))
    assert collapse_lines({}) == []
    lines = collapse_lines(_collapse(30, 40))
    assert "all 40 in metrics.json" in lines[1] and lines[1].count(",") < 25
