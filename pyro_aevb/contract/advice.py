"""Advice a checked pair earns: what the objective makes of its guide."""

from __future__ import annotations

from .errors import PairSummary


def objective_advice(summary: PairSummary, objective: str) -> str | None:
    """A sentence naming the objective to use for a guide with sites marked for parallel
    enumeration under an objective that samples them instead, or ``None``."""
    if summary.enumerated_guide_sites and objective != "enum":
        return (
            f"the guide marks site(s) {summary.enumerated_guide_sites} for enumeration, "
            f"which objective '{objective}' ignores (it samples them, with a "
            "score-function gradient); use objective='enum' to sum them out exactly"
        )
    return None
