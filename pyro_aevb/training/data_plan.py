"""The training data as the loop reads it: fields, batches, the transformed data field.

:class:`TrainingData` is planned once before any work (sizes, the semi-supervised label
mask, the field a transform applies to, the test set), placed on the device after the run
is seeded, and then asked for each epoch's data and batches.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from ..arguments import batch_rows, num_rows, plan_batches, training_fields
from ..arguments import steps_per_epoch as count_batches
from ..contract import observed_field
from ..data.transforms import Identity, Transform, transform_test_set
from ..pair_data import prepare_test_set, prepare_training
from .settings import DataSettings


def first_rows(fields: Mapping, exclude: torch.Tensor | None, size: int | None = None) -> dict:
    """The first ``size`` data points (all if ``None``), leaving out the rows ``exclude``
    marks (a semi-supervised batch holds labeled or unlabeled points, never both)."""
    n = next(n for n in map(num_rows, fields.values()) if n is not None)
    rows = torch.arange(n) if exclude is None else (~exclude.cpu()).nonzero().flatten()
    rows = rows[: size if size is not None else n]
    return {k: batch_rows(v, rows, k, n) for k, v in fields.items()}


@dataclass
class TrainingData:
    """The planned training (and test) data of a fit."""

    #: field name -> values, ``num_train`` rows each (on the device once placed)
    fields: dict
    #: the data set's grey levels (for transforms), or ``None``
    levels: object
    num_train: int
    #: per row, whether its label is missing (semi-supervised data), else ``None``
    missing: torch.Tensor | None
    #: the batch size used: the one asked for, at most ``num_train``
    batch_size: int
    steps_per_epoch: int
    #: the field a transform applies to: ``x``, else the one the model observes
    data_field: str | None
    transform: Transform
    test_fields: dict | None = None
    #: the transformed data field of a deterministic transform (drawn once)
    fixed_x: torch.Tensor | None = field(default=None, repr=False)
    #: a seeded draw of the transformed data, for the checks (leaves the generator alone)
    preview: dict | None = field(default=None, repr=False)

    @classmethod
    def plan(cls, model, guide, train, settings: DataSettings) -> tuple:
        """``(data, model, guide)``: sizes, the label mask and the data field of
        ``train``, its values checked against the pair (dtype, labels) and the pair
        wrapped where the data need it (:func:`~pyro_aevb.pair_data.prepare_training`);
        runs no step."""
        fields, levels, n_train = training_fields(train)
        if n_train == 0:
            raise ValueError("the training data has no data points")
        model, guide, fields, missing = prepare_training(model, guide, fields, n_train)
        batch_size = min(settings.batch_size, n_train)
        transform = settings.transform
        if "x" in fields:
            data_field = "x"
        else:
            data_field = observed_field(model, first_rows(fields, missing))
        if not isinstance(transform, Identity) and data_field is None:
            raise ValueError(
                f"transform {transform!r} applies to the data field, but no field of "
                f"{sorted(fields)} is named 'x' or observed by the model on the first batch"
            )
        steps = count_batches(n_train, batch_size, missing)
        data = cls(fields, levels, n_train, missing, batch_size, steps, data_field, transform)
        return data, model, guide

    def epoch_batches(self, order: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The row indices of each batch of an epoch that visits rows in ``order``."""
        order = order if order is not None else torch.arange(self.num_train)
        return plan_batches(order, self.batch_size, self.missing)

    def prepare_test(self, test, device: torch.device, model) -> None:
        """The test fields, checked against the training fields and ``model``
        (:func:`~pyro_aevb.pair_data.prepare_test_set`) and transformed once as the
        training field is."""
        if test is None:
            return
        transform, data_field = self.transform, self.data_field
        test_transform = transform if data_field == "x" else None
        fields = prepare_test_set(test, test_transform, device, self.fields, model)
        if data_field != "x" and not isinstance(transform, Identity):
            fields[data_field] = transform_test_set(fields[data_field], transform, self.levels)
        self.test_fields = fields

    def place(self, device: torch.device) -> None:
        """Move the fields to ``device``, draw a deterministic transform once and the
        seeded preview (after the run's seed is set)."""
        self.fields = {k: v.to(device) if hasattr(v, "to") else v for k, v in self.fields.items()}
        data_field, transform = self.data_field, self.transform
        if not transform.resample_each_epoch and data_field is not None:
            self.fixed_x = transform(self.fields[data_field], None, self.levels)
        self.preview = dict(self.fields)
        if data_field is not None:
            values = self.fields[data_field]
            self.preview[data_field] = transform_test_set(values, transform, self.levels)

    def first_batch(self, unlabeled: bool = False) -> dict:
        """The first batch of the preview: labeled rows (or all), or unlabeled ones."""
        missing = self.missing
        exclude = missing if not unlabeled or missing is None else ~missing
        return first_rows(self.preview, exclude, self.batch_size)

    @property
    def mixes_labels(self) -> bool:
        """Whether some rows have labels and some do not (semi-supervised data)."""
        return self.missing is not None and bool(self.missing.any()) and not self.missing.all()

    def epoch(self, generator: torch.Generator) -> tuple[torch.Tensor | None, list]:
        """An epoch's data field (redrawn by a stochastic transform) and batches; draws
        from ``generator`` (checkpointed) in the order a resume repeats."""
        x = self.fixed_x
        if x is None and self.data_field is not None:
            x = self.transform(self.fields[self.data_field], generator, self.levels)
        order = torch.randperm(self.num_train, generator=generator, device=generator.device)
        return x, self.epoch_batches(order)

    def batch(self, x: torch.Tensor | None, rows: torch.Tensor) -> dict:
        """The fields at ``rows``, the data field taken from the epoch's ``x``."""
        n, data_field = self.num_train, self.data_field
        return {
            k: batch_rows(x if k == data_field else v, rows, k, n) for k, v in self.fields.items()
        }
