"""The training and test data as a given pair reads them, checked before the first step.

:func:`prepare_training` runs once in :func:`pyro_aevb.fit`, after the fields are read
(:func:`pyro_aevb.arguments.training_fields`) and the semi-supervised label field found
(:func:`pyro_aevb.arguments.label_field`); :func:`check_test_set` once on the test set.
What they catch would otherwise fail at some later step or after the first epoch: float64
data into float32 parameters, labels outside the model's classes, a test set of another
width; and they wrap the pair where the data need it (an unlabeled batch's default label,
sequences padded per batch).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

import torch

from .arguments import (
    ArgumentAdapter,
    _owner,
    _target,
    label_field,
    num_rows,
    signature_parameters,
)
from .data.batching import sequence_padding
from .data.checks import check_class_labels, check_like_training, convert_floating
from .data.test_set import prepare_fields


def pair_dtype(*fns) -> torch.dtype | None:
    """The floating dtype of the pair's parameters and buffers (an adapter's owner
    included; as :func:`pyro_aevb.evaluate` reads it), ``None`` if its modules hold none
    (parameters made by ``pyro.param`` as the program runs take the data's dtype)."""
    for fn in fns:
        module = fn if isinstance(fn, torch.nn.Module) else _owner(fn)
        if module is None:
            continue
        for t in (*module.parameters(), *module.buffers()):
            if t.is_floating_point():
                return t.dtype
    return None


def _num_classes(model) -> int | None:
    for fn in (model, getattr(model, "owner", None), _target(model), _owner(_target(model))):
        n = getattr(fn, "num_classes", None) if fn is not None else None
        if isinstance(n, int) and not isinstance(n, bool):
            return n
    return None


def check_for_pair(fields: dict, n: int, model, guide, what: str = "training") -> dict:
    """``fields`` in the pair's dtype (:func:`~pyro_aevb.data.checks.convert_floating`),
    and, for a model with an integer ``num_classes``, its label field (the one its
    parameter ``y`` takes) checked whole (:func:`~pyro_aevb.data.checks.check_class_labels`;
    ``-1`` allowed where ``y`` has a default). Without a pair, ``fields`` unchanged."""
    if model is None:
        return fields
    dtype = pair_dtype(model, guide)
    if dtype is not None:
        fields = convert_floating(fields, dtype, what)
    num_classes = _num_classes(model)
    if num_classes is None:
        return fields
    adapter = model if isinstance(model, ArgumentAdapter) else ArgumentAdapter(model)
    for p in adapter.parameters_:
        if p.name == "y" and adapter.field_of("y") in fields:
            name = adapter.field_of("y")
            has_default = p.default is not inspect.Parameter.empty
            check_class_labels(fields[name], num_classes, n, name, allow_missing=has_default)
    return fields


def prepare_test_set(test, transform, device, train_fields: Mapping, model) -> dict:
    """The test set's fields (:func:`~pyro_aevb.data.test_set.prepare_fields`: checked,
    ``transform`` applied, on ``device``) checked against the training fields
    (:func:`check_test_set`)."""
    return check_test_set(prepare_fields(test, transform, device), train_fields, model)


def check_test_set(test_fields: dict, train_fields: Mapping, model) -> dict:
    """Test fields checked against the training fields before the first step (same shape
    per data point and kind, floating ones converted to the training dtype:
    :func:`~pyro_aevb.data.checks.check_like_training`) and their labels against the
    model's ``num_classes``; a test set of another width would fail after epoch 1."""
    test_fields = check_like_training(test_fields, train_fields, "test")
    n = next((r for r in map(num_rows, test_fields.values()) if r is not None), 0)
    return check_for_pair(test_fields, n, model, None, "test")


def adapt_to_data(model, guide, fields: Mapping, label: str | None = None):
    """``(model, guide)`` wrapped in :class:`ArgumentAdapter` where the data need it:

    * a semi-supervised label field ``label`` that a plain function or a decorated
      guide (``config_enumerate(obj.guide, ...)``) takes through a parameter with a
      default: an unlabeled batch then calls it with the default (``ys=None``), not
      with rows of NaN or ``-1``;
    * tensor fields padded along a ``PackedSequence`` field
      (:func:`~pyro_aevb.data.batching.sequence_padding`): each batch's are cut to its
      own longest sequence.
    """
    padding = sequence_padding(fields)
    out = []
    for fn in (model, guide):
        adapter = fn if isinstance(fn, ArgumentAdapter) else None
        takes_label = label is not None and any(
            p.default is not inspect.Parameter.empty
            and (adapter.field_of(p.name) if adapter else p.name) == label
            for p in signature_parameters(fn)
        )
        if padding or takes_label:
            adapter = adapter if adapter is not None else ArgumentAdapter(fn)
            adapter.padding = padding
            adapter.label = label
            fn = adapter
        out.append(fn)
    return tuple(out)


def prepare_training(model, guide, fields: dict, n: int):
    """``(model, guide, fields, missing)`` for training: the semi-supervised label field
    found (:func:`~pyro_aevb.arguments.label_field`; ``missing`` its rows without a label,
    else ``None``), the fields in the pair's dtype and its labels checked
    (:func:`check_for_pair`), the pair wrapped where the data need it
    (:func:`adapt_to_data`)."""
    label = label_field(fields, model, guide)
    fields = check_for_pair(fields, n, model, guide)
    model, guide = adapt_to_data(model, guide, fields, label[0] if label is not None else None)
    return model, guide, fields, label[1] if label is not None else None
