"""A run's ``config.json``: its keys, the flags that set them, reading one back checked
(valid JSON, known keys, the right types, values in range) and resolving one from a pair's
defaults and the user's overrides."""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..annealing import KLAnnealing
from ..data import get_transform
from ..device import resolve_device
from ..objectives import capabilities_of, make_objective, with_capability
from ..pairs import available_pairs, get_pair
from ..pairs.spec import type_text, value_fits
from ..schedules import AlternatingSchedule
from ..training.distributed import DEFAULTS as DISTRIBUTED_DEFAULTS
from ..training.distributed import fit_options, resolve_settings

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
    "clip_value",
    "lr_schedule",
    "sync_every",
    "cuda_graph",
    *DISTRIBUTED_DEFAULTS,  # --devices, --precision, ... (pyro_aevb.training.distributed)
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


#: the JSON type of each config key that :func:`validate_values` does not check itself
#: (the integers and the learning rate it does, with their ranges)
CONFIG_TYPES = {
    "model": str,
    "architecture": dict,
    "dataset": str,
    "transform": str,
    "objective": str,
    "device": str,
    "data_dir": str | None,
    "objective_options": dict | None,
    "kl_annealing": dict | None,
    "schedule": dict | None,
    "versions": dict | None,
    "run_id": str | None,
    "optimizer": str | None,
    "clip_norm": float | None,
    "clip_value": float | None,
    "lr_schedule": str | None,
    "sync_every": int | None,
    "cuda_graph": bool | None,
    "devices": int | None,
    "strategy": str | None,
    "num_nodes": int | None,
    "accelerator": str | None,
    "precision": str | None,
    "logger": str | None,
}


def check_types(config: dict) -> None:
    """Raise ``ValueError`` naming the key, its expected JSON type and the value, for a
    value of the wrong type (an edited ``config.json``: ``"lr": "0.001"``,
    ``"hidden": ["500"]``), before it reaches code that would fail deep inside."""
    for key, kind in CONFIG_TYPES.items():
        if key in config and not value_fits(config[key], kind):
            value = config[key]
            raise ValueError(
                f"key '{key}' must be {type_text(kind)}, got {value!r} ({type(value).__name__})"
            )


class ConfigError(ValueError):
    """A ``config.json`` that cannot be read back: invalid JSON, unknown or missing keys,
    or values out of range."""


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
    if (
        isinstance(lr, bool)
        or not isinstance(lr, (int, float))
        or not (math.isfinite(lr) and lr > 0)
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
        check_types(config)
    except ValueError as e:
        raise ConfigError(f"{path}: {e}; {advice}") from None
    try:
        spec = get_pair(config["model"])
    except ValueError as e:
        raise ConfigError(f"{path}: key 'model': {e}") from None
    architecture = config["architecture"]
    if not isinstance(architecture, dict):
        raise ConfigError(f"{path}: key 'architecture' must be an object, got {architecture!r}")
    architecture = config["architecture"] = spec.backfill(architecture)  # older runs
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


#: keys of a run's ``config.json`` that record the run, not a setting: a config read with
#: ``--config`` drops them (the new run gets its own) and ``--print-config`` omits them
BOOKKEEPING_KEYS = ("run_id", "versions")


def settings_file_overrides(path: str | Path, model: str) -> dict:
    """The settings of a JSON config file (``pyro-aevb fit PAIR --config FILE``), as the
    overrides of :func:`resolve_config`: architecture options flattened, bookkeeping keys
    dropped. A run's own ``config.json`` works; so does a file of only some keys (the
    others take the pair's defaults). Keys set to ``null`` stay ``null``.

    :raises ConfigError: naming the file, for invalid JSON, unknown keys, a value of the
        wrong type or another pair's config.
    """
    path = Path(path)
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"--config {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})"
        ) from None
    if not isinstance(stored, dict):
        raise ConfigError(f"--config {path} holds a JSON {type(stored).__name__}, not an object")
    known = set(REQUIRED_CONFIG_KEYS) | set(OPTIONAL_CONFIG_KEYS)
    unknown = sorted(set(stored) - known)
    if unknown:
        raise ConfigError(
            f"--config {path}: unknown key(s) {unknown}; a config has the keys {sorted(known)}"
        )
    try:
        check_types(stored)
    except ValueError as e:
        raise ConfigError(f"--config {path}: {e}") from None
    if stored.get("model", model) != model:
        raise ConfigError(
            f"--config {path} is a config of '{stored['model']}', not '{model}': use "
            f"'pyro-aevb fit {stored['model']} --config {path}'"
        )
    overrides = {k: v for k, v in stored.items() if k not in ("model", "architecture")}
    for key in BOOKKEEPING_KEYS:
        overrides.pop(key, None)
    overrides.update(stored.get("architecture") or {})
    try:
        resolve_config(model, overrides)  # the file's values alone, so that it is named
    except ValueError as e:
        raise ConfigError(f"--config {path}: {e}") from None
    return overrides


def apply_nulls(config: dict, overrides: dict) -> dict:
    """``config`` with the top-level keys that ``overrides`` sets to ``null`` set to
    ``None`` (:func:`resolve_config` skips ``None`` overrides as "not given", which would
    put back a pair's default for a setting the file switched off), validated again."""
    nulls = {k for k, v in overrides.items() if v is None and k in config and k != "model"}
    if nulls:
        config = {**config, **dict.fromkeys(nulls)}
        validate_values(config)
    return config
