"""What a named pair is: a builder whose signature declares the pair's options, and hooks.

A named pair's options are written once, as the parameters of its builder::

    def build(train, z_dim: Annotated[int, LATENT_DIM] = 20, ...): ...

The parameter's name is the key in ``config.json["architecture"]``, its default the
pair's default, and the :class:`Option` in its annotation gives the help text, the
command-line flag, how to parse it and which values are valid. :class:`PairSpec`
reads them with :func:`inspect.signature`, so the options dict, the ``fit PAIR``
flags and the checks of a stored ``config.json`` cannot drift apart.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.dataset import Dataset

#: the views of the data a pair can read: ``(N, D)`` vectors, ``(N, T, D)`` sequences, or
#: ``(N, H, W)`` images (the same tensor as the rows, read by convolutions)
VIEWS = ("flat", "rows", "image")
#: the training settings of a pair that does not set them: the tutorial paper's VAE
#: settings (section 5.3) on the bundled MNIST subset
TRAINING_DEFAULTS = {
    "dataset": "mnist-subset",
    "transform": "dynamic",
    "objective": "elbo",
    "num_particles": 1,
    "epochs": 100,
    "batch_size": 100,
    "lr": 1e-3,
    "log_likelihood_particles": 1000,
}

#: the other settings a pair may set a default for
_OTHER_TRAINING_KEYS = {
    "objective_options", "kl_annealing", "schedule", "patience", "eval_every", "optimizer",
    "clip_norm", "lr_schedule", "max_train", "max_test", "data_dir", "seed", "device",
}  # fmt: skip


@dataclass(frozen=True)
class Option:
    """The declaration of one architecture option, in the annotation of a builder parameter.

    :ivar help: one line for ``--help``; the default is appended to it.
    :ivar flag: the command-line flag (default ``--`` and the parameter's name with
        dashes).
    :ivar type: parses one command-line word (``int``, ``float``, a function).
    :ivar choices: the accepted values, if a closed set.
    :ivar nargs: words the flag takes when more than one.
    :ivar metavar: their names in ``--help``.
    :ivar switch: a flag without a value that sets the option to ``True``.
    :ivar minimum: the option is an integer at least this large.
    :ivar interval: ``(low, high)``: the option is a number with ``low <= value < high``.
    :ivar to_config: turns the parsed words into the value stored in ``config.json``
        (e.g. three numbers into a dict).
    :ivar added: the version that added the option to an existing pair, whose default is
        the pair's behaviour before it: a ``config.json`` written earlier lacks the key and
        reads as that default (``None``: the option is as old as the pair, and required).
    """

    help: str
    flag: str | None = None
    type: Callable[[str], Any] | None = None
    choices: Sequence[str] | None = None
    nargs: int | None = None
    metavar: str | tuple[str, ...] | None = None
    switch: bool = False
    minimum: int | None = None
    interval: tuple[float, float] | None = None
    to_config: Callable[[Any], Any] | None = None
    added: str | None = None


@dataclass(frozen=True)
class PairOption:
    """An :class:`Option` bound to its builder parameter's name and default."""

    name: str
    default: Any
    option: Option
    #: the parameter's type, from its annotation (``int``, ``tuple[int, ...]``, ...)
    kind: Any = Any

    @property
    def flag(self) -> str:
        return self.option.flag or "--" + self.name.replace("_", "-")

    @property
    def label(self) -> str:
        """The flag and the config key, as messages name an option."""
        return f"{self.flag} ({self.name})"

    def add_argument(self, parser) -> None:
        """Add this option's flag to an :mod:`argparse` parser (or group); an unset flag
        parses as ``None``, so the pair's default applies."""
        option = self.option
        shown = self.default
        if isinstance(shown, (tuple, list)):
            shown = ",".join(str(v) for v in shown)
        help_text = option.help if shown is None else f"{option.help} (default {shown})"
        kwargs: dict[str, Any] = {"dest": self.name, "help": help_text}
        if option.switch:
            kwargs.update(action="store_const", const=True)
        else:
            kwargs.update(type=option.type, choices=option.choices)
            if option.nargs is not None:
                kwargs["nargs"] = option.nargs
            if option.metavar is not None:
                kwargs["metavar"] = option.metavar
        parser.add_argument(self.flag, **kwargs)

    def from_command_line(self, value):
        """The ``config.json`` value of the parsed flag (``None``: not given)."""
        if value is None or self.option.to_config is None:
            return value
        return self.option.to_config(value)

    def validate(self, value) -> None:
        """Raise ``ValueError`` naming the flag for a value of the wrong type (as JSON
        reads it back: a list for a tuple) or outside the declared range."""
        if not value_fits(value, self.kind):
            raise ValueError(
                f"{self.label} must be {type_text(self.kind)}, got {value!r} "
                f"({type(value).__name__})"
            )
        option = self.option
        if option.minimum is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < option.minimum
        ):
            raise ValueError(f"{self.label} must be an integer >= {option.minimum}, got {value!r}")
        if option.interval is not None and value is not None:
            low, high = option.interval
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not (number and math.isfinite(value) and low <= value < high):
                raise ValueError(f"{self.label} must be in [{low:g}, {high:g}), got {value!r}")
        if option.choices is not None and value is not None and value not in option.choices:
            raise ValueError(f"{self.label} must be one of {list(option.choices)}, got {value!r}")


def value_fits(value, kind) -> bool:
    """Whether ``value``, as JSON reads it back, has the type ``kind`` of a builder
    parameter: ``int`` (not ``bool``), ``float`` (an ``int`` too), ``str``, ``bool``,
    ``dict``, ``X | None``, ``tuple[X, ...]`` or ``list[X]`` (a JSON list); any other
    annotation accepts every value."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return any(value_fits(value, arm) for arm in args)
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind in (str, dict):
        return isinstance(value, kind)
    if origin in (tuple, list):
        items = [a for a in args if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(
            value_fits(v, items[0] if items else Any) for v in value
        )
    return True


def type_text(kind) -> str:
    """``kind`` in words, for messages: "an integer", "a list of integers or null"."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_text(arm) for arm in args)
    if origin in (tuple, list):
        items = [a for a in args if a is not Ellipsis]
        inner = type_text(items[0]) if items else "values"
        return "a list of " + inner.replace("an ", "").replace("a ", "") + "s"
    words = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             dict: "an object", type(None): "null"}  # fmt: skip
    return words.get(kind, str(kind))


def pair_options(build: Callable) -> tuple[PairOption, ...]:
    """The options a builder declares: every parameter after the data with a default
    and an :class:`Option` in its ``Annotated`` annotation, in signature order.

    :raises TypeError: for a parameter after the first that lacks either.
    """
    hints = typing.get_type_hints(build, include_extras=True)
    parameters = list(inspect.signature(build).parameters.values())[1:]
    options = []
    for p in parameters:
        metadata = getattr(hints.get(p.name), "__metadata__", ())
        declared = [m for m in metadata if isinstance(m, Option)]
        if p.default is inspect.Parameter.empty or not declared:
            raise TypeError(
                f"{build.__qualname__}: parameter '{p.name}' needs a default and an "
                "annotation Annotated[type, Option(help)] (see pyro_aevb.pairs.spec)"
            )
        kind = typing.get_args(hints[p.name])[0]
        options.append(PairOption(p.name, p.default, declared[0], kind))
    return tuple(options)


@dataclass(frozen=True)
class PairSpec:
    """A named model/guide pair: how to build it, train it by default and report on it.

    :ivar name: the name on the command line (``pyro-aevb fit NAME``) and in
        ``config.json``.
    :ivar build: ``build(train, **options) -> (model, guide)``, with ``train`` in the
        pair's view; its parameters after ``train`` declare the options
        (:func:`pair_options`).
    :ivar view: ``"flat"`` (``(N, D)`` vectors) or ``"rows"`` (``(N, T, D)`` sequences).
    :ivar training: defaults of :func:`pyro_aevb.fit` settings for this pair; those it
        leaves out are :data:`TRAINING_DEFAULTS`'.
    :ivar description: one line for ``pyro-aevb fit --help``.
    :ivar metrics: ``metrics(run, evaluation) -> dict`` of extra test metrics, given the
        run's :class:`~pyro_aevb.evaluation.Evaluation`.
    :ivar summary: ``summary(metrics) -> list[str]``: the lines the command line prints
        for those extra metrics.
    :ivar figures: ``figures(run, run_dir, history)`` writes extra figures.
    :ivar history_metrics: ``history_metrics(model, guide, test_fields) -> dict`` of
        test metrics for every history row (see :func:`pyro_aevb.fit`).
    :ivar configure: ``configure(config, overrides)`` fills defaults that depend on
        other settings and rejects combinations that cannot work, before any work.
    :ivar samples: ``samples(run, n)`` draws ``n`` images for ``samples.png`` when the
        default (the mean of ``p(x | z)``, ``z`` from the prior, by running the model on
        a test batch) would not show unconditional samples.
    :ivar rows_per_point: ``rows_per_point(config) -> int``: rows of the networks per
        data point and particle in a training step (the values of an enumerated
        discrete latent), for the memory estimate; default 1.
    :ivar view_for: ``view_for(architecture) -> view``, for a pair whose view depends on
        its options (the VAE reads images with ``architecture="conv"``); default ``view``.
    """

    name: str
    build: Callable[..., tuple[nn.Module, nn.Module]]
    view: str
    training: dict = field(default_factory=dict)
    description: str = ""
    metrics: Callable[..., dict] | None = None
    summary: Callable[[dict], list[str]] | None = None
    figures: Callable[[Any, Path, Sequence], None] | None = None
    history_metrics: Callable[..., dict] | None = None
    configure: Callable[[dict, dict], None] | None = None
    samples: Callable[..., torch.Tensor] | None = None
    rows_per_point: Callable[[dict], int] | None = None
    view_for: Callable[[dict], str] | None = None

    def __post_init__(self):
        if self.view not in VIEWS:
            raise ValueError(f"pair '{self.name}': view must be one of {VIEWS}, got {self.view!r}")
        pair_options(self.build)  # a builder that declares no options properly fails here
        unknown = sorted(set(self.training) - set(TRAINING_DEFAULTS) - _OTHER_TRAINING_KEYS)
        if unknown:
            raise ValueError(
                f"pair '{self.name}': unknown training setting(s) {unknown}; the settings are "
                f"{sorted(set(TRAINING_DEFAULTS) | _OTHER_TRAINING_KEYS)}"
            )
        object.__setattr__(self, "training", {**TRAINING_DEFAULTS, **self.training})

    @property
    def parameters(self) -> tuple[PairOption, ...]:
        """The pair's options, as its builder declares them."""
        return pair_options(self.build)

    @property
    def options(self) -> dict[str, Any]:
        """The architecture options and their defaults (``config.json["architecture"]``)."""
        return {p.name: p.default for p in self.parameters}

    def option(self, name: str) -> PairOption:
        for p in self.parameters:
            if p.name == name:
                return p
        raise KeyError(name)

    def backfill(self, architecture: dict) -> dict:
        """``architecture`` with the options added after it was written (:attr:`Option.added`)
        set to their defaults, the behaviour of the version that wrote it."""
        return {
            **{p.name: p.default for p in self.parameters if p.option.added is not None},
            **architecture,
        }

    def validate(self, architecture: dict) -> None:
        """Raise ``ValueError`` for an architecture value outside its declared range."""
        for p in self.parameters:
            if p.name in architecture:
                p.validate(architecture[p.name])

    def view_of(self, architecture: dict | None = None) -> str:
        """The view this pair reads with the options ``architecture`` (``None``: the
        default view)."""
        if self.view_for is None or architecture is None:
            return self.view
        view = self.view_for(architecture)
        if view not in VIEWS:
            raise ValueError(f"pair '{self.name}': view must be one of {VIEWS}, got {view!r}")
        return view

    def prepare(self, data: Dataset, architecture: dict | None = None) -> Dataset:
        """``data`` in the view this pair reads (with the options ``architecture``)."""
        view = self.view_of(architecture)
        if view == "flat":
            return data.flat()
        if view == "image" and len(data.image_shape) != 2:
            raise ValueError(
                f"{data.name}: pair '{self.name}' reads one-channel 2-D images, but the data "
                f"have image shape {data.image_shape}; use the MLP architecture"
            )
        return data.rows()  # (N, H, W): the rows of each image, or the image itself
