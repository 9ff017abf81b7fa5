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
