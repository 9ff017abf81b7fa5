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
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from .plate import num_rows  # noqa: F401  (lives with the data plate; importable from here)

#: the value of an integer label that marks it as missing
MISSING_LABEL = -1


def missing_rows(value) -> torch.Tensor | None:
    """Boolean ``(N,)``: which rows of a label field are missing (an integer ``-1`` or a
    float row with a NaN), or ``None`` if the field cannot have missing rows."""
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return None
    if value.dtype in (torch.int64, torch.int32, torch.int16, torch.int8):
        rows = value == MISSING_LABEL
    elif value.is_floating_point():
        rows = torch.isnan(value)
    else:
        return None
    return rows.reshape(rows.shape[0], -1).any(-1)


def take_rows(value, index: torch.Tensor, name: str = "field"):
    """The rows ``index`` of a field: tensors and lists by dim 0, a ``PackedSequence``
    unpacked, indexed and packed again (lengths kept, ``enforce_sorted=False``)."""
    if isinstance(value, PackedSequence):
        padded, lengths = pad_packed_sequence(value, batch_first=True)
        # pad_packed_sequence returns the sequences in their original order
        cpu_index = index.cpu()
        return pack_padded_sequence(
            padded[index.to(padded.device)],
            lengths[cpu_index],
            batch_first=True,
            enforce_sorted=False,
        )
    if isinstance(value, torch.Tensor):
        return value[index.to(value.device)]
    if isinstance(value, (list, tuple)):
        return type(value)(value[int(i)] for i in index)
    raise TypeError(
        f"field '{name}' is a {type(value).__name__}, which has no rows to batch; pass "
        "per-data-point fields as tensors, lists or PackedSequences (data point on dim 0)"
    )


def _decorated(fn) -> tuple[Callable, tuple] | None:
    """``(function, bound arguments)`` of a callable decorated with a Pyro handler
    (``@config_enumerate``, ``@poutine.scale(...)``), which Pyro wraps in a
    ``functools.partial`` of its own (bound to the instance for a method), else ``None``."""
    if (
        isinstance(fn, functools.partial)
        and getattr(fn.func, "__name__", "") == "_context_wrap"
        and len(fn.args) >= 2
        and callable(fn.args[1])
    ):
        return fn.args[1], tuple(fn.args[2:])
    return None


def _owner(fn) -> torch.nn.Module | None:
    decorated = _decorated(fn)
    owner = decorated[1][0] if decorated and decorated[1] else getattr(fn, "__self__", None)
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
        if isinstance(fn, ArgumentAdapter):
            arguments = {**fn.arguments, **(arguments or {})}
            fn = fn.fn
        # an nn.Module (or a bound method's owner) is registered, so that .to(),
        # .train(), .eval() and state_dict() reach its parameters and buffers
        self.owner = fn if isinstance(fn, torch.nn.Module) else _owner(fn)
        self.__dict__["fn"] = fn  # not a submodule a second time
        self.arguments = dict(arguments or {})
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
        args, kwargs = self.call_values(fields)
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        name = getattr(self.fn, "__qualname__", type(self.fn).__name__)
        return f"ArgumentAdapter({name}, arguments={self.arguments})"


def adapt(fn: Callable, arguments: Mapping[str, str] | None = None) -> Callable:
    """``fn`` as the library calls a model or guide (fields by name), wrapped only where
    needed: with an ``arguments`` mapping, for a bound method of an ``nn.Module``, a
    function decorated with a Pyro handler, or positional-only parameters."""
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


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Integer labels ``(N,)`` as one-hot floats ``(N, num_classes)``, a missing label
    (``-1``) as a row of NaN, which :func:`missing_rows` recognizes."""
    missing = labels == MISSING_LABEL
    out = torch.nn.functional.one_hot(labels.clamp(min=0).long(), num_classes).float()
    out[missing] = float("nan")
    return out


def batch_rows(value, index: torch.Tensor, name: str, num_points: int):
    """Rows ``index`` of a field with ``num_points`` rows (:func:`take_rows`); a field of
    another length (a fixed matrix, a setting) is passed whole to every batch."""
    if num_rows(value) != num_points:
        return value
    return take_rows(value, index, name)


def training_fields(data) -> tuple[dict, int | None, int]:
    """``(fields, levels, N)`` of training data: a :class:`~pyro_aevb.data.Dataset`, or a
    mapping of fields with the data points on dim 0 (tensors, lists, PackedSequences,
    under any names: the observed site says which is the data).

    :raises ValueError: for an empty mapping, no per-data-point field, fields of
        different lengths, or a floating field with NaN rows that is no label field.
    """
    from .data.dataset import Dataset

    if isinstance(data, Dataset):
        return data.fields(), data.levels, len(data)
    if not isinstance(data, Mapping) or not data:
        raise ValueError(
            "data must be a pyro_aevb Dataset or a mapping of named fields with the data "
            "points on dim 0 (e.g. {'x': x} or {'xs': xs, 'ys': ys})"
        )
    from .data.dataset import validate_array

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


def plan_batches(
    perm: torch.Tensor, batch_size: int, missing: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """Index tensors of one epoch's batches from a permutation of the data points.

    Without ``missing``, consecutive chunks of ``perm``. With it (a semi-supervised data
    set), labeled and unlabeled points are chunked apart, each in ``perm``'s order, so
    that every batch is called with its labels or without them; the batches then come
    in the order of their first point in ``perm``. Each point is in exactly one batch,
    so with every batch's terms weighted ``N / B`` (its own ``B``) the epoch's average
    step loss stays an unbiased estimate of the full-data objective.
    """
    if missing is None:
        return list(perm.split(batch_size))
    missing = missing.to(perm.device)
    where = missing[perm]
    batches = list(perm[~where].split(batch_size)) + list(perm[where].split(batch_size))
    rank = torch.empty_like(perm)
    rank[perm] = torch.arange(perm.numel(), device=perm.device)
    return sorted(batches, key=lambda b: int(rank[b[0]]))


def steps_per_epoch(num_points: int, batch_size: int, missing: torch.Tensor | None) -> int:
    """The number of batches :func:`plan_batches` makes (the same every epoch)."""
    if missing is None:
        return -(-num_points // batch_size)
    unlabeled = int(missing.sum())
    return -(-(num_points - unlabeled) // batch_size) + -(-unlabeled // batch_size)
