"""Run directories: train a named pair end to end, write every output, reload it later.

A run directory holds ``config.json`` (everything needed to rebuild the run),
``checkpoint.pt``, ``history.csv``, ``metrics.json`` and the figures
``learning_curve.png``, ``samples.png`` and ``reconstructions.png`` (image data),
plus the pair's own (``evidence.png`` and ``predictive_check.png`` for factor
analysis, ``class_conditional.png`` for the conditional VAE).
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch

from . import checkpoint as ckpt
from . import plots
from .annealing import WEIGHTABLE_OBJECTIVES, KLAnnealing
from .data import get_transform, load_dataset, transform_test_set
from .data.dataset import Dataset
from .device import resolve_device
from .evaluation import evaluate
from .objectives import make_objective
from .pairs import PairSpec, available_pairs, get_pair
from .schedules import AlternatingSchedule
from .training import FitResult, fit, save_json
from .training.state import trained_modules


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
    if config.get("max_train"):
        train = train.subset(range(min(config["max_train"], len(train))))
    if config.get("max_test"):
        test = test.subset(range(min(config["max_test"], len(test))))
    train, test = spec.prepare(train), spec.prepare(test)
    # Seed before the modules draw their initial weights, so a run is reproducible.
    pyro.set_rng_seed(config.get("seed", 0))
    model, guide = spec.build(train, **config["architecture"])
    return Run(config, spec, model, guide, train, test)


def resolve_config(model: str, overrides: dict) -> dict:
    """The pair's defaults updated by the non-``None`` ``overrides``; validates names."""
    spec = get_pair(model)
    config = {"model": model, **spec.training, "architecture": dict(spec.options)}
    architecture_keys = {k for name in available_pairs() for k in get_pair(name).options}
    for key, value in overrides.items():
        if value is None:
            continue
        if key in spec.options:
            config["architecture"][key] = value
        elif key in architecture_keys:
            raise ValueError(
                f"model '{model}' has no option '{key}'; its options are {sorted(spec.options)}"
            )
        else:
            config[key] = value
    if config.get("kl_annealing"):
        KLAnnealing(**config["kl_annealing"])  # validates the numbers
        if config["objective"] not in WEIGHTABLE_OBJECTIVES:
            raise ValueError(
                f"--kl-weight/--kl-warmup apply to the objectives {list(WEIGHTABLE_OBJECTIVES)}, "
                f"not '{config['objective']}'"
            )
    if config.get("schedule"):
        schedule = AlternatingSchedule(**config["schedule"])  # validates the numbers
        if schedule.total_steps is not None and overrides.get("epochs") is None:
            config["epochs"] = None  # until the schedule ends
    if spec.configure is not None:
        spec.configure(config, overrides)
    transform = get_transform(config["transform"])
    if config["architecture"].get("likelihood", "") is None:
        config["architecture"]["likelihood"] = transform.likelihood
    if isinstance(config["architecture"].get("hidden"), tuple):
        config["architecture"]["hidden"] = list(config["architecture"]["hidden"])
    make_objective(
        config["objective"], config["num_particles"], **config.get("objective_options", {})
    )
    resolve_device(config.get("device", "cpu"))
    config.setdefault("device", "cpu")
    config.setdefault("seed", 0)
    return config


def train_run(config: dict, run_dir: str | Path, resume=False, overwrite=False, progress=True):
    """Fit the pair of ``config``, evaluate it and write the whole run directory.

    :returns: ``(run, fit_result, metrics)``.
    """
    run_dir = Path(run_dir)
    checkpoint_path = run_dir / ckpt.CHECKPOINT_NAME
    if checkpoint_path.exists() and not (resume or overwrite):
        raise FileExistsError(
            f"{checkpoint_path} exists; use --resume to continue it, --overwrite to start "
            "afresh, or another --out"
        )
    run = build_run(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = dict(
        config,
        versions={
            "pyro_aevb": __import__("pyro_aevb").__version__,
            "pyro": pyro.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    )
    save_json(config, run_dir / "config.json")
    t0 = time.perf_counter()
    result = fit(
        run.model,
        run.guide,
        run.train,
        run.test,
        transform=config["transform"],
        objective=config["objective"],
        num_particles=config["num_particles"],
        objective_options=config.get("objective_options") or None,
        epochs=config["epochs"],
        batch_size=config["batch_size"],
        lr=config["lr"],
        optimizer=config.get("optimizer") or "adam",
        clip_norm=config.get("clip_norm"),
        lr_schedule=config.get("lr_schedule"),
        device=config["device"],
        seed=config["seed"],
        run_dir=run_dir,
        resume=resume,
        overwrite=overwrite,
        patience=config.get("patience"),
        schedule=AlternatingSchedule(**config["schedule"]) if config.get("schedule") else None,
        eval_every=config.get("eval_every"),
        kl_annealing=KLAnnealing(**config["kl_annealing"]) if config.get("kl_annealing") else None,
        history_metrics=run.spec.history_metrics,
        progress=progress,
    )
    fit_seconds = time.perf_counter() - t0
    metrics = evaluate_run(run, run_dir, config["log_likelihood_particles"], result, fit_seconds)
    write_figures(run, run_dir, result.history)
    return run, result, metrics


def evaluate_run(
    run: Run,
    run_dir: Path,
    particles: int,
    result: FitResult | None = None,
    fit_seconds: float | None = None,
) -> dict:
    """Evaluate the run's pair on its test set and write ``metrics.json``."""
    t0 = time.perf_counter()
    ev = evaluate(
        run.model,
        run.guide,
        run.test,
        transform=run.config["transform"],
        num_particles=particles,
        seed=run.config.get("seed", 0),
    )
    metrics = ev.metrics()
    if run.spec.metrics is not None:
        metrics.update(run.spec.metrics(run, ev))
    metrics["evaluation_seconds"] = time.perf_counter() - t0
    path = Path(run_dir) / "metrics.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    if result is not None:
        previous.update(
            train_seconds=result.train_seconds,
            fit_seconds=fit_seconds,
            epochs_completed=result.epochs_completed,
            seconds_per_epoch=result.train_seconds / max(1, result.epochs_completed),
            stopped_early=result.stopped_early,
            best_epoch=result.best_epoch,
            final_train_elbo=result.history[-1]["train_elbo"] if result.history else None,
        )
    previous.update(metrics)
    save_json(previous, path)
    return previous


def load_run(run_dir: str | Path, device: str | None = None) -> Run:
    """Rebuild a finished (or interrupted) run from its directory with trained parameters.

    Uses the best parameters when early stopping kept them, else the last epoch's.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / "config.json"
    if not config_path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no config.json)")
    config = json.loads(config_path.read_text())
    if device is not None:
        config["device"] = device
    run = build_run(config)
    state = ckpt.load(run_dir / ckpt.CHECKPOINT_NAME)
    modules = trained_modules(state)
    run.model.load_state_dict(modules["model"])
    run.guide.load_state_dict(modules["guide"])
    dev = resolve_device(config["device"])
    run.model.to(dev)
    run.guide.to(dev)
    return run


def write_figures(run: Run, run_dir: Path, history) -> None:
    """``learning_curve.png``, for images ``samples.png`` and ``reconstructions.png``,
    and the pair's own figures."""
    run_dir = Path(run_dir)
    dev = next(run.model.parameters()).device
    plots.save(plots.learning_curve(history), run_dir / "learning_curve.png")
    if run.spec.figures is not None:
        run.spec.figures(run, run_dir, history)
    transform = get_transform(run.config["transform"])
    # Evenly spaced test points: bundled data sets are ordered by class.
    index = torch.linspace(0, len(run.test) - 1, min(100, len(run.test))).long()
    x = transform_test_set(run.test.x[index], transform, run.test.levels).to(dev)
    batch = {"x": x}
    if run.test.y is not None:
        batch["y"] = run.test.y[index].to(dev)
    shape = run.test.image_shape
    if len(shape) == 2:
        if run.spec.samples is not None:
            samples = run.spec.samples(run, x.shape[0])
        else:
            samples = plots.prior_predictive_mean(run.model, batch, seed=run.config.get("seed", 0))
        plots.save(
            plots.image_grid(samples, shape, title="samples: mean of p(x | z), z ~ p(z)"),
            run_dir / "samples.png",
        )
        recon = plots.reconstruction_mean(run.model, run.guide, batch)
        every = max(1, x.shape[0] // 30)  # 30 digits spread over the classes
        plots.save(
            plots.reconstructions_figure(x[::every][:30], recon[::every][:30], shape),
            run_dir / "reconstructions.png",
        )
