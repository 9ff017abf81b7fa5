"""The data plate: the one place a batch of data points lives.

Every model and guide of the library wraps its per-data-point sites in
:func:`data_plate`. It is a ``pyro.plate("data", ...)`` that knows the size of
the whole data set while :func:`fit` trains, so a minibatch of ``B`` points is
scaled by ``N / B`` and the loss is an unbiased estimate of the full-data
negative ELBO (Hoffman et al., 2013, stochastic variational inference); global
sites outside the plate count once. :func:`fit` then divides the objective by
``N`` to train on nats per data point. Outside
:func:`fit` (evaluation, plotting, a user's own ``SVI`` loop) the size defaults
to the batch size and nothing is scaled.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pyro
import torch
from pyro.poutine.messenger import Messenger
from torch.nn.utils.rnn import PackedSequence

DATA_PLATE = "data"

_full_sizes: list[int] = []


@contextlib.contextmanager
def full_data_size(size: int) -> Iterator[None]:
    """Declare that batches are drawn from a data set of ``size`` points.

    Inside the context, :func:`data_plate` scales each batch's log-density by
    ``size / batch_size``. :func:`fit` enters it around training steps.
    """
    if int(size) <= 0:
        raise ValueError(f"full_data_size needs a positive size, got {size}")
    _full_sizes.append(int(size))
    try:
        yield
    finally:
        _full_sizes.pop()


def data_plate(x: torch.Tensor, dim: int | None = None) -> pyro.plate:
    """The ``pyro.plate("data", ...)`` over the leading dimension of ``x``.

    :param x: a batch whose first dimension indexes data points, shape ``(B, ...)``.
    :param dim: the plate's dimension; leave ``None`` so Pyro places it as the
        outermost plate (``-1``).
    :returns: a plate of ``B`` elements that stands for ``N`` points when
        :func:`full_data_size` is active (subsample scaling ``N / B``).
    """
    batch_size = x.shape[0]
    size = _full_sizes[-1] if _full_sizes else batch_size
    if size < batch_size:
        raise ValueError(
            f"batch of {batch_size} points is larger than the declared data set size {size}"
        )
    # Passing the batch's own indices as `subsample` fixes the plate to this batch
    # (no random subsampling inside the plate) while Pyro applies the N/B scale.
    subsample = torch.arange(batch_size, device=x.device)
    return pyro.plate(DATA_PLATE, size=size, subsample=subsample, dim=dim)


def find_data_plate(trace, ignore: frozenset[str] = frozenset()) -> str | None:
    """The name of the data plate of a model trace: the outermost vectorized plate that
    encloses every observed site (whatever the user named it), or ``None``.

    The library's own pairs name it ``"data"``; Pyro's examples use ``"data"`` with or
    without a size, ``"z_minibatch"``, ``"sequences"``... The subsample sites that
    plates record, and observed sites no plate encloses, say nothing about it.
    """
    from pyro.poutine.util import site_is_subsample

    stacks = []
    for site in trace.nodes.values():
        if site["type"] != "sample" or not site["is_observed"] or site_is_subsample(site):
            continue
        names = [f.name for f in site["cond_indep_stack"] if f.vectorized and f.name not in ignore]
        if not names:
            return None
        stacks.append(names)
    if not stacks:
        return None
    # A plate named "data" is the data plate wherever it is (the contract check then
    # says if it is not the outermost); otherwise the outermost plate, which Pyro's
    # cond_indep_stack lists first, shared by every observed site.
    if all(DATA_PLATE in names for names in stacks):
        return DATA_PLATE
    outer = {names[0] for names in stacks}
    return outer.pop() if len(outer) == 1 else None


def plate_scale(frame) -> float:
    """The factor Pyro's plate itself applies to a site in ``frame``: ``size /
    subsample_size`` for a subsampled plate, 1 for a plain or a sizeless one."""
    full, size = frame.full_size, frame.size
    if full is None or size is None or int(size) <= 0 or int(full) <= 0:
        return 1.0
    return float(full) / float(size)


class DataPlateScale(Messenger):
    r"""Scale every site of the user's data plate to stand for the whole data set.

    For a minibatch of ``B`` of ``N`` data points, stochastic variational inference
    (Hoffman et al., 2013) weights each per-data-point term by ``N / B`` so that the
    minibatch objective is an unbiased estimate of the full-data ELBO, while global
    sites outside the plate count once. Pyro's plate applies this factor itself only
    when it knows both numbers (``pyro.plate(name, N, subsample_size=B)`` or
    ``subsample=idx``); a plate of the batch's size, or one without a size, applies 1.
    This messenger multiplies the scale of each sample site inside the plate named
    ``name`` by ``(N / B) / s``, with ``s`` the factor the plate already applied, so
    every spelling ends with exactly ``N / B`` and none is scaled twice.

    :param name: the data plate's name (:func:`find_data_plate`).
    :param full_size: ``N``, the data set size.
    :param batch_size: ``B``, the data points of the current batch; set it before each
        step (a semi-supervised step may pass a part of the batch, scaled alike).
    """

    def __init__(self, name: str, full_size: int, batch_size: int | None = None):
        super().__init__()
        self.name, self.full_size, self.batch_size = name, int(full_size), batch_size

    def _process_message(self, msg) -> None:
        if msg["type"] != "sample" or self.batch_size is None:
            return
        frame = next(
            (f for f in msg["cond_indep_stack"] if f.vectorized and f.name == self.name), None
        )
        if frame is None:
            return
        factor = self.full_size / self.batch_size / plate_scale(frame)
        # The library's data_plate inside full_data_size already applies N / B: leave its
        # numbers bit for bit as they were.
        if abs(factor - 1.0) > 1e-12:
            msg["scale"] = msg["scale"] * factor


def scale_to_data_set(fn, plate: str, num_data: int):
    """``fn(**batch)`` with its data plate ``plate`` scaled to stand for ``num_data``
    points (:class:`DataPlateScale`), ``B`` read off each call's batch (the rows of its
    first per-data-point field). Wrap the model and the guide alike."""
    rescale = DataPlateScale(plate, num_data)

    def scaled(**batch):
        rescale.batch_size = next((n for n in map(num_rows, batch.values()) if n is not None), None)
        with rescale:
            return fn(**batch)

    return scaled


def num_rows(value) -> int | None:
    """Data points in a field: dim 0 of a tensor, the batch of a ``PackedSequence``,
    the length of a list or tuple; ``None`` for anything else (passed whole)."""
    if isinstance(value, PackedSequence):
        return int(value.batch_sizes[0])
    if isinstance(value, torch.Tensor):
        return int(value.shape[0]) if value.dim() else None
    if isinstance(value, (list, tuple)):
        return len(value)
    return None
