"""fit's settings as data: frozen dataclasses, each validated where it is built.

Every keyword option of :func:`~pyro_aevb.fit` belongs to exactly one group; the group
validates it once (in ``__post_init__``), owns the refusals that concern its own options,
says how it is written to the run's config (``run_config``, stored in every checkpoint
and compared on resume) and, where it has such options, which of them a resume may
change (``RESUME_MAY_CHANGE``). Where a setting is validated, by its name:

* :class:`ObjectiveSettings`, what is optimised: ``objective``, ``num_particles``,
  ``objective_options``, ``kl_annealing``;
* :class:`StepSettings`, how a step updates: ``optimizer``, ``lr``, ``lr_schedule``,
  ``clip_norm``, ``clip_value``, ``divergence_factor``, ``validate``;
* :class:`DataSettings`, what a step sees: ``transform``, ``batch_size``, ``seed``,
  ``arguments``, ``check_support``;
* :class:`LoopSettings`, how long and what is recorded: ``epochs``, ``schedule``,
  ``patience``, ``eval_every``, ``history_metrics``, ``progress``;
* :class:`~pyro_aevb.training.placement.PlacementSettings`, where: ``device``,
  ``sync_every``, ``cuda_graph`` and the data-parallel ``devices``, ``strategy``,
  ``num_nodes``, ``accelerator``, ``precision``, ``logger``;
* :class:`~pyro_aevb.training.checkpointing.RunDirSettings`, the run directory:
  ``run_dir``, ``resume``, ``overwrite``, ``run_metadata`` (a checkpoint every epoch).

:class:`~pyro_aevb.training.options.FitSettings` builds them all from fit's options. A
refusal that involves two groups (``cuda_graph`` with ``kl_annealing``) lives in the group
built last, :class:`~pyro_aevb.training.placement.PlacementSettings`, which is given the
others.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pyro.infer import ELBO

from ..annealing import KLAnnealing
from ..data.transforms import Identity, Transform, get_transform
from ..objectives import Capabilities, objective_name, resolve_objective, with_capability
from ..schedules import AlternatingSchedule, JointSchedule
from . import optim as optim_lib


def integer(value, name: str, minimum: int, allow_none: bool = False) -> int | None:
    """``value`` as an ``int`` (``None`` kept where allowed); refuses a bool, a float
    (2.7 particles would silently train K = 2) or a value below ``minimum``."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def positive(value, name: str, allow_none: bool = False) -> float | None:
    """``value`` as a finite positive ``float`` (``None`` kept where allowed)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _set(obj, **values) -> None:
    """Normalise fields of a frozen dataclass in its ``__post_init__``."""
    for name, value in values.items():
        object.__setattr__(obj, name, value)


@dataclass(frozen=True)
class ObjectiveSettings:
    """What is optimised.

    :param objective: a registered objective name (:mod:`pyro_aevb.objectives`) or a Pyro
        ``ELBO`` instance, used as it is (as ``pyro.infer.SVI(loss=...)`` does; its
        capabilities are inferred, :func:`~pyro_aevb.objectives.capabilities_of`).
    :param num_particles: samples per data point and step (an integer >= 1).
    :param objective_options: extra options of a named objective (e.g. ``alpha``).
    :param kl_annealing: a weight on the latent sites' terms (the KL) and its warm-up,
        :class:`~pyro_aevb.annealing.KLAnnealing`, for the objectives with the
        ``kl_weight`` capability. The training objective is then the weighted one; the
        test ELBO in the history stays the unweighted bound.
    """

    objective: str | ELBO = "elbo"
    num_particles: int = 1
    objective_options: dict | None = None
    kl_annealing: KLAnnealing | None = None
    #: the built objective and what it can do (derived)
    elbo: ELBO = field(init=False, repr=False, compare=False)
    capabilities: Capabilities = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        _set(self, num_particles=integer(self.num_particles, "num_particles", 1))
        elbo, capabilities = resolve_objective(
            self.objective, self.num_particles, self.objective_options
        )
        _set(self, elbo=elbo, capabilities=capabilities)
        if self.kl_annealing is not None and not capabilities.kl_weight:
            raise ValueError(
                f"a KL weight applies to the objectives {with_capability('kl_weight')}, not "
                f"'{self.name}': an importance-weighted bound mixes the likelihood and the "
                "latent terms inside a log-sum-exp, where no weight separates them"
            )

    @property
    def name(self) -> str:
        return objective_name(self.objective)

    def run_config(self) -> dict:
        annealing = self.kl_annealing
        return {
            "objective": self.name,
            # an ELBO instance brings its own particle count
            "num_particles": int(getattr(self.elbo, "num_particles", self.num_particles)),
            "objective_options": self.objective_options or {},
            "kl_annealing": annealing.describe() if annealing is not None else None,
        }


@dataclass(frozen=True)
class StepSettings:
    """How a step updates the parameters.

    :param optimizer: ``"adam"`` (default), ``"adamw"``, ``"sgd"``, a
        ``torch.optim.Optimizer`` class, or a factory ``f(param_groups, lr=...)``.
        Built-in classes run fused (or ``foreach``) where the device supports it.
    :param lr: the learning rate (a resume may lower it, unless an ``lr_schedule``
        holds the rate).
    :param lr_schedule: ``None``, ``"cosine"``, ``"exponential"`` or a factory
        ``f(optimizer) -> torch.optim.lr_scheduler.LRScheduler``, stepped every step.
    :param clip_norm: clip the gradient of all parameters together to this Euclidean
        norm; ``None``: no clipping.
    :param clip_value: clamp each gradient element to ``[-clip_value, clip_value]``, what
        Pyro's ``ClippedAdam(clip_norm=...)`` does (which also decays the learning rate,
        ``lrd``: use ``lr_schedule="exponential"`` for that). This library's loss is per
        data point, not a batch sum as in Pyro's examples: a clip copied from such an
        example acts about ``batch_size`` times differently (divide it by the batch size).
    :param divergence_factor: stop with :class:`~pyro_aevb.training.step.DivergenceError`
        when a step's loss exceeds this many times the smallest loss magnitude so far
        (at least 1 nat per data point); ``None`` disables the check.
    :param validate: keep Pyro's and torch's argument validation on for every step. By
        default the contract check and the first step run with it and later steps
        without it (it costs a check of every distribution's arguments).
    """

    optimizer: Any = "adam"
    lr: float = 1e-3
    lr_schedule: Any = None
    clip_norm: float | None = None
    clip_value: float | None = None
    divergence_factor: float | None = 1e3
    validate: bool = False
    #: a resume may lower the learning rate (the divergence guard's advice), but not where
    #: a schedule's restored state holds the rate
    RESUME_MAY_CHANGE: ClassVar[frozenset[str]] = frozenset({"lr"})

    def __post_init__(self):
        _set(
            self,
            lr=positive(self.lr, "lr"),
            clip_norm=positive(self.clip_norm, "clip_norm", allow_none=True),
            clip_value=positive(self.clip_value, "clip_value", allow_none=True),
            divergence_factor=positive(
                self.divergence_factor, "divergence_factor", allow_none=True
            ),
            validate=bool(self.validate),
        )

    @property
    def scheduled(self) -> bool:
        """Whether a learning-rate schedule spans the run."""
        return self.lr_schedule not in (None, "constant")

    def run_config(self) -> dict:
        return {
            "lr": self.lr,
            **optim_lib.describe(self.optimizer, self.lr_schedule),
            "clip_norm": self.clip_norm,
            # only where set: a checkpoint of an earlier release has no such key
            **({"clip_value": self.clip_value} if self.clip_value is not None else {}),
        }


@dataclass(frozen=True)
class DataSettings:
    """What a step sees.

    :param transform: applied to the data field (``x``, else the field the model
        observes); a name or a :class:`~pyro_aevb.data.transforms.Transform`. Stochastic
        transforms are redrawn every epoch, the test set is drawn once.
    :param batch_size: data points per step (at most the data set's size). The loss of a
        step is an unbiased estimate of the per-data-point negative ELBO: the data plate
        scales the batch by ``N / batch_size`` and the objective is divided by ``N``.
    :param seed: seeds Python, NumPy, PyTorch and the shuffling; CPU runs are reproducible.
    :param arguments: the pair's parameter name -> data field, for a pair whose arguments
        are named otherwise (``{"xs": "x", "ys": "y"}``); see :mod:`pyro_aevb.arguments`.
    :param check_support: ``False`` skips the check of observed values against the
        likelihood's support (with a warning).
    """

    transform: Transform | str | None = None
    batch_size: int = 100
    seed: int = 0
    arguments: Mapping[str, str] | None = None
    check_support: bool = True

    def __post_init__(self):
        transform = self.transform
        _set(
            self,
            seed=integer(self.seed, "seed", 0),
            batch_size=integer(self.batch_size, "batch_size", 1),
            transform=get_transform(transform) if transform is not None else Identity(),
        )

    def run_config(self, batch_size: int) -> dict:
        """``batch_size``: the one used, at most the data set's size."""
        return {"batch_size": batch_size, "seed": self.seed, "transform": repr(self.transform)}


@dataclass(frozen=True)
class LoopSettings:
    """How long the loop runs and what it records.

    :param epochs: total epochs (a resumed run counts the epochs already done); ``None``
        with a schedule of finitely many rounds: until the schedule ends.
    :param schedule: which parameters each step updates, e.g.
        :class:`~pyro_aevb.schedules.AlternatingSchedule` for variational EM; default: all
        of them, every step. Training ends when ``epochs`` or the schedule run out.
    :param patience: stop after this many epochs without a better test ELBO and restore
        the best parameters (needs a test set). A resume may change it.
    :param eval_every: write a history row (with the test ELBO, and the exact evidence of
        a model with a ``log_evidence`` method) every this many steps and where the
        schedule ends, instead of once per epoch.
    :param history_metrics: ``history_metrics(model, guide, test_fields) -> dict`` of
        extra test metrics for every history row (e.g. clustering accuracy).
    :param progress: a progress bar on a terminal, one line per epoch otherwise.
    """

    epochs: int | None = 10
    schedule: AlternatingSchedule | JointSchedule | None = None
    patience: int | None = None
    eval_every: int | None = None
    history_metrics: Callable[..., dict] | None = None
    progress: bool = True
    RESUME_MAY_CHANGE: ClassVar[frozenset[str]] = frozenset({"patience"})

    def __post_init__(self):
        schedule = self.schedule if self.schedule is not None else JointSchedule()
        _set(
            self,
            epochs=integer(self.epochs, "epochs", 0, allow_none=True),
            eval_every=integer(self.eval_every, "eval_every", 1, allow_none=True),
            patience=integer(self.patience, "patience", 1, allow_none=True),
            schedule=schedule,
        )
        if self.epochs is None and schedule.total_steps is None:
            raise ValueError("epochs=None needs a schedule with a fixed number of rounds")

    def check_test_set(self, has_test: bool) -> None:
        if self.patience is not None and not has_test:
            raise ValueError("early stopping (patience) needs test data")

    def plan(self, steps_per_epoch: int) -> tuple[int, int]:
        """``(epochs, total_steps)`` for epochs of ``steps_per_epoch`` steps."""
        total = self.schedule.total_steps
        epochs = self.epochs if self.epochs is not None else math.ceil(total / steps_per_epoch)
        steps = epochs * steps_per_epoch
        return epochs, min(steps, total) if total is not None else steps

    def run_config(self) -> dict:
        return {
            "patience": self.patience,
            "schedule": self.schedule.describe(),
            "eval_every": self.eval_every,
        }
