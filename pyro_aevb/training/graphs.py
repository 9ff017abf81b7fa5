r"""Training steps without a host synchronisation, and their capture as CUDA graphs.

:class:`~pyro_aevb.training.step.TrainingStep` reads the loss and the gradient norm back
to the host every step (one synchronisation) to refuse a non-finite or diverging update
before it happens. On a GPU that read stalls the queue of kernels every step, and a
CUDA graph cannot contain it at all. This module moves the guard onto the device:

* :class:`DeviceGuardedStep` runs the same update, but the guard is a handful of
  device-side tensor operations: a step whose loss or gradient norm is not finite, or
  whose loss exceeds ``divergence_factor`` times the smallest magnitude seen, sets a
  *sticky* ``halted`` flag, and the fused optimizer skips every update from then on
  (its ``found_inf`` argument, the mechanism ``torch.amp.GradScaler`` uses). The
  per-step losses go to a device buffer. :meth:`DeviceGuardedStep.read` fetches the
  buffer and the flag in one synchronisation (``fit`` reads every ``read_every`` steps
  and before every history row and checkpoint) and raises the same
  :class:`~pyro_aevb.training.step.NonFiniteLossError` the eager step raises, naming the
  first refused step; the parameters are those after the last good step, as in eager
  mode, and no checkpoint was written in between.
* :class:`CUDAGraphStep` captures that step (forward, backward, guard, optimizer update)
  once per phase and batch shape as a ``torch.cuda.CUDAGraph`` and replays it, so that
  Pyro's Python-level tracing runs only at capture. The default CUDA generator is
  registered with every capture, so each replay draws fresh noise. A capture that fails,
  or a pair whose trace differs between the warm-up steps, falls back to eager steps with
  one warning.

Pyro's ELBOs read values back inside ``differentiable_loss`` (``torch_item`` to split the
surrogate from the loss, ``warn_if_nan``). :func:`without_host_reads` replaces those reads,
while a step is captured, by device-side equivalents with the same value and gradient
(``x.detach()`` for ``torch_item(x)``).

The graph path runs only on CUDA and has not yet been verified on a GPU in this project:
``fit(cuda_graph=True)`` is opt-in. :class:`DeviceGuardedStep` itself runs on any device
and is tested on the CPU.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Mapping
from unittest import mock

import torch
from pyro.poutine.messenger import Messenger

from .step import ADVICE, DivergenceError, NonFiniteLossError, TrainingStep

#: what the guard's ``kind`` code means
_KINDS = {1: "loss", 2: "gradient", 3: "divergence"}


def _detach(value):
    return value.detach() if isinstance(value, torch.Tensor) else value


def _unchanged(value, *args, **kwargs):
    return value


@contextlib.contextmanager
def without_host_reads():
    """Replace the host reads in Pyro's ELBOs by device-side equivalents.

    ``torch_item(x)`` becomes ``x.detach()`` (Pyro subtracts it from the surrogate loss,
    so the loss keeps its value and its gradient) and ``warn_if_nan`` does nothing (the
    device guard checks the loss instead).
    """
    import pyro.infer.renyi_elbo
    import pyro.infer.trace_elbo
    import pyro.infer.trace_mean_field_elbo
    import pyro.infer.traceenum_elbo

    from ..importance_weighted import base as importance_weighted

    targets = [
        (pyro.infer.trace_elbo, "torch_item", _detach),
        (pyro.infer.trace_mean_field_elbo, "torch_item", _detach),
    ]
    for module in (
        pyro.infer.trace_elbo,
        pyro.infer.trace_mean_field_elbo,
        pyro.infer.traceenum_elbo,
        pyro.infer.renyi_elbo,
        importance_weighted,
    ):
        if hasattr(module, "warn_if_nan"):
            targets.append((module, "warn_if_nan", _unchanged))
    with contextlib.ExitStack() as stack:
        for module, name, replacement in targets:
            if hasattr(module, name):
                stack.enter_context(mock.patch.object(module, name, replacement))
        yield


class DeviceGuardedStep:
    """``step``'s update with its guard on the device: no host synchronisation.

    :param step: the :class:`~pyro_aevb.training.step.TrainingStep` to run; its
        optimizer must be fused (the built-in ``adam``, ``adamw`` and ``sgd`` are, on
        CPU and CUDA), since only the fused kernels can skip an update on a device flag.
    :param read_every: the capacity of the loss buffer: :meth:`read` must be called at
        least this often.

    Calling it queues one step and returns nothing; :meth:`read` returns the losses
    (nats per data point) of the steps since the previous read.
    """

    def __init__(self, step: TrainingStep, read_every: int = 50):
        if not step._differentiable:
            raise ValueError(
                f"{type(step.objective).__name__} has no differentiable_loss, so its step "
                "reads the loss back itself: use sync_every=1 and cuda_graph=False"
            )
        if not all(g.get("fused") for g in step.optimizer.param_groups):
            raise ValueError(
                "a step without host synchronisation needs a fused optimizer (the built-in "
                "'adam', 'adamw' and 'sgd'); a custom optimizer cannot skip an update on a "
                "device-side flag"
            )
        self.step = step
        self.read_every = int(read_every)
        device = step.parameters[0].device
        self.device = device
        reference = step.reference_loss
        #: 1.0 once a step was refused: the fused optimizer skips every later update
        self.halted = torch.zeros((), device=device)
        self.reference = torch.tensor(math.inf if reference is None else reference, device=device)
        self.first_refused = torch.full((), -1, dtype=torch.long, device=device)
        self.refused_kind = torch.zeros((), dtype=torch.long, device=device)
        self.refused_loss = torch.zeros((), device=device)
        self.losses = torch.zeros(self.read_every, device=device)
        self.count = torch.zeros((), dtype=torch.long, device=device)
        self._reference_seen = reference
        self.queued = 0
        #: where each queued step is (for the error message)
        self.places: list[str] = []

    def sync_reference(self) -> None:
        """Take over a reference loss the eager step set (a host-to-device write, no
        read), so that both kinds of steps guard against the same divergence."""
        value = self.step.reference_loss
        if value is not None and value != self._reference_seen:
            self.reference.fill_(value)
            self._reference_seen = value

    def body(self, batch: Mapping[str, torch.Tensor], phase: str) -> None:
        """The step's device work: what a CUDA graph captures."""
        step = self.step
        with without_host_reads():
            loss = step.differentiable_loss(batch)
        if loss.requires_grad:
            loss.backward()
        step._collect_new_parameters()
        with_grad = [p for p in step.parameters if p.grad is not None]
        grads = [p.grad for p in with_grad]
        loss = loss.detach().reshape(()).to(self.losses.dtype)
        norm = torch.nn.utils.get_total_norm(grads, foreach=True) if grads else loss.new_zeros(())
        size = loss.abs()
        factor = step.divergence_factor
        diverged = (
            size > factor * torch.clamp(self.reference, min=1.0)
            if factor is not None
            else torch.zeros((), dtype=torch.bool, device=self.device)
        )
        bad_loss, bad_grad = ~torch.isfinite(loss), ~torch.isfinite(norm.to(loss.dtype))
        refused = bad_loss | bad_grad | diverged
        first = refused & (self.halted == 0)
        kind = torch.where(bad_loss, 1, torch.where(bad_grad, 2, 3)).to(self.refused_kind.dtype)
        self.refused_kind.copy_(torch.where(first, kind, self.refused_kind))
        self.first_refused.copy_(torch.where(first, self.count, self.first_refused))
        self.refused_loss.copy_(torch.where(first, loss, self.refused_loss))
        self.halted.copy_(torch.maximum(self.halted, refused.to(self.halted.dtype)))
        good = self.halted == 0
        self.reference.copy_(torch.where(good, torch.minimum(self.reference, size), self.reference))
        self.losses.index_copy_(0, self.count.reshape(1), loss.reshape(1))
        self.count.add_(1)
        if step.clip_norm is not None and grads:
            # with a non-finite norm the clipped gradients are garbage, but the update is
            # skipped on the halted flag
            torch.nn.utils.clip_grads_with_norm_(with_grad, step.clip_norm, norm, foreach=True)
        if step.clip_value is not None and grads:
            torch.nn.utils.clip_grad_value_(with_grad, step.clip_value, foreach=True)
        for p in step.frozen[phase]:
            p.grad = None
        step.optimizer.found_inf = self.halted
        try:
            step.optimizer.step()
        finally:
            del step.optimizer.found_inf

    def __call__(self, batch: Mapping[str, torch.Tensor], phase: str = "joint", where: str = ""):
        if self.queued >= self.read_every:
            raise RuntimeError("read() the queued losses before more steps")
        self.sync_reference()
        self.body(batch, phase)
        self.step.optimizer.zero_grad(set_to_none=True)
        if self.step.lr_scheduler is not None:
            self.step.lr_scheduler.step()
        self.queued += 1
        self.places.append(where)

    def read(self) -> list[float]:
        """The losses of the queued steps (one synchronisation); resets the queue.

        :raises NonFiniteLossError: (or :class:`DivergenceError`) when a queued step was
            refused, naming it; no update was made from that step on.
        """
        if self.queued == 0:
            return []
        header = torch.stack(
            [
                self.halted,
                self.first_refused.to(self.losses.dtype),
                self.refused_kind.to(self.losses.dtype),
                self.refused_loss,
                self.reference,
            ]
        )
        values = torch.cat([header, self.losses[: self.queued]]).tolist()
        halted, first, kind, refused_loss, reference = values[:5]
        losses = values[5:]
        places = self.places
        self.count.zero_()
        self.queued, self.places = 0, []
        if math.isfinite(reference):
            self.step.reference_loss = self._reference_seen = reference
        if halted:
            where = places[int(first)]
            what = _KINDS[int(kind)]
            if what == "divergence":
                raise DivergenceError(
                    f"the loss diverged {where}: {refused_loss:.4g} nats per data point "
                    f"against {reference:.4g} at best so far (more than "
                    f"{self.step.divergence_factor:g} times); {ADVICE}"
                )
            text = f"loss {refused_loss}" if what == "loss" else "a non-finite gradient"
            raise NonFiniteLossError(f"{text} {where}; {ADVICE}")
        return losses


class _SiteRecorder(Messenger):
    """Records ``(name, type, shape)`` of every site a call of the pair reaches."""

    def __init__(self):
        super().__init__()
        self.sites: list[tuple] = []

    def _postprocess_message(self, msg):
        value = msg.get("value")
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else None
        self.sites.append((msg["name"], msg["type"], shape))


class CUDAGraphStep:
    """:class:`DeviceGuardedStep` captured as one CUDA graph per phase and batch shape.

    :param guarded: the device-guarded step (its parameters on a CUDA device).
    :param warmup: eager steps of each new phase and batch shape before its capture
        (they train like any step; CUDA needs them to settle its allocator and the
        optimizer's state); their traces must agree, or the pair runs eagerly.

    The last, shorter batch of an epoch gets a graph of its own.
    """

    def __init__(self, guarded: DeviceGuardedStep, warmup: int = 3):
        if guarded.device.type != "cuda":
            raise ValueError("CUDA graphs need the pair's parameters on a CUDA device")
        if guarded.step.lr_scheduler is not None:
            raise ValueError(
                "cuda_graph=True with an lr_schedule is not supported: the graph would replay "
                "the learning rate of its capture; use cuda_graph=False"
            )
        self.guarded = guarded
        self.warmup = max(1, int(warmup))
        self.graphs: dict[tuple, tuple[torch.cuda.CUDAGraph, dict]] = {}
        self.seen: dict[tuple, list] = {}
        self.eager = False
        self.pool = None
        for group in guarded.step.optimizer.param_groups:
            group["capturable"] = True

    def read(self) -> list[float]:
        return self.guarded.read()

    def _fall_back(self, reason: str) -> None:
        self.eager = True
        self.graphs.clear()
        for group in self.guarded.step.optimizer.param_groups:
            group["capturable"] = False
        warnings.warn(
            f"CUDA graph capture is off for this run ({reason}); training continues with "
            "eager steps",
            RuntimeWarning,
            stacklevel=3,
        )

    def _warm_up(self, key, batch, phase) -> None:
        recorder = _SiteRecorder()
        pair = self.guarded.step.pair
        model, guide = pair.model, pair.guide
        pair.model, pair.guide = recorder(model), recorder(guide)
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.guarded.body(batch, phase)
                self.guarded.step.optimizer.zero_grad(set_to_none=True)
            torch.cuda.current_stream().wait_stream(side)
        finally:
            pair.model, pair.guide = model, guide
        self.seen.setdefault(key, []).append(recorder.sites)

    def _capture(self, key, batch, phase):
        traces = self.seen.pop(key)
        if any(t != traces[0] for t in traces[1:]):
            self._fall_back("the model's or guide's trace changed between steps")
            return None
        static = {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        graph = torch.cuda.CUDAGraph()
        self.guarded.step.optimizer.zero_grad(set_to_none=True)
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                self.guarded.body(static, phase)
        except Exception as e:  # any failure inside capture: run eagerly instead
            self.guarded.step.optimizer.zero_grad(set_to_none=True)
            self._fall_back(f"capture failed: {type(e).__name__}: {str(e).splitlines()[0]}")
            return None
        self.pool = graph.pool()
        self.graphs[key] = (graph, static)
        return self.graphs[key]

    def __call__(self, batch: Mapping[str, torch.Tensor], phase: str = "joint", where: str = ""):
        guarded = self.guarded
        if guarded.queued >= guarded.read_every:
            raise RuntimeError("read() the queued losses before more steps")
        if self.eager:
            return guarded(batch, phase, where)
        guarded.sync_reference()
        key = (phase,) + tuple(
            (k, tuple(v.shape), v.dtype) if isinstance(v, torch.Tensor) else (k, repr(v))
            for k, v in sorted(batch.items())
        )
        entry = self.graphs.get(key)
        if entry is None and len(self.seen.get(key, [])) < self.warmup:
            self._warm_up(key, batch, phase)
        else:
            if entry is None:
                entry = self._capture(key, batch, phase)
                if entry is None:
                    return guarded(batch, phase, where)
            graph, static = entry
            for k, v in batch.items():
                if isinstance(v, torch.Tensor):
                    static[k].copy_(v)
            graph.replay()
        guarded.queued += 1
        guarded.places.append(where)


def make_sync_free_step(step: TrainingStep, *, cuda_graph: bool, read_every: int = 50) -> Callable:
    """The step ``fit`` calls when it avoids per-step host reads: a
    :class:`CUDAGraphStep` with ``cuda_graph``, else a :class:`DeviceGuardedStep`."""
    guarded = DeviceGuardedStep(step, read_every)
    return CUDAGraphStep(guarded) if cuda_graph else guarded


__all__ = [
    "CUDAGraphStep",
    "DeviceGuardedStep",
    "make_sync_free_step",
    "without_host_reads",
]
