"""Plugins: a user's own pair and objective modules, in the folder where ``pyro-aevb`` runs,
found through ``PYRO_AEVB_PLUGINS`` (or the older ``PYRO_AEVB_PAIRS``) without
``PYTHONPATH`` (issue 21.6). Each case runs the installed command in a new process, as a
user would, from a temporary folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from tests.test_pairs import _readme_pair_module

#: an objective of the user's own: Pyro's Trace_ELBO under another name, registered with
#: a capability (so that --kl-weight is accepted for it)
OBJECTIVE_MODULE = """
import pyro

from pyro_aevb.objectives import Capabilities, ObjectiveSpec, register_objective


def _my_elbo(num_particles=1):
    return pyro.infer.Trace_ELBO(num_particles=num_particles, vectorize_particles=True)


register_objective(
    ObjectiveSpec("my-elbo", _my_elbo, "my own ELBO", capabilities=Capabilities(kl_weight=True))
)
"""

TINY = ["--dataset", "digits", "--epochs", "1", "--max-train", "200", "--max-test", "50"]


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "my_pairs.py").write_text(_readme_pair_module())
    (tmp_path / "my_objectives.py").write_text(OBJECTIVE_MODULE)
    return tmp_path


def _run(folder, words, **variables):
    exe = shutil.which("pyro-aevb") or pytest.skip("the pyro-aevb command is not installed")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYRO_AEVB_")}
    env.pop("PYTHONPATH", None)  # the current folder is found without it
    env.update(variables)
    return subprocess.run(
        [exe, *words], cwd=folder, capture_output=True, text=True, env=env, timeout=300
    )


def test_a_users_pair_and_objective_from_the_current_folder(folder):
    words = ["fit", "shallow-vae", *TINY, "--width", "16", "--latent-dim", "3"]
    words += ["--objective", "my-elbo", "--kl-weight", "0.5", "--eval-particles", "20"]
    words += ["--no-progress", "--out", "run"]
    done = _run(folder, words, PYRO_AEVB_PLUGINS="my_pairs,my_objectives")
    assert done.returncode == 0, done.stderr
    config = json.loads((folder / "run" / "config.json").read_text())
    assert config["model"] == "shallow-vae" and config["objective"] == "my-elbo"
    assert config["kl_annealing"]["final"] == 0.5
    # the stored run names the plugin objective and pair: evaluate finds them the same way
    done = _run(folder, ["evaluate", "run", "--particles", "5"], PYRO_AEVB_PLUGINS="my_pairs")
    assert done.returncode == 0, done.stderr


def test_the_older_variable_finds_the_current_folder_too(folder):
    done = _run(folder, ["fit", "shallow-vae", "--help"], PYRO_AEVB_PAIRS="my_pairs")
    assert done.returncode == 0, done.stderr
    assert "--width" in done.stdout


def test_without_the_variable_the_objective_is_refused_and_a_broken_module_is_named(folder):
    done = _run(folder, ["fit", "vae", "--objective", "my-elbo", "--help"])
    assert done.returncode == 2 and "my-elbo" in done.stderr  # not a registered choice
    done = _run(folder, ["fit", "vae", "--help"], PYRO_AEVB_PLUGINS="my_objectives,nope_mod")
    assert done.returncode == 2
    assert "PYRO_AEVB_PLUGINS names the module 'nope_mod'" in done.stderr
