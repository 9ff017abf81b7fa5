"""The command line's run-and-config items of issues 21 and 23: per-epoch lines when stderr
is redirected, ``--config`` / ``--print-config``, the run directory's manifest, edited
``config.json`` values of the wrong type, ``--threads`` and the data-parallel flags' help.
Every case goes through ``pyro_aevb.cli.main`` (or a new process) as a user would."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyro_aevb.cli import build_parser, main
from tests.test_reliability import TINY, fit, refused

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "vae"
    assert fit(out) == 0
    return out


def _copy(finished, tmp_path) -> Path:
    import shutil

    out = tmp_path / "vae"
    shutil.copytree(finished, out)
    return out


# --- 21.8: a redirected fit prints one plain line per epoch ------------------------------


def test_a_redirected_fit_prints_one_line_per_epoch(tmp_path):
    words = [a for a in TINY if a != "--no-progress"] + ["--epochs", "3"]
    log = tmp_path / "log"
    with log.open("w") as stderr:
        done = subprocess.run(
            [sys.executable, "-m", "pyro_aevb.cli", "fit", "vae", *words, "--out", "r"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=300,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
        )  # fmt: skip
    assert done.returncode == 0, log.read_text()
    text = log.read_text()
    lines = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"], text
    assert all("train ELBO" in line and "nats per data point" in line for line in lines)
    assert "\r" not in text  # no bar
    # --no-progress still silences them
    with log.open("w") as stderr:
        subprocess.run(
            [sys.executable, "-m", "pyro_aevb.cli", "fit", "vae", *TINY, "--out", "q"],
            cwd=tmp_path, stdout=subprocess.PIPE, stderr=stderr, timeout=300,
            env=dict(os.environ, PYTHONPATH=str(ROOT)), check=True,
        )  # fmt: skip
    assert "epoch " not in log.read_text()


# --- 21.10: --print-config and --config ---------------------------------------------------


def _printed(capsys, *words) -> dict:
    capsys.readouterr()
    assert main(["fit", "vae", *words]) == 0
    return json.loads(capsys.readouterr().out)


def test_print_config_prints_the_run_config_and_trains_nothing(tmp_path, capsys):
    printed = _printed(capsys, *TINY, "--lr", "0.002", "--print-config", "--out", str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # nothing trained, nothing written
    assert printed["lr"] == 0.002 and printed["architecture"]["z_dim"] == 2
    assert printed["architecture"]["hidden"] == [8] and printed["epochs"] == 1
    out = tmp_path / "r"
    assert fit(out, "--lr", "0.002") == 0
    stored = json.loads((out / "config.json").read_text())
    assert set(stored) - set(printed) == {"run_id", "versions"}  # the run's bookkeeping
    assert {k: stored[k] for k in printed} == printed


def test_config_round_trip_and_flags_override_the_file(tmp_path, capsys):
    printed = _printed(capsys, *TINY, "--patience", "3", "--print-config")
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(printed))
    assert _printed(capsys, "--config", str(path), "--print-config") == printed
    overridden = _printed(capsys, "--config", str(path), "--lr", "0.01", "--print-config")
    assert overridden == {**printed, "lr": 0.01}
    # a run's own config.json works, and a run from it writes the same config.json
    first, second = tmp_path / "a", tmp_path / "b"
    assert fit(first, "--patience", "3") == 0
    words = ["fit", "vae", "--config", str(first / "config.json"), "--no-progress"]
    assert main([*words, "--out", str(second)]) == 0
    a, b = (json.loads((d / "config.json").read_text()) for d in (first, second))
    assert a.pop("run_id") != b.pop("run_id")  # a new run
    assert a == b
    # the two runs trained the same: same seed, same settings
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (first, second))
    assert ma["final_train_elbo"] == mb["final_train_elbo"]


def test_a_bad_config_file_is_named(tmp_path, capsys):
    path = tmp_path / "c.json"
    path.write_text('{"lr": "fast"}')
    refused(capsys, ["fit", "vae", "--config", str(path)], str(path), "--lr (lr)", "'fast'")
    path.write_text('{"clip_norm": "big"}')
    refused(capsys, ["fit", "vae", "--config", str(path)], str(path), "'clip_norm'", "a number")
    path.write_text('{"model": "fa"}')
    refused(capsys, ["fit", "vae", "--config", str(path)], "a config of 'fa'", "fit fa")
    path.write_text('{"learning_rate": 1}')
    refused(capsys, ["fit", "vae", "--config", str(path)], "unknown key(s) ['learning_rate']")


# --- 21.14 / 23: a folder the library did not create ----------------------------------------


def test_a_folder_with_only_a_users_config_json_is_refused(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"my": "settings"}')
    refused(capsys, ["fit", "vae", *TINY, "--out", str(out)], "no pyro-aevb run", "config.json",
            folder=out)  # fmt: skip


@pytest.mark.parametrize("name", ["history.csv", "samples.png"])
def test_overwrite_refuses_a_users_file_with_the_librarys_name(tmp_path, capsys, name):
    out = tmp_path / "mine"
    out.mkdir()
    (out / name).write_text("the user's own")
    (out / "notes.txt").write_text("mine too")
    refused(capsys, ["fit", "vae", *TINY, "--overwrite", "--out", str(out)], name,
            "did not write", folder=out)  # fmt: skip


def test_overwrite_replaces_the_librarys_files_and_keeps_the_users(finished, tmp_path):
    out = _copy(finished, tmp_path)
    (out / "notes.txt").write_text("mine")
    assert json.loads((out / ".pyro-aevb-manifest.json").read_text())["files"]
    before = json.loads((out / "config.json").read_text())["run_id"]
    assert fit(out, "--overwrite") == 0
    assert json.loads((out / "config.json").read_text())["run_id"] != before
    assert (out / "notes.txt").read_text() == "mine"


def test_a_run_made_before_the_manifest_is_trusted_by_its_run_id(finished, tmp_path):
    out = _copy(finished, tmp_path)
    (out / ".pyro-aevb-manifest.json").unlink()  # as an older version wrote it
    assert fit(out, "--overwrite") == 0
    assert (out / ".pyro-aevb-manifest.json").exists()  # the new run adds it


# --- 23: an edited config.json with a wrong type -------------------------------------------


@pytest.mark.parametrize(
    "key, value, phrases",
    [
        ("hidden", ["8"], ["--hidden (hidden)", "a list of integers", "['8']"]),
        ("dropout", "0.1", ["--dropout (dropout)", "a number"]),
        ("clip_norm", "big", ["'clip_norm'", "a number or null"]),
        ("device", 0, ["'device'", "a string"]),
    ],
)
def test_a_wrong_type_in_config_json_names_the_file_key_and_type(
    finished, tmp_path, capsys, key, value, phrases
):
    out = _copy(finished, tmp_path)
    path = out / "config.json"
    config = json.loads(path.read_text())
    (config["architecture"] if key in config["architecture"] else config)[key] = value
    path.write_text(json.dumps(config))
    err = refused(capsys, ["evaluate", str(out)], str(path), *phrases, folder=out)
    assert "unexpected" not in err


# --- 21.7: --threads -----------------------------------------------------------------------


def test_threads_sets_torchs_intra_op_threads_for_fit_and_evaluate(finished, tmp_path, monkeypatch):
    from pyro_aevb.runs import evaluation_run, training_run

    seen = []
    real_fit, real_evaluate = training_run.fit, evaluation_run.evaluate

    def fit_spy(*args, **kwargs):
        seen.append(("fit", torch.get_num_threads()))
        return real_fit(*args, **kwargs)

    def evaluate_spy(*args, **kwargs):
        seen.append(("evaluate", torch.get_num_threads()))
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(training_run, "fit", fit_spy)
    monkeypatch.setattr(evaluation_run, "evaluate", evaluate_spy)
    threads = torch.get_num_threads()
    wanted = 2 if threads == 1 else 1
    assert fit(tmp_path / "r", "--threads", str(wanted)) == 0
    out = _copy(finished, tmp_path)
    assert main(["evaluate", str(out), "--threads", str(wanted), "--particles", "5"]) == 0
    assert seen == [("fit", wanted), ("evaluate", wanted), ("evaluate", wanted)]
    assert torch.get_num_threads() == threads  # restored


def test_threads_below_one_is_refused(tmp_path, capsys):
    refused(capsys, ["fit", "vae", *TINY, "--threads", "0", "--out", str(tmp_path / "r")],
            "--threads must be at least 1", folder=tmp_path / "r")  # fmt: skip


# --- 23: every data-parallel flag has its help text ------------------------------------


def test_every_data_parallel_flag_has_help_text():
    parser = build_parser()
    fit_parser = next(a for a in parser._actions if a.dest == "command").choices["fit"]
    vae = next(a for a in fit_parser._actions if a.dest == "model").choices["vae"]
    helps = {flag: action.help for action in vae._actions for flag in action.option_strings}
    for flag in ("--devices", "--strategy", "--num-nodes", "--accelerator", "--precision",
                 "--logger", "--threads", "--config", "--print-config"):  # fmt: skip
        assert helps.get(flag), flag
    text = vae.format_help()
    for flag in ("--devices", "--logger"):
        assert helps[flag].split()[0] in text.split(flag, 2)[-1]  # shown next to the flag
