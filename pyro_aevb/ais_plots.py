"""The figures of ``pyro-aevb evaluate --method ais`` and ``pyro-aevb bdmc``
(:mod:`pyro_aevb.ais_runs`): log p(x) estimates (nats per data point) against the
likelihood evaluations each estimator spends per data point."""

from __future__ import annotations

from .plots import save


def figure_ais_vs_iwae(comparison, log_evidence, points, path) -> None:
    """IWAE for each K and AIS for each T on the same test points (ais_vs_iwae.png)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name, rows, label in (
        ("iwae", comparison["iwae"], lambda r: f"K={r['particles']}"),
        ("ais", comparison["ais"], lambda r: f"T={r['steps']}"),
    ):
        if not rows:
            continue
        xs = [r["evaluations"] for r in rows]
        ys = [r["log_likelihood"] for r in rows]
        ax.plot(xs, ys, "o-", label="IWAE" if name == "iwae" else "AIS")
        for r, x, y in zip(rows, xs, ys, strict=True):
            ax.annotate(label(r), (x, y), textcoords="offset points", xytext=(3, -10), fontsize=7)
    if log_evidence is not None:
        ax.axhline(float(log_evidence.mean()), color="k", ls="--", label="exact log p(x)")
    ax.set_xscale("log")
    ax.set_xlabel("likelihood evaluations per data point")
    ax.set_ylabel("mean log p(x) estimate (nats)")
    ax.set_title(f"IWAE vs AIS on the same {points} test points")
    ax.legend()
    save(fig, path)


def figure_bdmc(rows, iwae, log_evidence, points, path) -> None:
    """The forward and reverse AIS bounds for each T, and IWAE, on simulated data."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    xs = [r["evaluations"] for r in rows]
    ax.plot(xs, [r["lower"] for r in rows], "o-", label="forward AIS (lower)")
    ax.plot(xs, [r["upper"] for r in rows], "s-", label="reverse AIS (upper)")
    ax.fill_between(xs, [r["lower"] for r in rows], [r["upper"] for r in rows], alpha=0.15)
    for r, x in zip(rows, xs, strict=True):
        ax.annotate(
            f"T={r['steps']}",
            (x, r["upper"]),
            textcoords="offset points",
            xytext=(3, 4),
            fontsize=7,
        )
    if iwae:
        ax.plot(
            [r["evaluations"] for r in iwae],
            [r["log_likelihood"] for r in iwae],
            "^-",
            label="IWAE",
        )
    if log_evidence is not None:
        ax.axhline(float(log_evidence.mean()), color="k", ls="--", label="exact log p(x)")
    ax.set_xscale("log")
    ax.set_xlabel("likelihood evaluations per data point")
    ax.set_ylabel("mean log p(x) (nats)")
    ax.set_title(f"BDMC bracket on {points} points simulated from the model")
    ax.legend()
    save(fig, path)
