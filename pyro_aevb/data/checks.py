"""Checks of training and test data that :func:`pyro_aevb.fit` runs before the first step.

Each of these would otherwise fail late: a float64 field inside the first layer of a float32
network (a dtype error with a Pyro trace dump), a label outside ``0 .. C-1`` at whichever
step draws it, a test set of another width after the first epoch's training. Every check
reads the whole data set once, before any work; a refusal names the field and what to do.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch.nn.utils.rnn import PackedSequence

from .batching import MISSING_LABEL

_INTEGER = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def convert_floating(fields: Mapping, dtype: torch.dtype, what: str) -> dict:
    """``fields`` with every floating tensor of another dtype than ``dtype`` converted to
    it, with one warning naming them. Float64 data into float32 parameters (torch's
    default) fail inside the first layer; float32 holds every value such networks use
    (8-bit pixels, binarized data) and the conversion changes no computed number beyond
    float32 rounding."""
    out, converted = dict(fields), []
    for name, value in fields.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
            converted.append(f"'{name}' ({value.dtype})")
            out[name] = value.to(dtype)
        elif isinstance(value, PackedSequence) and value.data.is_floating_point():
            if value.data.dtype != dtype:
                converted.append(f"'{name}' ({value.data.dtype})")
                out[name] = value.to(dtype)
    if converted:
        warnings.warn(
            f"the {what} field(s) {', '.join(converted)} converted to {dtype}, the dtype of the "
            f"pair's parameters; convert them yourself (x.to({dtype})) to silence this, or "
            "build the pair in the data's dtype (model.to(torch.float64))",
            stacklevel=4,
        )
    return out


def check_class_labels(
    y, num_classes: int, num_points: int, name: str, allow_missing: bool = False
) -> None:
    """Raise ``ValueError`` unless ``y`` holds one integer class index in ``0 .. C-1`` per
    data point, shape ``(N,)`` (with ``allow_missing``, ``-1`` marks a missing label of a
    semi-supervised data set). Checks every label, not one batch's."""
    where = f"field '{name}'"
    if not isinstance(y, torch.Tensor):
        raise ValueError(f"{where} must be a tensor of class labels, got {type(y).__name__}")
    if y.dtype not in _INTEGER:
        hint = " (one-hot rows? pass y.argmax(-1))" if y.dim() == 2 else ""
        if y.is_floating_point() and y.dim() == 1 and bool((y == y.round()).all()):
            hint = " (whole numbers stored as floats: pass y.long())"
        raise ValueError(
            f"{where} must hold integer class labels 0..{num_classes - 1}, got dtype "
            f"{y.dtype}{hint}"
        )
    if tuple(y.shape) != (num_points,):
        raise ValueError(
            f"{where} must hold one label per data point, shape ({num_points},), got "
            f"{tuple(y.shape)}" + (" (pass y.squeeze(-1))" if y.dim() == 2 else "")
        )
    bad = (y < 0) | (y >= num_classes)
    if allow_missing:
        bad &= y != MISSING_LABEL
    if bool(bad.any()):
        first = int(bad.nonzero()[0])
        allowed = f"0..{num_classes - 1}" + (" or -1 (missing)" if allow_missing else "")
        raise ValueError(
            f"{where} must lie in {allowed} (the model was built for {num_classes} classes), but "
            f"{int(bad.sum())} data point(s) have others, first at index {first} (label "
            f"{int(y[first])}); map the labels to 0..{num_classes - 1} or build the model "
            f"with num_classes={max(int(y.max()) + 1, num_classes)}"
        )


def _kind(dtype: torch.dtype) -> str:
    if dtype.is_floating_point:
        return "floating"
    return "boolean" if dtype == torch.bool else "integer"


def _tensor(value) -> torch.Tensor | None:
    if isinstance(value, PackedSequence):
        return value.data  # (total steps, *features): compare the features
    return value if isinstance(value, torch.Tensor) and value.dim() >= 1 else None


def check_like_training(test: Mapping, train: Mapping, what: str = "test") -> dict:
    """``test`` checked against the training fields: every field both hold has the same
    shape per data point (dims after the first; a padded sequence's length may differ)
    and the same kind (floating, integer, boolean); a floating one of another precision
    is converted to the training field's dtype (with a warning).

    :raises ValueError: naming the field and both shapes or dtypes.
    """
    out = dict(test)
    for name in [k for k in test if k in train]:
        a, b = _tensor(test[name]), _tensor(train[name])
        if a is None or b is None:
            continue
        a_shape, b_shape = tuple(a.shape[1:]), tuple(b.shape[1:])
        sequence = a.dim() >= 3 and a_shape[1:] == b_shape[1:]  # (N, T, ...): T may differ
        if a_shape != b_shape and not sequence:
            raise ValueError(
                f"{what} field '{name}' has shape {tuple(a.shape)}, {a_shape} per data point, "
                f"but the training data's has {b_shape}: the pair was built for the "
                f"training data's shape; pass {what} data prepared the same way (e.g. "
                ".flat() on both)"
            )
        if _kind(a.dtype) != _kind(b.dtype):
            raise ValueError(
                f"{what} field '{name}' is {_kind(a.dtype)} ({a.dtype}) but the training "
                f"data's is {_kind(b.dtype)} ({b.dtype}); convert it to {b.dtype}"
            )
    floating = {
        k: v for k, v in out.items()
        if k in train and _tensor(train[k]) is not None and _tensor(train[k]).is_floating_point()
    }
    for name, value in floating.items():
        converted = convert_floating({name: value}, _tensor(train[name]).dtype, what)
        out[name] = converted[name]
    return out
