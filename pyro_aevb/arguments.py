"""Data fields -> the arguments of a model or guide written as Pyro's examples write it.

The library calls a model and a guide with keyword arguments taken from a batch by
name (:func:`pyro_aevb.contract.call_arguments`). Code written for Pyro's own
``SVI`` loop names its arguments otherwise (``model(xs, ys=None)``), takes them
positionally, or is a pair of methods ``model``/``guide`` of one ``nn.Module``.
:func:`adapt` wraps such a callable so that it takes the batch's fields by name:

* ``arguments={"xs": "x", "ys": "y"}`` maps the callable's parameters to fields;
* a parameter with a default (``ys=None``) whose field is missing from the batch,
  or whose values are all missing (labels ``-1`` or rows of NaN: an unlabeled batch
  of a semi-supervised data set), receives its default;
* a bound method of an ``nn.Module`` is wrapped in a module holding its owner, so
  that moving, ``train()``/``eval()`` and checkpoints reach the parameters.

Batches of fields that are not plain tensors (a ``PackedSequence``, a list) are
cut by :func:`take_rows`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping

import torch

# the batching of fields lives in the data layer; importable from here as before
from .data.batching import (  # noqa: F401
    MISSING_LABEL,
    batch_rows,
    missing_rows,
    one_hot,
    plan_batches,
    steps_per_epoch,
    take_rows,
    trim_padding,
)
from .plate import num_rows  # noqa: F401  (lives with the data plate; importable from here)


def _decorated(fn) -> tuple[Callable, tuple] | None:
    """``(function, bound arguments)`` of a callable decorated with a Pyro handler
    (``@config_enumerate``, ``@poutine.scale(...)``), which Pyro wraps in a
    ``functools.partial`` of its own (bound to the instance for a method), else ``None``."""
    # config_enumerate(fn, ...) called on a function or bound method returns Pyro's
    # _bound_partial, a partial whose func is the partial of _context_wrap
    while isinstance(getattr(fn, "func", None), functools.partial):
        fn = fn.func
    func, args = getattr(fn, "func", None), getattr(fn, "args", None)
    if (
        getattr(func, "__name__", "") == "_context_wrap"
        and isinstance(args, tuple)
        and len(args) >= 2
        and callable(args[1])
    ):
        return args[1], tuple(args[2:])
    return None


def _owner(fn) -> torch.nn.Module | None:
    decorated = _decorated(fn)
    if decorated is not None:  # the instance bound by the partial, or the bound method's
        owner = decorated[1][0] if decorated[1] else getattr(decorated[0], "__self__", None)
    else:
        owner = getattr(fn, "__self__", None)
    return owner if isinstance(owner, torch.nn.Module) else None


def _target(fn: Callable) -> Callable:
    if isinstance(fn, ArgumentAdapter):
        return fn.fn
    return fn.forward if isinstance(fn, torch.nn.Module) else fn


def signature_parameters(fn: Callable) -> list[inspect.Parameter]:
    """The parameters a model or guide is called with: those of ``forward`` for an
    ``nn.Module``, of the decorated function (less the bound instance) for a method
    decorated with a Pyro handler."""
    fn = _target(fn)
    decorated = _decorated(fn)
    if decorated is not None:
        inner, bound = decorated
        return list(inspect.signature(inner).parameters.values())[len(bound) :]
    return list(inspect.signature(fn).parameters.values())


class ArgumentAdapter(torch.nn.Module):
    """A model or guide called with batch fields by name, whatever its own signature.

    :param fn: the user's callable (a function, an ``nn.Module``, a bound method).
    :param arguments: parameter name -> data field name, for parameters whose name is
        not a field's; the others are matched by name.
    """

    def __init__(self, fn: Callable, arguments: Mapping[str, str] | None = None):
        super().__init__()
        arguments = check_arguments(arguments)
        if isinstance(fn, ArgumentAdapter):
            arguments = {**fn.arguments, **(arguments or {})}
            fn = fn.fn
        # an nn.Module (or a bound method's owner) is registered, so that .to(),
        # .train(), .eval() and state_dict() reach its parameters and buffers
        self.owner = fn if isinstance(fn, torch.nn.Module) else _owner(fn)
        self.__dict__["fn"] = fn  # not a submodule a second time
        self.arguments = dict(arguments or {})
        #: padded field -> its PackedSequence field, cut per batch (adapt_to_data)
        self.padding: dict[str, str] = {}
        #: the label field of a semi-supervised data set, named in errors (adapt_to_data)
        self.label: str | None = None
        self.parameters_ = signature_parameters(fn)
        names = {p.name for p in self.parameters_}
        takes_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in self.parameters_)
        unknown = sorted(set(self.arguments) - names)
        if unknown and not takes_kwargs:
            raise ValueError(
                f"arguments maps {unknown}, which {getattr(fn, '__name__', 'the callable')} "
                f"does not take (its parameters: {sorted(names)})"
            )

    def field_of(self, parameter: str) -> str:
        return self.arguments.get(parameter, parameter)

    def required_fields(self) -> list[str]:
        return [
            self.field_of(p.name)
            for p in self.parameters_
            if p.default is inspect.Parameter.empty
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        ]

    def call_values(self, fields: Mapping) -> tuple[list, dict]:
        """Positional and keyword arguments for ``fn`` from ``fields``.

        :raises KeyError: naming the parameters no field provides.
        """
        args, kwargs, missing = [], {}, []
        used = set()
        for p in self.parameters_:
            if p.kind is inspect.Parameter.VAR_POSITIONAL:
                continue
            if p.kind is inspect.Parameter.VAR_KEYWORD:
                kwargs.update({k: v for k, v in fields.items() if k not in used})
                continue
            name = self.field_of(p.name)
            has_default = p.default is not inspect.Parameter.empty
            if name in fields:
                value = fields[name]
                rows = missing_rows(value) if has_default else None
                # an unlabeled batch of a semi-supervised data set: the default (None)
                if rows is not None and rows.numel() and bool(rows.all()):
                    value = p.default
            elif has_default:
                value = p.default
            else:
                missing.append(p.name)
                continue
            used.add(name)
            if p.kind is inspect.Parameter.POSITIONAL_ONLY:
                args.append(value)
            else:
                kwargs[p.name] = value
        if missing:
            raise KeyError(missing)
        return args, kwargs

    def forward(self, **fields):
        if self.padding:
            fields = trim_padding(fields, self.padding)
        args, kwargs = self.call_values(fields)
        try:
            return self.fn(*args, **kwargs)
        except Exception as error:
            if self.label is not None and self.label in fields:
                error.add_note(self._label_note(fields, kwargs))
            raise

    def _label_note(self, fields: Mapping, kwargs: dict) -> str:
        """Which batch of a semi-supervised data set the call failed on, naming the label
        field: the traceback otherwise points at the line that used the labels."""
        taken = [p for p in self.parameters_ if self.field_of(p.name) == self.label]
        if not taken:
            return f"(the batch's label field '{self.label}' is not taken by this callable)"
        p = taken[0]
        if p.name in kwargs and kwargs[p.name] is p.default:
            return (
                f"(an unlabeled batch: field '{self.label}' is missing (-1 or NaN) in every "
                f"data point, so {p.name}={p.default!r} was passed: the code must sample or "
                f"enumerate the label where {p.name} is {p.default!r})"
            )
        value = fields[self.label]
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
        return (
            f"(a labeled batch: {p.name} is field '{self.label}', "
            f"{getattr(value, 'dtype', '')} {shape})"
        )

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", type(self.fn).__name__)
        return f"ArgumentAdapter({name}, arguments={self.arguments})"


def check_arguments(arguments) -> dict[str, str]:
    """``arguments`` as a dict of parameter name -> field name.

    :raises TypeError: unless it is a mapping of strings to strings (a list such as
        ``["xs"]`` would otherwise be read by ``dict()`` as the pair ``{'x': 's'}``).
    """
    if arguments is None:
        return {}
    example = "arguments={'xs': 'x', 'ys': 'y'} calls model(xs=batch['x'], ys=batch['y'])"
    if not isinstance(arguments, Mapping):
        raise TypeError(
            f"arguments maps the model's and guide's parameter names to data field names, "
            f"got a {type(arguments).__name__} ({arguments!r}); e.g. {example}. Parameters "
            "named like a field need no entry"
        )
    bad = {k: v for k, v in arguments.items() if not (isinstance(k, str) and isinstance(v, str))}
    if bad:
        raise TypeError(
            f"arguments maps parameter names to field names (strings), got {bad!r}; "
            f"e.g. {example}"
        )
    return dict(arguments)


def adapt(fn: Callable, arguments: Mapping[str, str] | None = None) -> Callable:
    """``fn`` as the library calls a model or guide (fields by name), wrapped only where
    needed: with an ``arguments`` mapping, for a bound method of an ``nn.Module``, a
    function decorated with a Pyro handler, or positional-only parameters.

    :raises TypeError: if ``arguments`` is no mapping of names (:func:`check_arguments`).
    """
    arguments = check_arguments(arguments)
    if arguments or _owner(fn) is not None or isinstance(fn, ArgumentAdapter):
        return ArgumentAdapter(fn, arguments)
    if _decorated(fn) is not None:
        return ArgumentAdapter(fn)
    try:
        parameters = inspect.signature(_target(fn)).parameters.values()
    except (TypeError, ValueError):
        return fn
    if any(p.kind is inspect.Parameter.POSITIONAL_ONLY for p in parameters):
        return ArgumentAdapter(fn, arguments)
    return fn


def training_fields(data) -> tuple[dict, int | None, int]:
    """``(fields, levels, N)`` of training data: a :class:`~pyro_aevb.data.Dataset`, or a
    mapping of fields with the data points on dim 0 (tensors, lists, PackedSequences,
    under any names: the observed site says which is the data).

    :raises ValueError: for an empty mapping, no per-data-point field, fields of
        different lengths, or a floating field with NaN rows that is no label field.
    """
    from .data.dataset import Dataset, validate_array

    if isinstance(data, Dataset):
        return data.fields(), data.levels, len(data)
    if not isinstance(data, Mapping) or not data:
        raise ValueError(
            "data must be a pyro_aevb Dataset or a mapping of named fields with the data "
            "points on dim 0 (e.g. {'x': x} or {'xs': xs, 'ys': ys})"
        )
    fields = dict(data)
    if "x" in fields:
        validate_array(fields["x"], "x")
    rows = {k: num_rows(v) for k, v in fields.items()}
    sized = {k: n for k, n in rows.items() if n is not None}
    if not sized:
        raise ValueError(f"no field of {sorted(fields)} has data points on dim 0")
    n = max(sized.values())
    short = {k: m for k, m in sized.items() if m != n}
    if short:
        raise ValueError(
            f"fields {sorted(short)} have {sorted(set(short.values()))} rows but others "
            f"have {n}; every per-data-point field needs one row per data point"
        )
    for k, v in fields.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point() and v.dim() >= 1:
            bad = ~torch.isfinite(v).reshape(v.shape[0], -1)
            # a float label field may mark missing rows as NaN (see one_hot); the
            # semi-supervised check names it if the pair cannot take them
            partial = bad.any(-1) & ~bad.all(-1)
            if bool(torch.isinf(v).any()) or bool(partial.any()):
                index = int((bad.any(-1)).nonzero()[0])
                raise ValueError(
                    f"field '{k}' contains NaN or infinite values, first at data point {index}"
                )
    return fields, None, n


def label_field(fields: Mapping, model, guide) -> tuple[str, torch.Tensor] | None:
    """The one field with some rows missing (integer ``-1`` or NaN rows), and which
    rows: a semi-supervised data set, whose batches :func:`plan_batches` keeps either
    labeled or unlabeled. ``None`` if no field has missing rows.

    :raises ValueError: if several fields have missing rows, or the pair takes the
        field through an argument without a default (that cannot be left out).
    """
    partial = {}
    for k, v in fields.items():
        rows = missing_rows(v)
        if rows is not None and bool(rows.any()):
            partial[k] = rows
    if not partial:
        return None
    if len(partial) > 1:
        raise ValueError(
            f"fields {sorted(partial)} all have missing rows; a semi-supervised data set "
            "may leave one label field partly missing"
        )
    ((name, rows),) = partial.items()
    for role, fn in (("model", model), ("guide", guide)):
        adapter = fn if isinstance(fn, ArgumentAdapter) else ArgumentAdapter(fn)
        required = [
            p.name
            for p in adapter.parameters_
            if adapter.field_of(p.name) == name and p.default is inspect.Parameter.empty
        ]
        if required:
            raise ValueError(
                f"field '{name}' is missing in {int(rows.sum())} of {rows.numel()} data "
                f"points (labels -1 or NaN rows), but the {role}'s argument {required[0]} "
                f"has no default: give it one ({required[0]}=None) and observe the label "
                "where it is given, enumerate or sample it where it is None (the M2 model "
                "of Kingma et al., 2014)"
            )
    return name, rows
