"""Transforms from raw intensities in ``[0, 1]`` to what a likelihood models.

A transform is applied to a whole data tensor. Stochastic transforms
(``resample_each_epoch = True``) are redrawn by :func:`fit` at the start of
every epoch from its seeded generator; the test set is transformed once, with
:data:`TEST_SEED`, so test metrics are comparable across epochs and runs.
"""

from __future__ import annotations

import torch

#: seed of the single draw a stochastic transform makes of a test set
TEST_SEED = 20141220


class Transform:
    """Base class: override :meth:`__call__`; set ``resample_each_epoch``."""

    #: whether :func:`fit` draws the transform afresh at every epoch
    resample_each_epoch = False
    #: the likelihood this transform's output suits ('bernoulli' or 'continuous_bernoulli')
    likelihood = "bernoulli"

    def __call__(
        self, x: torch.Tensor, generator: torch.Generator | None = None, levels: int | None = None
    ) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def check_unit_interval(x: torch.Tensor, transform: Transform) -> None:
    """Raise ``ValueError`` unless ``x`` lies in ``[0, 1]``: binarizations and
    dequantization read it as intensities scaled to ``[0, 1]`` (raw 0..255 pixels would
    be all ones under a threshold of 0.5, and are no Bernoulli probabilities)."""
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > 1:
        hint = " (8-bit pixels? divide by 255)" if hi > 1 and hi <= 255 and lo >= 0 else ""
        raise ValueError(
            f"{transform!r} expects intensities in [0, 1], but the data range over "
            f"[{lo:g}, {hi:g}]{hint}; rescale them to [0, 1] first"
        )


class DynamicBinarization(Transform):
    """``x_bin ~ Bernoulli(x)``, a fresh draw every epoch (Salakhutdinov & Murray, 2008)."""

    resample_each_epoch = True

    def __call__(self, x, generator=None, levels=None):
        check_unit_interval(x, self)
        return torch.bernoulli(x, generator=generator)


class FixedBinarization(Transform):
    """``x_bin ~ Bernoulli(x)`` drawn once from ``seed``: the same binary data every time."""

    def __init__(self, seed: int = 0):
        self.seed = seed

    def __call__(self, x, generator=None, levels=None):
        check_unit_interval(x, self)
        g = torch.Generator(device=x.device).manual_seed(self.seed)
        return torch.bernoulli(x, generator=g)

    def __repr__(self):
        return f"FixedBinarization(seed={self.seed})"


class ThresholdBinarization(Transform):
    """``x_bin = 1[x > threshold]``, deterministic."""

    def __init__(self, threshold: float = 0.5):
        self.threshold = threshold

    def __call__(self, x, generator=None, levels=None):
        check_unit_interval(x, self)
        return (x > self.threshold).to(x.dtype)

    def __repr__(self):
        return f"ThresholdBinarization(threshold={self.threshold})"


class Dequantization(Transform):
    """Continuous values in ``[0, 1)``: ``(k + u) / L`` with ``u ~ U(0, 1)``.

    ``k`` is the integer intensity level and ``L`` the number of levels (256
    for 8-bit images, so this is "add uniform noise, divide by 256"). The noise
    is redrawn every epoch. Suits a continuous Bernoulli likelihood.
    """

    resample_each_epoch = True
    likelihood = "continuous_bernoulli"

    def __call__(self, x, generator=None, levels=None):
        if levels is None:
            raise ValueError(
                "dequantization needs the number of intensity levels of the raw data; "
                "this data set is already continuous (use Identity)"
            )
        check_unit_interval(x, self)
        k = torch.round(x * (levels - 1))
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return (k + u) / levels


class Identity(Transform):
    """The raw intensities in ``[0, 1]`` unchanged (continuous data)."""

    likelihood = "continuous_bernoulli"

    def __call__(self, x, generator=None, levels=None):
        return x


#: transform names accepted by the command line and :func:`get_transform`
TRANSFORMS = {
    "dynamic": DynamicBinarization,
    "fixed": FixedBinarization,
    "threshold": ThresholdBinarization,
    "dequantize": Dequantization,
    "none": Identity,
}


def get_transform(name: str | Transform) -> Transform:
    """The transform registered as ``name`` (or ``name`` itself if already a transform)."""
    if isinstance(name, Transform):
        return name
    try:
        return TRANSFORMS[name]()
    except KeyError:
        raise ValueError(
            f"unknown transform '{name}'; choose one of {sorted(TRANSFORMS)}"
        ) from None


def transform_test_set(x: torch.Tensor, transform: Transform, levels: int | None) -> torch.Tensor:
    """Transform a test set once; stochastic transforms draw with :data:`TEST_SEED`."""
    g = torch.Generator(device=x.device).manual_seed(TEST_SEED)
    return transform(x, generator=g, levels=levels)
