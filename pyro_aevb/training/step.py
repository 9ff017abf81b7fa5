r"""One SVI step, built once and called every step: the public step builder.

:class:`TrainingStep` is the one place that turns a model/guide pair and an objective
into an update. Built once per run it

* binds the pair (:func:`bind_pair`): each callable receives the batch fields it names,
  the whole objective is scaled by :math:`1/N` (so the loss is the negative ELBO in nats
  per data point, while the data plate scales a minibatch by :math:`N/B`), and the
  latent sites carry the KL weight of :mod:`pyro_aevb.annealing`;
* hands Pyro's ELBOs the plate count that :func:`~pyro_aevb.check_pair` measured
  (one more for the plate of vectorized particles, Pyro's convention);
* collects the Pyro parameters of the pair once, by role, into the parameter groups
  of one torch optimizer (:mod:`pyro_aevb.training.optim`).

Each call then computes ``objective.differentiable_loss(model, guide, **batch)``,
back-propagates, reduces all gradients to one norm (a single ``foreach`` kernel, used
both by the non-finite guard and by clipping), refuses a non-finite loss or gradient
*before* the update, clips, and updates. It replaces ``pyro.infer.SVI.step``, whose
parameter-capture trace and per-parameter ``pyro.optim`` optimizers cost more than the
model's own arithmetic on small networks.
"""

from __future__ import annotations

import math
import traceback
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pyro
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.poutine.messenger import Messenger

from ..annealing import LatentScale
from ..contract import PairSummary, call_arguments
from ..plate import DATA_PLATE, full_data_size, scale_to_data_set
from ..schedules import PHASES, AlternatingSchedule
from . import optim as optim_lib


class NonFiniteLossError(FloatingPointError):
    """The loss or a gradient became NaN or infinite; training stopped before the update."""


class DivergenceError(NonFiniteLossError):
    """The loss grew by orders of magnitude over the best seen: the run diverged.

    Raised like :class:`NonFiniteLossError`, before the update, with the last good
    checkpoint intact; a finite but absurd loss would otherwise train on and report
    meaningless numbers.
    """


ADVICE = (
    "training stopped before this update. The parameters are those after the last good "
    "step and the last checkpoint is intact. Lower the learning rate, check the data, or "
    "bound the scales the guide and model produce."
)


def frozen_parameters(schedule, summary: PairSummary) -> dict[str, frozenset[str]]:
    """For each phase, the names of the parameters its steps must leave unchanged."""
    roles = {"model": set(summary.model_params), "guide": set(summary.guide_params)}
    if isinstance(schedule, AlternatingSchedule):
        for role, names in roles.items():
            if not names:
                raise ValueError(
                    f"an alternating (EM) schedule needs {role} parameters, but the {role} "
                    "registers none with Pyro (pyro.module / pyro.param)"
                )
    return {
        phase: frozenset(n for role, names in roles.items() if role not in updated for n in names)
        for phase, updated in PHASES.items()
    }


@dataclass
class BoundPair:
    """A model and a guide called as the objective calls them during training."""

    model: Callable
    guide: Callable
    #: the KL weight on the latent sites (set before each step)
    latent_scale: LatentScale


def _selecting(fn: Callable, names: list[str]) -> Callable:
    """Call ``fn`` with only the batch fields it takes (the objective passes all of them)."""
    return lambda **batch: fn(**{k: batch[k] for k in names})


def bind_pair(
    model: Callable,
    guide: Callable,
    batch: Mapping[str, torch.Tensor],
    num_data: int,
    data_plate: str = DATA_PLATE,
) -> BoundPair:
    """Bind a pair for training on batches like ``batch`` from ``num_data`` points.

    The data plate scales a batch to the full data set (so global and local terms keep
    their relative weight); dividing the whole objective by ``N`` then makes the loss
    the per-data-point negative ELBO, the scale of plain PyTorch's batch-mean loss at
    which learning rates and Adam's ``eps`` are usually chosen. The pair's own plate
    ``data_plate`` (any name; sized, sizeless or subsampled) gets exactly ``N / B``
    (:class:`~pyro_aevb.plate.DataPlateScale`), the library's ``data_plate`` keeps its
    numbers bit for bit.
    """
    per_point = 1.0 / num_data
    latent_scale = LatentScale(1.0)
    model_fn = scale_to_data_set(
        _selecting(model, list(call_arguments(model, batch, "model"))), data_plate, num_data
    )
    guide_fn = scale_to_data_set(
        _selecting(guide, list(call_arguments(guide, batch, "guide"))), data_plate, num_data
    )
    return BoundPair(
        latent_scale(poutine.scale(model_fn, per_point)),
        latent_scale(poutine.scale(guide_fn, per_point)),
        latent_scale,
    )


class KnownParameters(Messenger):
    """Answer ``pyro.param`` (and so ``pyro.module``) for parameters the step collected.

    Every step, ``pyro.module(name, net)`` in a model sends one ``param`` message per
    parameter down Pyro's handler stack to the param store; on a small network that
    costs as much as a tenth of the step. The step holds these parameters already, so
    this handler answers the message with the store's own tensor and stops it there.
    Only unconstrained parameters (``constraints.real``, where the store's tensor *is*
    the value) outside every plate are answered; others (a local parameter that a
    subsampling plate slices, a constrained one, one created later) take Pyro's path.
    The objectives never read the param sites of the traces they build.
    """

    def __init__(self, params: Mapping[str, torch.Tensor]):
        super().__init__()
        self.params = dict(params)

    def _process_message(self, msg):
        if msg["type"] == "param" and not msg["cond_indep_stack"]:
            value = self.params.get(msg["name"])
            if value is not None:
                msg["value"], msg["done"], msg["stop"] = value, True, True


def _where_invalid(error: BaseException, model, guide) -> str:
    """``" in the guide (GuideClass.forward, file.py:42)"`` from a traceback: the deepest
    frame outside torch and Pyro, and which of the pair it belongs to."""
    frames = traceback.extract_tb(error.__traceback__)
    tb, owners = error.__traceback__, []
    while tb is not None:
        owners.append(tb.tb_frame.f_locals.get("self"))
        tb = tb.tb_next
    library = ("/torch/", "/pyro/", "/pyro_aevb/training/", "/pyro_aevb/importance_weighted")
    for frame, owner in zip(reversed(frames), reversed(owners), strict=True):
        if any(part in frame.filename for part in library):
            continue
        role = "guide" if owner is guide else "model" if owner is model else None
        where = f"{frame.name}, {frame.filename}:{frame.lineno}"
        return f" in the {role} ({type(owner).__name__}.{where})" if role else f" ({where})"
    return ""


class TrainingStep:
    """One training step of ``objective`` on a model/guide pair, built once.

    :param model, guide: the pair (as given to :func:`~pyro_aevb.fit`).
    :param objective: a Pyro ``ELBO`` (e.g. from :func:`~pyro_aevb.make_objective`).
    :param summary: what :func:`~pyro_aevb.check_pair` found on the first batch (its
        parameter names by role and its plate count).
    :param batch: a batch like the ones the step will see (for argument binding).
    :param num_data: ``N``, the number of training points the batches come from.
    :param optimizer: a name of :data:`~pyro_aevb.training.optim.OPTIMIZERS`, a torch
        optimizer class or a factory ``f(param_groups, lr=...)``.
    :param lr: the learning rate.
    :param clip_norm: clip the gradient of all parameters together to this Euclidean
        norm (``None``: no clipping).
    :param clip_value: clamp each gradient element to ``[-clip_value, clip_value]``
        (after ``clip_norm``; ``None``: no clamping), as Pyro's ``ClippedAdam`` does.
    :param schedule: the EM schedule whose phases freeze parameters (or ``None``).
    :param lr_schedule: see :func:`~pyro_aevb.training.optim.make_lr_scheduler`.
    :param total_steps: the run's number of steps (for the schedules that need it).
    :param divergence_factor: stop with :class:`DivergenceError` when a step's loss
        exceeds this many times the smallest loss magnitude seen (at least 1 nat);
        ``None`` turns the check off.

    Calling it with a batch and a phase returns the loss (nats per data point, a float)
    after updating the parameters that the phase trains.
    """

    def __init__(
        self,
        model: Callable,
        guide: Callable,
        objective,
        summary: PairSummary,
        batch: Mapping[str, torch.Tensor],
        num_data: int,
        *,
        optimizer="adam",
        lr: float = 1e-3,
        clip_norm: float | None = None,
        clip_value: float | None = None,
        schedule=None,
        lr_schedule=None,
        total_steps: int = 1,
        divergence_factor: float | None = 1e3,
    ):
        self.model, self.guide, self.objective = model, guide, objective
        self.num_data = int(num_data)
        self.pair = bind_pair(model, guide, batch, num_data, summary.data_plate)
        self.clip_norm, self.clip_value = clip_norm, clip_value
        self.divergence_factor = divergence_factor
        #: smallest absolute loss seen so far, the reference of the divergence check
        self.reference_loss: float | None = None
        if getattr(objective, "max_plate_nesting", None) == float("inf"):
            # The contract check has counted the plates: Pyro's ELBOs need not guess (as
            # they do for a finite value given at construction, one more for the plate of
            # vectorized particles).
            vectorized = getattr(objective, "vectorize_particles", False)
            objective.max_plate_nesting = summary.max_plate_nesting + int(vectorized)
        self._differentiable = callable(getattr(objective, "differentiable_loss", None))

        store = pyro.get_param_store()
        params = dict(store.named_parameters())
        self._store_size = len(params)
        self.roles = {
            "model": [params[n] for n in summary.model_params if n in params],
            "guide": [params[n] for n in summary.guide_params if n in params],
        }
        self.names = {p: n for n, p in params.items()}
        unconstrained = {
            n: p for n, p in params.items() if store._constraints.get(n) is constraints.real
        }
        known = KnownParameters(unconstrained)
        self.pair.model, self.pair.guide = known(self.pair.model), known(self.pair.guide)
        frozen_names = frozen_parameters(schedule, summary)
        self.frozen = {
            phase: [params[n] for n in names if n in params]
            for phase, names in frozen_names.items()
        }
        groups = [{"params": ps, "role": r} for r, ps in self.roles.items() if ps]
        self.parameters = [p for g in groups for p in g["params"]]
        if not self.parameters:
            raise ValueError(
                "the model/guide pair registers no parameters with Pyro, so training would "
                "change nothing; register them with pyro.module(name, module) or pyro.param"
            )
        self.optimizer = optim_lib.make_optimizer(optimizer, groups, lr)
        self.lr_scheduler = optim_lib.make_lr_scheduler(lr_schedule, self.optimizer, total_steps)

    # -- the loss ---------------------------------------------------------------------

    def differentiable_loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The objective's loss on ``batch`` (nats per data point) as a tensor whose
        gradient is the objective's gradient estimate; nothing is updated."""
        with full_data_size(self.num_data):
            return self.objective.differentiable_loss(self.pair.model, self.pair.guide, **batch)

    def _loss_and_backward(self, batch) -> torch.Tensor:
        if self._differentiable:
            loss = self.differentiable_loss(batch)
            if loss.requires_grad:
                loss.backward()
            return loss.detach()
        # An objective without differentiable_loss (a user's, or TraceGraph_ELBO)
        # back-propagates itself.
        with full_data_size(self.num_data):
            value = self.objective.loss_and_grads(self.pair.model, self.pair.guide, **batch)
        return torch.as_tensor(float(value))

    # -- the step ---------------------------------------------------------------------

    def __call__(
        self, batch: Mapping[str, torch.Tensor], phase: str = "joint", where: str = ""
    ) -> float:
        """Update the parameters that ``phase`` trains by one step on ``batch``.

        :param where: names the step in error messages (``"at epoch 2, step 3"``).
        :raises NonFiniteLossError: for a NaN or infinite loss or gradient, or invalid
            distribution parameters under validation; :class:`DivergenceError` for an
            exploding loss. Nothing is updated then.
        """
        try:
            loss = self._loss_and_backward(batch)
        except ValueError as e:
            # PyTorch's argument validation: a distribution parameter became NaN,
            # infinite or left its constraint inside the forward pass.
            if "found invalid values" not in str(e):
                raise
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLossError(
                f"invalid distribution parameters (NaN, infinite or outside their constraint)"
                f"{_where_invalid(e, self.model, self.guide)} {where}; {ADVICE}\n"
                f"{str(e).splitlines()[0]}"
            ) from e
        self._collect_new_parameters()
        with_grad = [p for p in self.parameters if p.grad is not None]
        grads = [p.grad for p in with_grad]
        # One foreach reduction of all gradients: NaN and inf propagate into the norm,
        # which clipping needs anyway.
        norm = torch.nn.utils.get_total_norm(grads, foreach=True) if grads else loss.new_zeros(())
        value, norm_value = torch.stack([loss.to(norm), norm]).tolist()  # one host sync
        if not (math.isfinite(value) and math.isfinite(norm_value)):
            self.optimizer.zero_grad(set_to_none=True)
            what = f"loss {value}" if not math.isfinite(value) else "a non-finite gradient"
            raise NonFiniteLossError(f"{what} {where}; {ADVICE}")
        self._check_divergence(value, where)
        if self.clip_norm is not None and grads:
            torch.nn.utils.clip_grads_with_norm_(with_grad, self.clip_norm, norm, foreach=True)
        if self.clip_value is not None and grads:
            torch.nn.utils.clip_grad_value_(with_grad, self.clip_value, foreach=True)
        for p in self.frozen[phase]:
            p.grad = None  # an optimizer skips parameters without a gradient
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        return value

    def _check_divergence(self, value: float, where: str) -> None:
        size = abs(value)
        if self.divergence_factor is not None and self.reference_loss is not None:
            limit = self.divergence_factor * max(1.0, self.reference_loss)
            if size > limit:
                self.optimizer.zero_grad(set_to_none=True)
                raise DivergenceError(
                    f"the loss diverged {where}: {value:.4g} nats per data point against "
                    f"{self.reference_loss:.4g} at best so far (more than "
                    f"{self.divergence_factor:g} times); {ADVICE} (fit(divergence_factor="
                    "None) turns this check off.)"
                )
        self.reference_loss = (
            size if self.reference_loss is None else min(self.reference_loss, size)
        )

    def _collect_new_parameters(self) -> None:
        """Parameters a pair creates after the first batch (a lazily built module) join
        the optimizer, counted as the guide's (an EM model phase leaves them alone)."""
        store = pyro.get_param_store()
        if len(store) == self._store_size:
            return
        new = [(n, p) for n, p in store.named_parameters() if p not in self.names]
        self._store_size = len(store)
        if not new:
            return
        for name, p in new:
            self.names[p] = name
            self.parameters.append(p)
            self.frozen["model"].append(p)
        self.optimizer.add_param_group({"params": [p for _, p in new], "role": "guide"})
        warnings.warn(
            f"parameters {[n for n, _ in new]} were created after the first batch; they "
            "joined the optimizer as guide parameters",
            stacklevel=3,
        )

    # -- state ------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The optimizer's and schedule's states, keyed by parameter name (so that a
        checkpoint does not depend on the order in which parameters were found)."""
        return {
            "format": STATE_FORMAT,
            "names": [self.names[p] for p in self.parameters],
            "optimizer": self.optimizer.state_dict(),
            "lr_scheduler": None if self.lr_scheduler is None else self.lr_scheduler.state_dict(),
            "reference_loss": self.reference_loss,
        }

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(
                "the checkpoint's optimizer state is of an older format (pyro.optim "
                "per-parameter optimizers) than this version's torch optimizer; it cannot be "
                "resumed exactly: start the run afresh (overwrite) or resume it with the "
                "pyro-aevb version that wrote it"
            )
        names = [self.names[p] for p in self.parameters]
        if state["names"] != names:
            raise ValueError(
                "the checkpoint's optimizer holds other parameters than this pair: "
                f"{sorted(set(state['names']) ^ set(names))[:5]} differ; resume with the "
                "same model and guide that wrote it"
            )
        self.optimizer.load_state_dict(state["optimizer"])
        if (state["lr_scheduler"] is None) != (self.lr_scheduler is None):
            raise ValueError("the checkpoint was written with another lr_schedule")
        if self.lr_scheduler is not None:
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        self.reference_loss = state["reference_loss"]


#: version of :meth:`TrainingStep.state_dict`'s layout (1 was pyro.optim's get_state)
STATE_FORMAT = 2
