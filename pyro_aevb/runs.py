"""Run directories: train a named pair end to end, write every output, reload it later.

A run directory holds ``config.json`` (everything needed to rebuild the run),
``checkpoint.pt``, ``history.csv``, ``metrics.json`` and the figures
``learning_curve.png``, ``samples.png`` and ``reconstructions.png`` (image data),
plus the pair's own (:attr:`~pyro_aevb.pairs.PairSpec.figures`). Nothing here knows a
particular pair: their options, checks and extras come from :mod:`pyro_aevb.pairs`.
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import pyro
import torch

from . import checkpoint as ckpt
from . import plots, rundir
from .annealing import KLAnnealing
from .data import check_labels, get_transform, load_dataset, transform_test_set
from .data.dataset import Dataset
from .device import resolve_device
from .evaluation import evaluate
from .objectives import capabilities_of, make_objective, with_capability
from .pairs import PairSpec, available_pairs, get_pair
from .schedules import AlternatingSchedule
from .training import FitResult, fit, save_json
from .training.distributed import DEFAULTS as DISTRIBUTED_DEFAULTS
from .training.distributed import fit_options, resolve_settings
from .training.state import trained_modules

CONFIG_NAME = "config.json"
METRICS_NAME = "metrics.json"
#: keys every ``config.json`` holds
REQUIRED_CONFIG_KEYS = (
    "model",
    "architecture",
    "dataset",
    "transform",
    "objective",
    "num_particles",
    "epochs",
    "batch_size",
    "lr",
    "log_likelihood_particles",
    "device",
    "seed",
)
#: keys a ``config.json`` may hold besides
OPTIONAL_CONFIG_KEYS = (
    "data_dir",
    "max_train",
    "max_test",
    "patience",
    "eval_every",
    "objective_options",
    "kl_annealing",
    "schedule",
    "versions",
    "run_id",
    "optimizer",
    "clip_norm",
    "lr_schedule",
    "sync_every",
    "cuda_graph",
    *DISTRIBUTED_DEFAULTS,  # --devices, --precision, ... (pyro_aevb.training.distributed)
)
#: metrics.json keys that describe the training, not the evaluation
TRAINING_KEYS = (
    "train_seconds",
    "fit_seconds",
    "epochs_completed",
    "seconds_per_epoch",
    "stopped_early",
    "best_epoch",
    "final_train_elbo",
)
#: the command-line flag of each config key, for messages (the architecture options'
#: flags are the pairs' own, :attr:`pyro_aevb.pairs.PairOption.flag`)
FLAGS = {
    "lr": "--lr",
    "batch_size": "--batch-size",
    "num_particles": "--particles",
    "log_likelihood_particles": "--eval-particles",
    "epochs": "--epochs",
    "max_train": "--max-train",
    "max_test": "--max-test",
    "patience": "--patience",
    "eval_every": "--eval-every",
    "seed": "--seed",
    "sync_every": "--sync-every",
}


class ConfigError(ValueError):
    """A ``config.json`` that cannot be read back: invalid JSON, unknown or missing keys,
    or values out of range."""


class ResultsNotSavedError(OSError):
    """Metrics were computed but could not be written; ``metrics`` holds them."""

    def __init__(self, message: str, metrics: dict, cause: OSError):
        super().__init__(cause.errno, message)
        self.metrics = metrics


def _name(key: str) -> str:
    return f"{FLAGS[key]} ({key})" if key in FLAGS else key


def validate_values(config: dict) -> None:
    """Raise ``ValueError`` for settings that cannot define a run (``lr`` <= 0, a latent
    dimension or data subset of 0, ...), naming the option. Checked before any work: such
    values would otherwise train silently on something else (``max_train=0`` once meant
    all the data) or fail late."""

    def integer(key, value, minimum):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{_name(key)} must be an integer >= {minimum}, got {value!r}")

    for key in ("batch_size", "num_particles", "log_likelihood_particles"):
        integer(key, config.get(key), 1)
    for key in ("max_train", "max_test", "patience", "eval_every"):
        if config.get(key) is not None:
            integer(key, config[key], 1)
    if config.get("epochs") is not None:
        integer("epochs", config["epochs"], 0)
    if config.get("seed") is not None:
        integer("seed", config["seed"], 0)
    lr = config.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (
        math.isfinite(lr) and lr > 0
    ):
        raise ValueError(
            f"{_name('lr')} must be a positive finite learning rate, got {lr!r} "
            "(at 0 nothing would train)"
        )
    if config.get("model") is not None:
        get_pair(config["model"]).validate(config.get("architecture") or {})


def read_config(run_dir: str | Path) -> dict:
    """The ``config.json`` of a run directory, checked: valid JSON, no unknown and no
    missing keys, a known model with its architecture options, values in range.

    :raises FileNotFoundError: if there is none (not a run directory).
    :raises ConfigError: naming the file and the key (or the line of a JSON error).
    """
    path = Path(run_dir) / CONFIG_NAME
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {CONFIG_NAME})")
    advice = "restore the file, or start the run afresh with --overwrite"
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); it was "
            f"edited or damaged: {advice}"
        ) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not a text file ({e}); {advice}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{path} holds a JSON {type(config).__name__}, not an object; {advice}")
    missing = [k for k in REQUIRED_CONFIG_KEYS if k not in config]
    unknown = sorted(set(config) - set(REQUIRED_CONFIG_KEYS) - set(OPTIONAL_CONFIG_KEYS))
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing key(s) {missing}")
        if unknown:
            parts.append(f"unknown key(s) {unknown}")
        raise ConfigError(
            f"{path}: {' and '.join(parts)}; a run's config.json has the keys "
            f"{list(REQUIRED_CONFIG_KEYS)} and optionally {list(OPTIONAL_CONFIG_KEYS)}; {advice}"
        )
    try:
        spec = get_pair(config["model"])
    except ValueError as e:
        raise ConfigError(f"{path}: key 'model': {e}") from None
    architecture = config["architecture"]
    if not isinstance(architecture, dict):
        raise ConfigError(f"{path}: key 'architecture' must be an object, got {architecture!r}")
    missing = sorted(set(spec.options) - set(architecture))
    unknown = sorted(set(architecture) - set(spec.options))
    if missing or unknown:
        raise ConfigError(
            f"{path}: architecture of '{config['model']}' "
            + (f"misses {['architecture.' + k for k in missing]} " if missing else "")
            + (f"has unknown {['architecture.' + k for k in unknown]} " if unknown else "")
            + f"(its options are {sorted(spec.options)}); {advice}"
        )
    try:
        validate_values(config)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}; {advice}") from None
    return config


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
    train, test = spec.prepare(train), spec.prepare(test)
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
        if not capabilities_of(config["objective"]).kl_weight:
            raise ValueError(
                f"--kl-weight/--kl-warmup apply to the objectives {with_capability('kl_weight')}, "
                f"not '{config['objective']}'"
            )
    if config.get("schedule"):
        schedule = AlternatingSchedule(**config["schedule"])  # validates the numbers
        if schedule.total_steps is not None and overrides.get("epochs") is None:
            config["epochs"] = None  # until the schedule ends
    if spec.configure is not None:
        spec.configure(config, overrides)
    validate_values(config)
    transform = get_transform(config["transform"])
    if config["architecture"].get("likelihood", "") is None:
        config["architecture"]["likelihood"] = transform.likelihood
    for key, value in config["architecture"].items():
        if isinstance(value, tuple):
            config["architecture"][key] = list(value)  # as config.json reads back
    make_objective(
        config["objective"], config["num_particles"], **config.get("objective_options", {})
    )
    resolve_device(config.get("device", "cpu"))
    # --devices, --precision, ...: refused here, before any work, when they cannot run
    resolve_settings(
        **fit_options(config), device=config.get("device", "cpu"), run_dir=".", command_line=True
    )
    config.setdefault("device", "cpu")
    config.setdefault("seed", 0)
    return config


def _versions() -> dict:
    return {
        "pyro_aevb": __import__("pyro_aevb").__version__,
        "pyro": pyro.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _check_parents(run_dir: Path) -> None:
    for parent in (run_dir, *run_dir.parents):
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(
                    f"--out {run_dir}: {parent} is a file, not a folder; choose another --out"
                )
            break


def _check_run_directory(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refusals that need no data and touch nothing."""
    checkpoint_path = run_dir / ckpt.CHECKPOINT_NAME
    if resume and not checkpoint_path.exists():
        raise FileNotFoundError(
            f"--resume: no {ckpt.CHECKPOINT_NAME} in {run_dir}, so there is nothing to "
            "continue (the run did not finish an epoch); start it without --resume"
        )
    if checkpoint_path.exists() and not (resume or overwrite):
        raise FileExistsError(
            f"{checkpoint_path} exists; use --resume to continue it, --overwrite to start "
            "afresh, or another --out"
        )
    foreign = rundir.foreign_files(run_dir)
    if foreign and not rundir.is_run_directory(run_dir) and not overwrite:
        more = f" and {len(foreign) - 5} more" if len(foreign) > 5 else ""
        shown = ", ".join(foreign[:5]) + more
        raise rundir.RunDirectoryError(
            f"--out {run_dir} is a folder with other files ({shown}) and no pyro-aevb run; "
            "choose an empty or new --out, or pass --overwrite to write the run next to "
            "them (they are kept: --overwrite removes only pyro-aevb's own files)"
        )


def _resume_config(run_dir: Path, config: dict) -> dict:
    """The stored config of the run to resume, after refusing any change of a setting
    that defines the run (every difference named); nothing is written."""
    stored = read_config(run_dir)
    differences = rundir.config_differences(stored, config)
    if differences:
        raise rundir.RunDirectoryError(
            f"cannot resume {run_dir} with different settings (stored in config.json -> "
            "now): " + "; ".join(differences) + ". Pass the options of the original run "
            "(see its config.json), or start a new run with another --out (or --overwrite)"
        )
    state = ckpt.load(run_dir / ckpt.CHECKPOINT_NAME)
    _check_same_run(run_dir, stored, state)
    return stored


def train_run(config: dict, run_dir: str | Path, resume=False, overwrite=False, progress=True):
    """Fit the pair of ``config``, evaluate it and write the whole run directory.

    Everything that can be refused is refused before a file is written: a foreign
    non-empty folder, an existing run without ``resume``/``overwrite``, a resume whose
    settings differ from the stored ``config.json`` (every difference named), a run
    directory another live process is fitting into (:class:`~pyro_aevb.rundir.RunLock`),
    the data and labels. ``overwrite`` removes only pyro-aevb's own files. A fresh run
    that fails before its first checkpoint leaves no ``config.json`` behind.

    :returns: ``(run, fit_result, metrics)``.
    """
    run_dir = Path(run_dir)
    _check_parents(run_dir)
    if resume and overwrite:
        raise ValueError("--resume continues a run and --overwrite discards it: pass one")
    created = not run_dir.exists()
    try:
        # the lock first: a live fit in this directory is named before anything else
        with rundir.RunLock(run_dir):
            return _train_locked(config, run_dir, resume, overwrite, progress)
    finally:
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only if the failed command left it empty


#: bytes per activation of one row in a training step: float32 forward value, its
#: gradient and the autograd graph's saved copy
STEP_BYTES_PER_ACTIVATION = 12


def step_memory_bytes(run: Run, config: dict) -> int:
    """A rough estimate of one training step's memory: rows (particles x batch points x
    the pair's :attr:`~pyro_aevb.pairs.PairSpec.rows_per_point`) x activations per row
    (the widths of the pair's linear layers and the data) x
    :data:`STEP_BYTES_PER_ACTIVATION`."""
    widths = [
        m.out_features
        for module in (run.model, run.guide)
        for m in module.modules()
        if isinstance(m, torch.nn.Linear)
    ]
    per_row = sum(widths) + run.train.num_features
    rows_per_point = run.spec.rows_per_point
    enumerated = 1 if rows_per_point is None else rows_per_point(config)
    rows = int(config["num_particles"]) * min(int(config["batch_size"]), len(run.train))
    return STEP_BYTES_PER_ACTIVATION * rows * enumerated * per_row


def _check_step_memory(run: Run, config: dict) -> None:
    from .evaluation import available_memory_bytes

    need = step_memory_bytes(run, config)
    have = available_memory_bytes(resolve_device(config["device"]))
    if have is not None and need > have:
        raise MemoryError(
            f"a training step with --particles {config['num_particles']} and --batch-size "
            f"{config['batch_size']} needs about {need / 2**30:.1f} GiB (rough estimate: "
            f"{config['num_particles']} x {config['batch_size']} rows through the networks) "
            f"and {have / 2**30:.1f} GiB are available; use fewer particles or a smaller batch"
        )


def _train_locked(config, run_dir: Path, resume, overwrite, progress):
    _check_run_directory(run_dir, resume, overwrite)
    stored = _resume_config(run_dir, config) if resume else None
    run = build_run(config)
    _check_step_memory(run, config)
    rundir.remove_orphan_temporaries(run_dir)  # ours, left by a killed write
    rundir.check_writable(run_dir, "the run's files")
    run_id = (stored or {}).get("run_id") or rundir.new_run_id()
    config = dict(config, run_id=run_id, versions=_versions())
    if overwrite:
        rundir.clear_own_files(run_dir)
    config_path = run_dir / CONFIG_NAME
    checkpoint_path = run_dir / ckpt.CHECKPOINT_NAME
    if stored is None:
        save_json(config, config_path)
    t0 = time.perf_counter()
    try:
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
            sync_every=config.get("sync_every"),
            cuda_graph=bool(config.get("cuda_graph")),
            seed=config["seed"],
            run_dir=run_dir,
            resume=resume,
            overwrite=overwrite,
            patience=config.get("patience"),
            schedule=AlternatingSchedule(**config["schedule"]) if config.get("schedule") else None,
            eval_every=config.get("eval_every"),
            kl_annealing=(
                KLAnnealing(**config["kl_annealing"]) if config.get("kl_annealing") else None
            ),
            history_metrics=run.spec.history_metrics,
            run_metadata={"run_id": run_id},
            progress=progress,
            **fit_options(config),  # --devices, --precision, ... (data-parallel runs)
        )
    except BaseException:
        if stored is None and not checkpoint_path.exists():
            # failed before its first checkpoint: no stub config.json is left behind
            with contextlib.suppress(FileNotFoundError):
                config_path.unlink()
        raise
    fit_seconds = time.perf_counter() - t0
    if stored is not None and rundir.config_differences(stored, config, allowed=("versions",)):
        save_json(config, config_path)  # e.g. more epochs: the file says what was run
    run.config = config
    write_figures(run, run_dir, result.history)
    metrics = evaluate_run(
        run, run_dir, config["log_likelihood_particles"], result, fit_seconds, progress=progress
    )
    return run, result, metrics


def _training_metrics(result: FitResult | None, state: dict | None, previous: dict) -> dict:
    """The training keys of metrics.json, from the fit that just ran or else recomputed
    from the checkpoint; only ``fit_seconds`` (wall clock of a past command, stored
    nowhere else) is carried over from the previous file, by name."""
    if result is not None:
        history, seconds, epochs = result.history, result.train_seconds, result.epochs_completed
        stopped, best_epoch = result.stopped_early, result.best_epoch
    elif state is not None:
        recorded = state.get("history") or {}
        history, seconds = recorded.get("rows") or [], state.get("train_seconds")
        epochs, stopped = state.get("epoch"), recorded.get("stopped")
        best_epoch = (recorded.get("best") or {}).get("epoch")
    else:
        return {}
    out = {
        "train_seconds": seconds,
        "epochs_completed": epochs,
        "seconds_per_epoch": seconds / max(1, epochs) if seconds is not None and epochs else None,
        "stopped_early": stopped,
        "best_epoch": best_epoch,
        "final_train_elbo": history[-1]["train_elbo"] if history else None,
    }
    if result is None and previous.get("fit_seconds") is not None:
        out["fit_seconds"] = previous["fit_seconds"]
    return out


def evaluate_run(
    run: Run,
    run_dir: Path,
    particles: int,
    result: FitResult | None = None,
    fit_seconds: float | None = None,
    metrics_path: str | Path | None = None,
    progress: bool = False,
) -> dict:
    """Evaluate the run's pair on its test set and write ``metrics.json`` afresh.

    The file holds this evaluation's metrics and the training keys (from ``result``, or
    recomputed from the checkpoint): nothing of an earlier evaluation survives in it.

    :param metrics_path: where to write (default ``run_dir/metrics.json``).
    :raises ResultsNotSavedError: if the file cannot be written; it carries the metrics.
    """
    run_dir = Path(run_dir)
    path = Path(metrics_path) if metrics_path is not None else run_dir / METRICS_NAME
    t0 = time.perf_counter()
    ev = evaluate(
        run.model,
        run.guide,
        run.test,
        transform=run.config["transform"],
        num_particles=particles,
        seed=run.config.get("seed", 0),
        progress=progress,
    )
    metrics = ev.metrics()
    if run.spec.metrics is not None:
        metrics.update(run.spec.metrics(run, ev))
    metrics["evaluation_seconds"] = time.perf_counter() - t0
    previous = {}
    with contextlib.suppress(OSError, ValueError):
        previous = json.loads((run_dir / METRICS_NAME).read_text())
    state = None
    if result is None:
        with contextlib.suppress(OSError, ValueError):
            state = ckpt.load(run_dir / ckpt.CHECKPOINT_NAME)
    training = _training_metrics(result, state, previous)
    if result is not None:
        training["fit_seconds"] = fit_seconds
    out = {**training, **metrics}
    if run.config.get("run_id"):
        out["run_id"] = run.config["run_id"]
    try:
        save_json(out, path)
    except OSError as e:
        raise ResultsNotSavedError(
            f"could not write {path} ({e.strerror or e}); the metrics above were computed "
            "but not saved: free space or fix the permissions and run 'pyro-aevb evaluate' "
            "again, or pass --out FILE to write them elsewhere",
            out,
            e,
        ) from e
    return out


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
        labels = batch.get("y")
        shown = plots.spread_over_classes(labels.cpu() if labels is not None else None, 30, len(x))
        plots.save(
            plots.reconstructions_figure(x[shown], recon[shown], shape),
            run_dir / "reconstructions.png",
        )
