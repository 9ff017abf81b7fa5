"""Settings that cannot define a run are refused before any work, each with its name; the
data-parallel flags are documented in ``--help``."""

import subprocess
import sys

import pytest

from pyro_aevb import fit
from pyro_aevb.cli import build_parser

from .conftest import tiny_vae


@pytest.mark.parametrize(
    "option, value",
    [("num_particles", 2.7), ("num_particles", 0), ("num_particles", True), ("epochs", 1.5),
     ("batch_size", 2.5), ("eval_every", 0.5), ("patience", 2.0), ("seed", -1)],
)  # fmt: skip
def test_every_integer_setting_is_refused_when_not_an_integer(digits, option, value, tmp_path):
    train, test = digits
    model, guide = tiny_vae()
    with pytest.raises(ValueError, match=rf"{option} must be an integer >= \d, got {value!r}"):
        fit(model, guide, train, test, run_dir=tmp_path / "run", **{option: value})
    assert not (tmp_path / "run").exists()  # refused before the run directory was made


def test_the_data_parallel_flags_have_help_texts():
    text = subprocess.run(
        [sys.executable, "-m", "pyro_aevb.cli", "fit", "vae", "--help"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    options = text[text.index("options:") :]
    for flag in ("--devices", "--strategy", "--num-nodes", "--accelerator", "--precision",
                 "--logger"):  # fmt: skip
        line = next((row for row in options.splitlines() if row.strip().startswith(flag)), None)
        assert line is not None, f"{flag} is missing from the options of fit vae --help"
    assert "processes per machine" in options and "bf16-mixed autocast" in options
    assert build_parser() is not None
