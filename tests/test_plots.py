"""The learning curve shows the test log-likelihood where it was computed (issue 21 #12)."""

import matplotlib

matplotlib.use("Agg")

from pyro_aevb import plots  # noqa: E402

HISTORY = [{"epoch": e, "train_elbo": -100.0 + e, "test_elbo": -101.0 + e} for e in (1, 2, 3)]


def _lines(fig) -> dict:
    ax = fig.axes[0]
    return {line.get_label(): line for line in ax.get_lines()}


def test_the_evaluations_log_likelihood_is_a_point_with_its_error_bar_at_the_last_row():
    final = {"test_log_likelihood": -95.5, "test_log_likelihood_se": 0.25,
             "log_likelihood_particles": 1000}  # fmt: skip
    fig = plots.learning_curve(HISTORY, final=final)
    ax = fig.axes[0]
    (container,) = ax.containers
    x, y = container.lines[0].get_data()
    assert list(x) == [3] and list(y) == [-95.5]
    (bar,) = container.lines[2]
    lo, hi = bar.get_segments()[0][:, 1]
    assert (lo, hi) == (-96.0, -95.0)  # two standard errors either side
    assert "test log-likelihood (IS, K = 1000)" in [t.get_text() for t in ax.get_legend().texts]


def test_exact_evidence_rows_are_drawn_as_a_curve_and_no_point_without_an_evaluation():
    rows = [dict(r, test_log_evidence=r["test_elbo"] + 2) for r in HISTORY]
    fig = plots.learning_curve(rows)
    lines = _lines(fig)
    assert list(lines["test log-likelihood (exact)"].get_ydata()) == [-98.0, -97.0, -96.0]
    assert not fig.axes[0].containers
