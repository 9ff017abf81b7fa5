"""Named model/guide pairs with their training defaults, for the command line.

A small registry: each entry builds ``(model, guide)`` for a data set and knows
the view of the data it reads and its default training settings. Later models
(factor analysis, CVAE, GMVAE, VRNN) register themselves the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from .data.dataset import Dataset


@dataclass(frozen=True)
class PairSpec:
    """How to build a named pair and train it by default.

    :ivar build: ``build(train, **options) -> (model, guide)``, with ``train`` in the
        pair's view and ``options`` the pair's architecture options.
    :ivar view: ``"flat"`` (``(N, D)`` vectors) or ``"rows"`` (``(N, T, D)`` sequences).
    :ivar options: architecture options and their defaults.
    :ivar training: defaults of :func:`pyro_aevb.fit` settings for this pair.
    """

    name: str
    build: Callable[..., tuple[nn.Module, nn.Module]]
    view: str
    options: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)

    def prepare(self, data: Dataset) -> Dataset:
        """``data`` in the view this pair reads."""
        return data.flat() if self.view == "flat" else data.rows()


_PAIRS: dict[str, PairSpec] = {}


def register_pair(spec: PairSpec) -> PairSpec:
    if spec.name in _PAIRS:
        raise ValueError(f"a pair named '{spec.name}' is already registered")
    _PAIRS[spec.name] = spec
    return spec


def available_pairs() -> list[str]:
    return sorted(_PAIRS)


def get_pair(name: str) -> PairSpec:
    if name not in _PAIRS:
        raise ValueError(f"unknown model '{name}'; choose one of {available_pairs()}")
    return _PAIRS[name]


def _build_vae(train: Dataset, z_dim, hidden, likelihood, dropout):
    from .guides import DiagonalNormalEncoder
    from .models import VAE

    x_dim = train.num_features
    model = VAE(x_dim, z_dim, hidden, likelihood=likelihood, dropout=dropout)
    guide = DiagonalNormalEncoder(x_dim, z_dim, hidden, dropout=dropout)
    return model, guide


#: The default VAE: the tutorial paper's architecture (section 5.3), trained on the
#: bundled MNIST subset with dynamic binarization; 100 epochs take about a minute
#: on two CPU cores.
VAE_PAIR = register_pair(
    PairSpec(
        name="vae",
        build=_build_vae,
        view="flat",
        options={"z_dim": 20, "hidden": (500, 500), "likelihood": None, "dropout": 0.0},
        training={
            "dataset": "mnist-subset",
            "transform": "dynamic",
            "objective": "elbo",
            "num_particles": 1,
            "epochs": 100,
            "batch_size": 100,
            "lr": 1e-3,
            "log_likelihood_particles": 1000,
        },
    )
)
