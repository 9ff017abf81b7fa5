"""The library's training step, set up for a benchmark exactly as ``pyro_aevb.fit`` sets it up.

``fit`` checks the pair on the first batch (``check_pair`` under ``full_data_size(N)`` and
validation, inside a param-store scope of its own), builds one
:class:`pyro_aevb.TrainingStep`, takes the first step with Pyro's and torch's argument
validation on and every later step with it off. :func:`library_step_runner` does the same
and returns ``run(n)``, which takes ``n`` further steps on one batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pyro
import torch

import pyro_aevb
from pyro_aevb.contract import check_pair
from pyro_aevb.objectives import make_objective
from pyro_aevb.plate import full_data_size


def library_step_runner(
    model: Callable,
    guide: Callable,
    batch: Mapping[str, torch.Tensor],
    num_data: int,
    objective: str,
    num_particles: int = 1,
    lr: float = 1e-3,
    optimizer="adam",
) -> tuple[Callable[[int], None], pyro_aevb.TrainingStep]:
    """``(run, step)``: ``run(n)`` takes ``n`` of ``fit``'s training steps on ``batch``.

    The first step (validated, as ``fit``'s first) is taken here, so ``run`` times only
    the steady state. The parameters live in a param-store scope of their own, so several
    runners (and stock ``pyro.infer.SVI`` objects) can share the process.
    """
    store = pyro.get_param_store()
    state: dict = {"params": {}, "constraints": {}}
    elbo = make_objective(objective, num_particles)
    with store.scope(state):
        with full_data_size(num_data), pyro.validation_enabled(True):
            summary = check_pair(model, guide, batch, allow_model_enumeration=objective == "enum")
        step = pyro_aevb.TrainingStep(
            model, guide, elbo, summary, batch, num_data, optimizer=optimizer, lr=lr
        )
        with pyro.validation_enabled(True):
            step(batch, "joint", "at epoch 1, step 1")
    taken = [1]

    def run(n: int) -> None:
        with store.scope(state), pyro.validation_enabled(False):
            for _ in range(n):
                taken[0] += 1
                step(batch, "joint", f"at epoch 1, step {taken[0]}")

    return run, step
