"""The in-memory data set every loader returns, and its seeded train/test split."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch


@dataclass(frozen=True)
class Dataset:
    """Images (or any arrays) in memory, with optional labels.

    :ivar x: float32 tensor ``(N, *shape)`` with raw intensities scaled to ``[0, 1]``.
    :ivar y: int64 labels ``(N,)`` or ``None``.
    :ivar levels: number of intensity levels of the raw data (256 for 8-bit
        images, 17 for scikit-learn's digits), used to dequantize; ``None`` for
        data that are already continuous.
    :ivar image_shape: the shape of one image, for plots, e.g. ``(28, 28)``.
    :ivar name: the data set's name.
    """

    x: torch.Tensor
    y: torch.Tensor | None
    levels: int | None
    image_shape: tuple[int, ...]
    name: str

    def __post_init__(self):
        validate_array(self.x, "x")
        if self.y is not None:
            if self.y.shape != (self.x.shape[0],):
                raise ValueError(
                    f"{self.name}: labels have shape {tuple(self.y.shape)}, "
                    f"expected ({self.x.shape[0]},)"
                )
            if self.y.dtype != torch.int64:
                raise ValueError(f"{self.name}: labels must be int64, got {self.y.dtype}")
            if self.y.numel() and int(self.y.min()) < 0:
                first = int((self.y < 0).nonzero()[0])
                raise ValueError(
                    f"{self.name}: labels must be class indices >= 0, but label "
                    f"{int(self.y[first])} is at index {first}"
                )

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def num_features(self) -> int:
        return math.prod(self.x.shape[1:])

    def subset(self, index) -> Dataset:
        """The data points at ``index`` (a tensor or array of indices)."""
        index = torch.as_tensor(index, dtype=torch.int64)
        return replace(self, x=self.x[index], y=None if self.y is None else self.y[index])

    def flat(self) -> Dataset:
        """Each data point as a vector: ``x`` of shape ``(N, D)``."""
        return replace(self, x=self.x.reshape(len(self), -1))

    def rows(self) -> Dataset:
        """Each image as a sequence of its rows: ``x`` of shape ``(N, T, D)``.

        ``T`` is the image height and ``D`` its width (28 x 28 for MNIST, 8 x 8
        for the digits), the view sequence models such as the VRNN read.
        """
        if len(self.image_shape) != 2:
            raise ValueError(f"{self.name}: rows() needs 2-D images, have {self.image_shape}")
        return replace(self, x=self.x.reshape(len(self), *self.image_shape))

    def fields(self) -> dict[str, torch.Tensor]:
        """The named tensors a model and guide are called with (``x`` and ``y``)."""
        out = {"x": self.x}
        if self.y is not None:
            out["y"] = self.y
        return out


def validate_array(x: torch.Tensor, name: str) -> None:
    """Raise ``ValueError`` unless ``x`` is a non-empty floating tensor of finite values."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"'{name}' must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"'{name}' must be a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"'{name}' must have shape (N, ...) with N > 0, got {tuple(x.shape)}")
    finite = torch.isfinite(x).reshape(x.shape[0], -1).all(-1)
    if not bool(finite.all()):
        bad = (~finite).nonzero().flatten()
        raise ValueError(
            f"'{name}' contains NaN or infinite values in {bad.numel()} data point(s), "
            f"first at index {bad[0].item()}"
        )


def check_labels(y: torch.Tensor, num_classes: int, name: str = "labels") -> None:
    """Raise ``ValueError`` unless every label in ``y`` is in ``0 .. num_classes - 1``,
    naming how many are not and the first one's index. Checks all of ``y``, not one
    batch: a label out of range deep in the data would otherwise fail mid-training."""
    bad = ((y < 0) | (y >= num_classes)).reshape(y.shape[0], -1).any(-1)
    if bool(bad.any()):
        first = int(bad.nonzero()[0])
        raise ValueError(
            f"{name} must lie in 0..{num_classes - 1} (the model has {num_classes} classes), "
            f"but {int(bad.sum())} data point(s) have others, first at index {first} "
            f"(label {y[first].tolist()})"
        )


def seeded_split(n: int, test_size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``range(n)`` into sorted train and test indices by a seeded permutation.

    The same ``(n, test_size, seed)`` gives the same split on every machine
    (NumPy's PCG64 generator).
    """
    if not 0 < test_size < n:
        raise ValueError(f"test_size must be in (0, {n}), got {test_size}")
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[test_size:]), np.sort(perm[:test_size])
