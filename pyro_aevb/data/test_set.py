"""A test set as evaluation reads it: fields checked, transformed once, on a device."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from .dataset import Dataset, validate_array
from .transforms import Transform, get_transform, transform_test_set


def prepare_fields(
    data: Dataset | Mapping[str, torch.Tensor],
    transform: Transform | str | None,
    device: torch.device | str | None = None,
) -> dict[str, torch.Tensor]:
    """Fields of a test set: checked, transformed once (stochastic transforms with the
    fixed test seed) and moved to ``device``.

    A mapping may hold NumPy arrays (converted to tensors). Empty data,
    fields with different numbers of rows, non-finite values and non-integer labels are
    refused with a ``ValueError`` naming the field.
    """
    if isinstance(data, Dataset):
        fields = data.fields()
        levels = data.levels
    elif isinstance(data, Mapping):
        # The data field is 'x', else the first array field that is not the labels; other
        # fields may be lists or PackedSequences (cut per batch, pyro_aevb.arguments).
        fields = {k: _as_tensor(v, k, strict=False) for k, v in data.items()}
        levels = None
        arrays = [k for k, v in fields.items() if isinstance(v, torch.Tensor) and k != "y"]
        reference = "x" if "x" in fields else (arrays[0] if arrays else None)
        if reference is None:
            raise ValueError(
                f"the test data need an 'x' field (or another data field), got fields "
                f"{sorted(fields)}"
            )
        fields[reference] = _as_tensor(data[reference], reference)
        validate_array(fields[reference], reference)
        n = fields[reference].shape[0]
        for k, v in fields.items():
            if isinstance(v, torch.Tensor) and (v.dim() == 0 or v.shape[0] != n):
                raise ValueError(
                    f"test field '{k}' has {v.shape[0] if v.dim() else 0} rows but "
                    f"'{reference}' has {n}"
                )
        if "y" in fields and fields["y"].is_floating_point():
            raise ValueError(
                f"test labels 'y' must be integers, got dtype {fields['y'].dtype}; "
                "convert them with y.long()"
            )
    else:
        raise ValueError(
            f"data must be a pyro_aevb Dataset or a mapping of fields, got {type(data).__name__}"
        )
    if transform is not None:
        name = transformed_field(fields, transform)
        fields[name] = transform_test_set(fields[name], get_transform(transform), levels)
    return {
        k: v.to(device) if device is not None and hasattr(v, "to") else v for k, v in fields.items()
    }


def transformed_field(fields: Mapping, transform) -> str:
    """The field a transform applies to: ``x``, else the one floating field with data
    points on dim 0 and features after it, as :func:`pyro_aevb.fit` transforms the field
    the model observes (data passed under the model's argument name, ``{"xs": ...}``).

    :raises ValueError: naming the candidates when there is none or several.
    """
    if "x" in fields:
        return "x"
    candidates = [
        k
        for k, v in fields.items()
        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() >= 2 and k != "y"
    ]
    if len(candidates) == 1:
        return candidates[0]
    found = f"the floating fields {candidates}" if candidates else "no floating field"
    raise ValueError(
        f"transform {transform!r} applies to the data field, but the data have no field 'x' "
        f"and {found} of shape (N, ...) among {sorted(fields)}; name the observed data "
        "'x' (and the model's argument after it, or map it with arguments=), or transform "
        "the field yourself and pass transform=None"
    )


def _as_tensor(value, name: str, strict: bool = True):
    """NumPy arrays become tensors; with ``strict``, anything else but a tensor is refused."""
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(value)
    if strict and not isinstance(value, torch.Tensor):
        raise ValueError(
            f"test field '{name}' must be a torch.Tensor or a NumPy array, "
            f"got {type(value).__name__}"
        )
    return value
