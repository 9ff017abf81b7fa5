"""Building a named run's pair and data from its config, and reloading a trained one."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyro
import torch

from .. import checkpoint as ckpt
from .. import rundir
from ..data import check_labels, load_dataset
from ..data.dataset import Dataset
from ..device import resolve_device
from ..pairs import PairSpec, get_pair
from ..training.state import trained_modules
from .config import CONFIG_NAME, read_config


@dataclass
class Run:
    """A named pair with its data, as described by a run's ``config.json``."""

    config: dict
    spec: PairSpec
    model: torch.nn.Module
    guide: torch.nn.Module
    train: Dataset
    test: Dataset


def build_run(config: dict) -> Run:
    """Load the data and build the pair that ``config`` describes (no training)."""
    spec = get_pair(config["model"])
    train, test = load_dataset(config["dataset"], config.get("data_dir"))
    if config.get("max_train") is not None:
        train = train.subset(range(min(config["max_train"], len(train))))
    if config.get("max_test") is not None:
        test = test.subset(range(min(config["max_test"], len(test))))
    train, test = (spec.prepare(d, config["architecture"]) for d in (train, test))
    # Seed before the modules draw their initial weights, so a run is reproducible.
    pyro.set_rng_seed(config.get("seed", 0))
    model, guide = spec.build(train, **config["architecture"])
    num_classes = getattr(model, "num_classes", None)
    if isinstance(num_classes, int):
        # every label, not only the first batch's: one deep in the data would fail late
        for name, data in (("training", train), ("test", test)):
            if data.y is not None:
                check_labels(data.y, num_classes, f"{data.name} {name} labels")
    return Run(config, spec, model, guide, train, test)


def _check_same_run(run_dir: Path, config: dict, state: dict) -> None:
    """Refuse a checkpoint that belongs to another run than ``config.json``: a different
    run id, or (checkpoints without one) different training settings."""
    stored_id, config_id = ckpt.stored_run_id(state), config.get("run_id")
    if stored_id is not None and config_id is not None and stored_id != config_id:
        raise rundir.RunDirectoryError(
            f"{run_dir}: checkpoint.pt belongs to run {stored_id} but config.json to run "
            f"{config_id}; the two files come from different runs (copied together?). "
            "Put the checkpoint back with its own config.json"
        )
    fit_config = state.get("config") or {}
    for key in ("objective", "lr", "seed"):
        if key in fit_config and fit_config[key] != config.get(key):
            raise rundir.RunDirectoryError(
                f"{run_dir}: checkpoint.pt was trained with {key}={fit_config[key]!r} but "
                f"config.json says {config.get(key)!r}; the two files come from different "
                "runs. Put the checkpoint back with its own config.json"
            )


def load_run(run_dir: str | Path, device: str | None = None) -> Run:
    """Rebuild a finished (or interrupted) run from its directory with trained parameters.

    Uses the best parameters when early stopping kept them, else the last epoch's.
    Refuses an edited ``config.json`` (:class:`ConfigError`), a damaged checkpoint
    (:class:`~pyro_aevb.checkpoint.CheckpointError`) and a checkpoint of another run.
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    checkpoint_path = run_dir / ckpt.CHECKPOINT_NAME
    if not checkpoint_path.exists():
        raise FileNotFoundError(
            f"{run_dir} has no {ckpt.CHECKPOINT_NAME}: the run did not finish an epoch; "
            "resume it with 'pyro-aevb fit ... --resume' or start it again"
        )
    state = ckpt.load(checkpoint_path)
    if "modules" not in state:
        raise ckpt.CheckpointError(
            f"{checkpoint_path} is damaged (it holds no module states): restore it from a "
            "copy, or start the run afresh with --overwrite"
        )
    _check_same_run(run_dir, config, state)
    if device is not None:
        config["device"] = device
    run = build_run(config)
    modules = trained_modules(state)
    try:
        run.model.load_state_dict(modules["model"])
        run.guide.load_state_dict(modules["guide"])
    except (RuntimeError, KeyError) as e:
        raise rundir.RunDirectoryError(
            f"{checkpoint_path} does not fit the model that {run_dir / CONFIG_NAME} "
            f"describes ({str(e).splitlines()[0]}); config.json was edited or belongs to "
            "another run"
        ) from e
    dev = resolve_device(config["device"])
    run.model.to(dev)
    run.guide.to(dev)
    return run
