"""Named pairs: options declared once in the builder, a subcommand per pair, one file per pair."""

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import pytest

from pyro_aevb.cli import build_parser, main
from pyro_aevb.pairs import Option, PairSpec, available_pairs, get_pair, registry
from pyro_aevb.runs import resolve_config

README = Path(__file__).resolve().parents[1] / "README.md"


def _help(capsys, *words) -> str:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([*words, "--help"])
    assert info.value.code == 0
    return capsys.readouterr().out


def _flags(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", text))


def test_each_pairs_help_lists_its_own_options_and_no_other_pairs(capsys):
    own = {name: {o.flag for o in get_pair(name).parameters} for name in available_pairs()}
    every_pair_flag = set().union(*own.values())
    for name in available_pairs():
        flags = _flags(_help(capsys, "fit", name))
        assert own[name] <= flags, name
        assert not (every_pair_flag - own[name]) & flags, name
        assert {"--epochs", "--objective", "--binarize", "--out"} <= flags  # the common ones
    assert "--clusters" in own["gmvae"] and "--clusters" not in own["vae"]


def test_a_builders_signature_is_the_pairs_options():
    spec = get_pair("gmvae")
    assert spec.options == {
        "num_clusters": 10,
        "z_dim": 64,
        "hidden": (512, 512),
        "likelihood": None,
        "estimator": "enumerate",
        "temperature": None,
        "architecture": "mlp",  # issue 22: --architecture conv
    }
    assert spec.option("num_clusters").flag == "--clusters"
    assert spec.option("z_dim").flag == "--latent-dim"
    # a flag's words become the stored value by the option's own conversion
    temperature = spec.option("temperature").from_command_line([1.0, 0.5, 1e-4])
    assert temperature == {"initial": 1.0, "final": 0.5, "rate": 1e-4}


def test_a_builder_parameter_without_a_declaration_is_refused():
    def build(train, z_dim: int = 2):
        raise AssertionError("not called")

    with pytest.raises(TypeError, match="parameter 'z_dim' needs a default and an annotation"):
        PairSpec(name="undeclared", build=build, view="flat")


def test_declared_ranges_are_checked_with_the_flag_named():
    def build(train, width: Annotated[int, Option("width", type=int, minimum=2)] = 4):
        raise AssertionError("not called")

    spec = PairSpec(name="ranged", build=build, view="flat")
    with pytest.raises(ValueError, match=r"--width \(width\) must be an integer >= 2, got 1"):
        spec.validate({"width": 1})
    with pytest.raises(ValueError, match=r"--dropout \(dropout\) must be in \[0, 1\)"):
        resolve_config("vae", {"dropout": 1.0})
    with pytest.raises(ValueError, match="unknown training setting"):
        PairSpec(name="typo", build=build, view="flat", training={"epoch": 3})


def test_an_option_of_another_pair_names_the_pair_it_belongs_to(capsys, tmp_path):
    assert main(["fit", "vae", "--clusters", "5", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "has no option 'num_clusters'" in err and "an option of gmvae" in err
    assert "pyro-aevb fit vae --help" in err
    assert not (tmp_path / "r").exists()


def _readme_pair_module() -> str:
    """The worked example of README.md's 'Adding a named pair'."""
    text = README.read_text()
    section = text[text.index("### Adding a named pair") :]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_pair_is_one_file_and_fits_from_the_command_line(tmp_path, monkeypatch, capsys):
    (tmp_path / "my_pairs.py").write_text(_readme_pair_module())
    # its --help, in this process: the module registers into a copy of the registry
    monkeypatch.setattr(registry, "_PAIRS", dict(registry._PAIRS))
    module_spec = importlib.util.spec_from_file_location("my_pairs", tmp_path / "my_pairs.py")
    module_spec.loader.exec_module(importlib.util.module_from_spec(module_spec))
    flags = _flags(_help(capsys, "fit", "shallow-vae"))
    assert {"--width", "--latent-dim", "--epochs"} <= flags and "--hidden" not in flags
    assert get_pair("shallow-vae").training["epochs"] == 20  # the rest are the defaults
    assert get_pair("shallow-vae").training["batch_size"] == 100

    # and for real: a new process finds it through PYRO_AEVB_PAIRS
    exe = shutil.which("pyro-aevb") or pytest.skip("the pyro-aevb command is not installed")
    env = dict(os.environ, PYRO_AEVB_PAIRS="my_pairs")
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(tmp_path), env.get("PYTHONPATH")) if p
    )  # no empty entry: that would put the working directory on the path
    out = tmp_path / "run"
    tiny = ["--dataset", "digits", "--epochs", "1", "--max-train", "200", "--max-test", "50"]
    words = [exe, "fit", "shallow-vae", *tiny, "--width", "16", "--latent-dim", "3"]
    words += ["--eval-particles", "20", "--no-progress", "--out", str(out)]
    done = subprocess.run(words, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == "shallow-vae"
    assert config["architecture"] == {"z_dim": 3, "width": 16}
    metrics = json.loads((out / "metrics.json").read_text())
    # the importance-sampled log-likelihood bounds the ELBO from above (3 s.e. of slack)
    slack = 3 * (metrics["test_elbo_se"] + metrics["test_log_likelihood_se"])
    assert metrics["test_log_likelihood"] >= metrics["test_elbo"] - slack
    assert {"samples.png", "reconstructions.png", "checkpoint.pt"} <= {
        p.name for p in out.iterdir()
    }
    # without the variable the pair is unknown, and a broken module is named
    env.pop("PYRO_AEVB_PAIRS")
    done = subprocess.run(
        [sys.executable, "-m", "pyro_aevb.cli", "evaluate", str(out), "--particles", "5"],
        capture_output=True,
        text=True,
        env=dict(env, PYRO_AEVB_PAIRS="no_such_module_here"),
        timeout=300,
    )
    assert done.returncode == 2
    assert "PYRO_AEVB_PAIRS names the module 'no_such_module_here'" in done.stderr


#: a factor-analysis run written by pyro-aevb 0.1.0 before pairs became a package
#: (``fit fa --epochs 1 --max-train 200 --max-test 50 --eval-particles 20``)
OLD_RUN = Path(__file__).resolve().parent / "data" / "fa_run_v0.1"


def test_a_run_written_before_the_pairs_package_loads_evaluates_and_resumes(tmp_path, capsys):
    from pyro_aevb.runs import evaluate_run, load_run

    run_dir = tmp_path / "run"
    shutil.copytree(OLD_RUN, run_dir)
    stored = json.loads((OLD_RUN / "metrics.json").read_text())
    run = load_run(run_dir)
    metrics = evaluate_run(run, run_dir, 20)
    # the exact evidence is a closed form of the parameters: the same parameters give
    # the same number, so the checkpoint restored the trained ones
    assert metrics["test_log_evidence"] == pytest.approx(stored["test_log_evidence"], abs=1e-5)
    assert metrics["true_model_log_evidence"] == pytest.approx(stored["true_model_log_evidence"])
    args = ["fit", "fa", "--epochs", "2", "--max-train", "200", "--max-test", "50"]
    args += ["--eval-particles", "20", "--no-progress", "--out", str(run_dir), "--resume"]
    assert main(args) == 0  # the fingerprint and the config still match
    assert len((run_dir / "history.csv").read_text().splitlines()) == 1 + 2
    assert "true model" in capsys.readouterr().out
