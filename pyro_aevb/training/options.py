"""fit's keyword options gathered into its settings groups, and fit's signature.

:class:`FitSettings` builds every group of :mod:`~pyro_aevb.training.settings` (and the
placement and run-directory groups) from fit's keyword options, each validated once,
refuses an option no group has (naming the closest one), assembles the run's config from
the groups' parts, and gives :func:`~pyro_aevb.fit` its keyword signature.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import MISSING, dataclass, fields

from .checkpointing import RunDirSettings
from .placement import PlacementSettings
from .settings import DataSettings, LoopSettings, ObjectiveSettings, StepSettings

#: group name -> settings class, in the order they are built
GROUPS = {
    "data": DataSettings,
    "objective": ObjectiveSettings,
    "loop": LoopSettings,
    "step": StepSettings,
    "run_dir": RunDirSettings,
    "placement": PlacementSettings,
}
#: fields of PlacementSettings that fit fills in from the other groups, not options
_GIVEN = {"run_dir", "objective", "step"}


def options_of(cls) -> list:
    """The dataclass fields of ``cls`` that are fit options."""
    given = _GIVEN if cls is PlacementSettings else set()
    return [f for f in fields(cls) if f.init and f.name not in given]


#: option name -> the group that owns it
OPTION_GROUP = {f.name: group for group, cls in GROUPS.items() for f in options_of(cls)}


@dataclass(frozen=True)
class FitSettings:
    """Every setting of a fit, by group (:mod:`~pyro_aevb.training.settings`)."""

    data: DataSettings
    objective: ObjectiveSettings
    loop: LoopSettings
    step: StepSettings
    run_dir: RunDirSettings
    placement: PlacementSettings

    @classmethod
    def from_options(cls, options: dict) -> FitSettings:
        """The groups built from fit's keyword ``options``; raises ``TypeError`` for an
        option fit does not have and ``ValueError`` for a bad value."""
        for name in options:
            if name not in OPTION_GROUP:
                close = difflib.get_close_matches(name, list(OPTION_GROUP), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise TypeError(f"fit() got an unexpected keyword argument {name!r}{hint}")
        by_group = {group: {} for group in GROUPS}
        for name, value in options.items():
            by_group[OPTION_GROUP[name]][name] = value
        built = {}
        for group, settings_class in GROUPS.items():
            extra = {}
            if settings_class is PlacementSettings:
                extra = {"run_dir": built["run_dir"].run_dir, "objective": built["objective"],
                         "step": built["step"]}  # fmt: skip
            built[group] = settings_class(**by_group[group], **extra)
        return cls(**built)

    def run_config(self, *, batch_size: int, num_train: int, total_steps: int) -> dict:
        """The settings that define the run, stored in every checkpoint and compared on
        resume (:func:`~pyro_aevb.training.state.check_resumable`)."""
        objective = self.objective.run_config()
        config = {
            **{k: objective[k] for k in ("objective", "num_particles", "objective_options")},
            **self.step.run_config(),
            **self.data.run_config(batch_size),
            "num_train": num_train,
            **self.loop.run_config(),
            "kl_annealing": objective["kl_annealing"],
        }
        if self.step.scheduled:
            # the schedule spans the run: a resume with other epochs would bend it
            config["total_steps"] = total_steps
        return config


def signature(positional: inspect.Signature) -> inspect.Signature:
    """``positional``'s parameters then every option, keyword-only with its default."""
    params = [p for p in positional.parameters.values() if p.kind != p.VAR_KEYWORD]
    for cls in GROUPS.values():
        for f in options_of(cls):
            default = f.default if f.default is not MISSING else inspect.Parameter.empty
            kind = inspect.Parameter.KEYWORD_ONLY
            params.append(inspect.Parameter(f.name, kind, default=default))
    return positional.replace(parameters=params)
