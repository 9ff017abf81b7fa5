"""Contexts that run a block apart from the caller: private random streams, a replayed
random state, networks in eval mode.

Evaluation during training must not change the training run: :func:`isolated` gives it a
private param store and a private seeded stream and restores the caller's state after.
Path-derivative estimators re-run a guide from the random state it first ran from
(:func:`rng_state`, :func:`replayed_rng`), so that its dropout masks repeat.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pyro
import torch


@contextlib.contextmanager
def eval_mode(*modules) -> Iterator[None]:
    """Put ``nn.Module`` s in eval mode (no dropout), restoring their flags after."""
    modules = [m for m in modules if isinstance(m, torch.nn.Module)]
    flags = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        yield
    finally:
        for m, flag in zip(modules, flags, strict=True):
            m.train(flag)


@contextlib.contextmanager
def isolated(seed: int | None, device: torch.device | None = None) -> Iterator[None]:
    """A private param store and, if ``seed`` is given, a private seeded RNG stream.

    The caller's RNG state is restored on exit, so evaluating during training
    does not change the training run.
    """
    devices = [device] if device is not None and device.type == "cuda" else []
    with pyro.get_param_store().scope(), torch.random.fork_rng(devices=devices):
        if seed is not None:
            torch.manual_seed(seed)
        yield


@contextlib.contextmanager
def forked_rng(device: torch.device | None = None) -> Iterator[None]:
    """Run a block on a fork of the current random stream: the draws after it are those
    there would have been without it (a check that runs the pair before an estimate)."""
    devices = [device] if device is not None and device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        yield


def rng_state() -> tuple:
    """The CPU (and, if initialized, CUDA) random state, for :func:`replayed_rng`."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    return torch.get_rng_state(), cuda


@contextlib.contextmanager
def replayed_rng(state: tuple) -> Iterator[None]:
    """Run a block from the random ``state`` and restore the current state after it."""
    cpu, cuda = state
    with torch.random.fork_rng(devices=list(range(len(cuda))) if cuda is not None else []):
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)
        yield
