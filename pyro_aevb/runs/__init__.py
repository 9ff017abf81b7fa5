"""Run directories: train a named pair end to end, write every output, reload it later.

A run directory holds ``config.json`` (everything needed to rebuild the run),
``checkpoint.pt``, ``history.csv``, ``metrics.json`` and the figures
``learning_curve.png``, ``samples.png`` and ``reconstructions.png`` (image data),
plus the pair's own (:attr:`~pyro_aevb.pairs.PairSpec.figures`). Nothing here knows a
particular pair: their options, checks and extras come from :mod:`pyro_aevb.pairs`.

The package, by what each part does:

- :mod:`.config`: the keys of ``config.json``, reading one back checked, resolving one
  from a pair's defaults and overrides;
- :mod:`.build`: the pair and data a config describes, and reloading a trained run;
- :mod:`.directory`: what ``--out``, ``--resume`` and ``--overwrite`` may find there;
- :mod:`.training_run`: fit into the run directory (:func:`train_run`);
- :mod:`.evaluation_run`: ``metrics.json`` (:func:`evaluate_run`);
- :mod:`.figures`: the run's figures (:func:`write_figures`).
"""

from .build import Run, build_run, load_run
from .config import (
    CONFIG_NAME,
    FLAGS,
    OPTIONAL_CONFIG_KEYS,
    REQUIRED_CONFIG_KEYS,
    ConfigError,
    read_config,
    resolve_config,
    validate_values,
)
from .evaluation_run import METRICS_NAME, TRAINING_KEYS, ResultsNotSavedError, evaluate_run
from .figures import write_figures
from .training_run import (
    STEP_BYTES_PER_ACTIVATION,
    fit_keywords,
    step_memory_bytes,
    train_run,
)

__all__ = [
    "CONFIG_NAME",
    "FLAGS",
    "METRICS_NAME",
    "OPTIONAL_CONFIG_KEYS",
    "REQUIRED_CONFIG_KEYS",
    "STEP_BYTES_PER_ACTIVATION",
    "TRAINING_KEYS",
    "ConfigError",
    "ResultsNotSavedError",
    "Run",
    "build_run",
    "evaluate_run",
    "fit_keywords",
    "load_run",
    "read_config",
    "resolve_config",
    "step_memory_bytes",
    "train_run",
    "validate_values",
    "write_figures",
]
