"""Cutting data fields into batches: rows of tensors, lists and ``PackedSequence`` fields,
labeled and unlabeled batches of a semi-supervised data set, and tensors padded along a
``PackedSequence`` cut to each batch's longest sequence.

A field holds one row per data point on dim 0 (:func:`pyro_aevb.plate.num_rows`); a field
of another length (a fixed matrix, a setting) is passed whole to every batch.
"""

from __future__ import annotations

import torch
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from ..plate import num_rows

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


def sequence_lengths(value: PackedSequence) -> torch.Tensor:
    """``(N,)`` lengths of a ``PackedSequence``'s sequences, in their original order."""
    return pad_packed_sequence(value, batch_first=True)[1]


def padded_along(fields, packed_name: str) -> list[str]:
    """The tensor fields padded along the ``PackedSequence`` field ``packed_name``: shape
    ``(N, T, ...)`` with ``T`` its longest sequence, and zero (or ``False``) at every
    position ``t >= length_i`` of every data point ``i``, as ``pad_sequence`` pads. Such a
    field is a padded copy of the sequences (the data, a mask); checking every point's
    padding over the whole data set tells it from a field that has ``T`` columns by chance.
    """
    lengths = sequence_lengths(fields[packed_name])
    n, longest = lengths.numel(), int(lengths.max())
    if int(lengths.min()) == longest:
        return []  # no sequence is shorter than the longest: no batch cuts anything
    out = []
    for name, value in fields.items():
        if name == packed_name or not isinstance(value, torch.Tensor) or value.dim() < 2:
            continue
        if value.shape[0] != n or value.shape[1] != longest:
            continue
        beyond = torch.arange(longest, device=value.device) >= lengths.to(value.device)[:, None]
        if not bool((value[beyond] == 0).all()):
            continue
        out.append(name)
    return out


def sequence_padding(fields) -> dict[str, str]:
    """``padded field -> PackedSequence field`` for every tensor field padded along a
    ``PackedSequence`` field of the data (:func:`padded_along`); empty without one."""
    out: dict[str, str] = {}
    for name, value in fields.items():
        if isinstance(value, PackedSequence):
            for padded in padded_along(fields, name):
                out.setdefault(padded, name)
    return out


def trim_padding(batch: dict, padding: dict[str, str]) -> dict:
    """``batch`` with each padded field (:func:`sequence_padding`) cut to the batch's
    longest sequence, ``(B, T_batch, ...)``: the length that ``pad_packed_sequence`` of the
    batch's ``PackedSequence`` gives, and ``max(lengths)`` of the batch, as a loop over
    its own minibatches pads (Pyro's DMM example cuts each minibatch so)."""
    out = dict(batch)
    for name, packed_name in padding.items():
        packed, value = batch.get(packed_name), batch.get(name)
        if not isinstance(packed, PackedSequence) or not isinstance(value, torch.Tensor):
            continue
        longest = packed.batch_sizes.numel()
        if value.dim() >= 2 and value.shape[1] > longest:
            out[name] = value[:, :longest]
    return out
