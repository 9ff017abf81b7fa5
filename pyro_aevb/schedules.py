r"""Which parameters a training step updates: the EM view of AEVB.

AEVB maximizes the ELBO :math:`\mathcal{L}(\theta, \phi)` jointly in the model's
parameters :math:`\theta` and the guide's :math:`\phi`. Coordinate ascent on the
same objective is variational EM (Neal & Hinton, 1998): updating only
:math:`\phi` (an approximate E-step) leaves the evidence :math:`\log p_\theta(x)`
unchanged and closes the gap :math:`\mathrm{KL}(q_\phi \,\|\, p_\theta(z \mid x))`;
updating only :math:`\theta` (an approximate M-step) raises the bound and, with it,
the evidence, while the gap may open again. The tutorial paper (Yang, section 5.2,
experiment 2) alternates 1000 steps of each for two rounds.

A schedule maps the global step number (0-based) to a phase: ``"joint"``,
``"guide"`` or ``"model"``, or ``None`` once it is over. :func:`pyro_aevb.fit`
takes one, and selects the parameters by the role :func:`~pyro_aevb.check_pair`
found for them: a parameter the model uses is a model parameter even if the guide
uses it too (a shared recurrent state, say), so that a guide phase never changes
the model and its evidence.
"""

from __future__ import annotations

from dataclasses import dataclass

#: the phases a schedule can return, and which roles' parameters each one updates
PHASES = {"joint": ("model", "guide"), "guide": ("guide",), "model": ("model",)}


@dataclass(frozen=True)
class AlternatingSchedule:
    """Alternate ``guide_steps`` guide-only steps with ``model_steps`` model-only steps.

    :param guide_steps: steps per approximate E-step period (guide parameters only).
    :param model_steps: steps per approximate M-step period (model parameters only).
    :param rounds: number of (E, M) rounds; ``None`` alternates until ``fit``'s
        epochs run out. With a number, training ends after ``rounds`` rounds.
    :param first: ``"guide"`` (E-step first, the default) or ``"model"``.
    """

    guide_steps: int
    model_steps: int
    rounds: int | None = None
    first: str = "guide"

    def __post_init__(self):
        if self.guide_steps < 1 or self.model_steps < 1:
            raise ValueError(
                f"guide_steps and model_steps must be at least 1, got "
                f"{self.guide_steps} and {self.model_steps}"
            )
        if self.rounds is not None and self.rounds < 1:
            raise ValueError(f"rounds must be at least 1 (or None), got {self.rounds}")
        if self.first not in ("guide", "model"):
            raise ValueError(f"first must be 'guide' or 'model', got '{self.first}'")

    @property
    def total_steps(self) -> int | None:
        """Steps until the schedule ends, or ``None`` if it alternates forever."""
        if self.rounds is None:
            return None
        return self.rounds * (self.guide_steps + self.model_steps)

    def phase(self, step: int) -> str | None:
        """The phase of 0-based global step ``step``; ``None`` after the last round."""
        if self.total_steps is not None and step >= self.total_steps:
            return None
        periods = [("guide", self.guide_steps), ("model", self.model_steps)]
        if self.first == "model":
            periods.reverse()
        offset = step % (self.guide_steps + self.model_steps)
        return periods[0][0] if offset < periods[0][1] else periods[1][0]

    def describe(self) -> dict:
        """JSON-able settings, stored in checkpoints so a resume can check them."""
        return {
            "kind": "alternating",
            "guide_steps": self.guide_steps,
            "model_steps": self.model_steps,
            "rounds": self.rounds,
            "first": self.first,
        }


@dataclass(frozen=True)
class JointSchedule:
    """Plain AEVB: every step updates model and guide together (the default)."""

    total_steps = None

    def phase(self, step: int) -> str:
        return "joint"

    def describe(self) -> dict:
        return {"kind": "joint"}
