"""Nothing silently wrong, nothing lost: run directories, resume and bad input at the CLI.

Every case goes through ``pyro_aevb.cli.main`` as a user would type it, asserts what the
message says, and, where a command is refused, that no file in the run directory changed
(bytes and modification times compared before and after).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyro_aevb import checkpoint as ckpt
from pyro_aevb import rundir
from pyro_aevb.cli import _summary, main

TINY = [
    "--dataset", "digits", "--epochs", "1", "--hidden", "8", "--latent-dim", "2",
    "--max-train", "50", "--max-test", "20", "--batch-size", "25",
    "--eval-particles", "10", "--no-progress",
]  # fmt: skip


def snapshot(folder: Path) -> dict:
    """Every file's bytes and mtime (nanoseconds), by name."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def fit(out, *extra):
    return main(["fit", "vae", *TINY, *extra, "--out", str(out)])


def refused(capsys, argv, *phrases, folder=None):
    """``main(argv)`` exits 2 with a one-paragraph message holding ``phrases``, no
    traceback, and leaves ``folder`` exactly as it was."""
    before = snapshot(folder) if folder is not None and folder.exists() else None
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyro-aevb: error: ") and "Traceback" not in err
    assert err.strip().count("\n") == 0, err  # one paragraph
    for phrase in phrases:
        assert phrase in err, (phrase, err)
    if before is not None:
        assert snapshot(folder) == before
    elif folder is not None:
        assert not folder.exists()
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One finished tiny VAE run, copied for each test that alters it."""
    out = tmp_path_factory.mktemp("runs") / "vae"
    assert fit(out, "--eval-particles", "100") == 0
    return out


@pytest.fixture
def run(finished, tmp_path):
    out = tmp_path / "vae"
    shutil.copytree(finished, out)
    return out


# --- wrong numbers ---------------------------------------------------------------------


FA_LR_1E6 = ["fit", "fa", "--epochs", "2", "--lr", "1e6", "--eval-particles", "10",
             "--max-train", "200", "--max-test", "100", "--no-progress"]  # fmt: skip


def test_diverged_factor_analysis_stops_in_training(tmp_path, capsys):
    """lr 1e6: the loss grows by 12 orders of magnitude in a step; the run stops there."""
    out = tmp_path / "fa"
    assert main([*FA_LR_1E6, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "diverged at epoch 1" in captured.err and "--lr" in captured.err
    assert "test log-likelihood" not in captured.out  # no number printed as a result
    assert not (out / "metrics.json").exists()


def test_an_estimate_above_the_exact_evidence_is_an_error_not_a_result(
    tmp_path, capsys, monkeypatch
):
    """With the training's divergence check off, lr 1e6 gives an importance-sampled
    estimate far above the exact evidence: evaluation refuses to report it."""
    from pyro_aevb.training.step import TrainingStep

    monkeypatch.setattr(TrainingStep, "_check_divergence", lambda self, value, where: None)
    out = tmp_path / "fa"
    assert main([*FA_LR_1E6, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    assert "impossible numbers" in captured.err and "above the exact log-evidence" in captured.err
    assert "standard errors" in captured.err and "--lr" in captured.err
    assert "test log-likelihood" not in captured.out  # no number printed as a result
    assert not (out / "metrics.json").exists()
    assert (out / "checkpoint.pt").exists()  # the run itself is kept


def test_summary_explains_the_numbers_and_warns_on_heavy_tails():
    metrics = {
        "test_elbo": -90.0, "test_elbo_se": 1.0, "test_log_likelihood": -85.0,
        "test_log_likelihood_se": 1.0, "log_likelihood_particles": 100, "ess_mean": 2.0,
        "num_test_points": 20, "pareto_k_mean": 0.9, "pareto_k_fraction_above_0.7": 0.8,
    }  # fmt: skip
    text = _summary(metrics)
    assert "nats per data point" in text and "standard error" in text and "20 test points" in text
    assert "unreliable lower bound" in text and "80%" in text
    metrics["pareto_k_fraction_above_0.7"] = 0.2
    assert "unreliable" not in _summary(metrics)


def test_metrics_json_is_written_afresh_by_each_evaluation(run, capsys):
    first = json.loads((run / "metrics.json").read_text())
    assert "pareto_k_mean" in first  # K = 100
    assert main(["evaluate", str(run), "--particles", "10", "--no-progress"]) == 0
    again = json.loads((run / "metrics.json").read_text())
    assert again["log_likelihood_particles"] == 10
    assert "pareto_k_mean" not in again  # not reported below K = 100: no stale k-hat
    for key in ("train_seconds", "epochs_completed", "final_train_elbo", "fit_seconds"):
        assert again[key] == first[key], key  # training keys recomputed or kept by name
    assert again["run_id"] == json.loads((run / "config.json").read_text())["run_id"]


def test_overwrite_clears_the_old_runs_outputs_but_not_the_users_files(tmp_path, capsys):
    out = tmp_path / "run"
    fa = ["fit", "fa", "--epochs", "1", "--max-train", "64", "--max-test", "50"]
    assert main(fa + ["--eval-particles", "10", "--no-progress", "--out", str(out)]) == 0
    assert (out / "evidence.png").exists()
    (out / "notes.txt").write_text("my notes")
    user = snapshot(out)["notes.txt"]
    assert fit(out, "--overwrite") == 0
    names = {p.name for p in out.iterdir()}
    assert "evidence.png" not in names and "predictive_check.png" not in names
    metrics = json.loads((out / "metrics.json").read_text())
    assert "test_log_evidence" not in metrics and "true_model_log_evidence" not in metrics
    assert snapshot(out)["notes.txt"] == user
    assert json.loads((out / "config.json").read_text())["model"] == "vae"


@pytest.mark.parametrize(
    "flag, value, message",
    [
        ("--lr", "0", "--lr (lr) must be a positive finite learning rate"),
        ("--lr", "nan", "--lr (lr) must be a positive finite"),
        ("--latent-dim", "0", "--latent-dim (z_dim) must be an integer >= 1"),
        ("--max-train", "0", "--max-train (max_train) must be an integer >= 1"),
        ("--eval-particles", "0", "--eval-particles (log_likelihood_particles)"),
        ("--batch-size", "0", "--batch-size (batch_size)"),
    ],
)
def test_values_that_cannot_define_a_run(flag, value, message, tmp_path, capsys):
    refused(capsys, ["fit", "vae", *TINY, flag, value, "--out", str(tmp_path / "r")], message,
            folder=tmp_path / "r")  # fmt: skip


def test_particles_that_cannot_fit_in_memory_say_how_much_they_need(run, tmp_path, capsys):
    out = tmp_path / "r"
    refused(capsys, ["fit", "vae", *TINY, "--particles", "10000000000", "--out", str(out)],
            "training step", "GiB", "fewer particles", folder=out)  # fmt: skip
    refused(capsys, ["evaluate", str(run), "--particles", "10000000000"], "GiB",
            "fewer particles", folder=run)  # fmt: skip


def test_evaluate_particles_must_be_positive(run, capsys):
    refused(capsys, ["evaluate", str(run), "--particles", "0"], "--particles", folder=run)


def test_data_dir_that_does_not_exist(tmp_path, capsys):
    args = ["fit", "vae", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "nope")]
    err = refused(capsys, args + ["--out", str(tmp_path / "r")], "does not exist",
                  folder=tmp_path / "r")  # fmt: skip
    assert "torchvision" not in err.split(";")[0]
    args = ["fit", "vae", *TINY, "--data-dir", str(tmp_path), "--out", str(tmp_path / "r")]
    refused(capsys, args, "applies to", folder=tmp_path / "r")


# --- lost files ------------------------------------------------------------------------


def test_resume_refuses_every_changed_setting_before_writing(run, capsys):
    args = ["fit", "vae", *TINY, "--eval-particles", "100", "--out", str(run), "--resume"]
    changed = args + ["--likelihood", "continuous_bernoulli", "--hidden", "16",
                      "--max-test", "10", "--seed", "3"]  # fmt: skip
    refused(
        capsys,
        changed,
        "cannot resume",
        "architecture.likelihood: 'bernoulli' -> 'continuous_bernoulli'",
        "architecture.hidden: [8] -> [16]",
        "max_test: 20 -> 10",
        "seed: 0 -> 3",
        folder=run,
    )
    refused(capsys, args[:2] + ["--dataset", "fa-synthetic"] + args[4:], "dataset", folder=run)
    # the refused resumes changed nothing: the run still evaluates, and resumes as it was
    assert main(["evaluate", str(run), "--particles", "10"]) == 0
    assert main(args + ["--epochs", "2"]) == 0  # more epochs is not a change of the run
    assert json.loads((run / "config.json").read_text())["epochs"] == 2


def test_resume_without_a_checkpoint_is_refused(tmp_path, capsys):
    refused(capsys, ["fit", "vae", *TINY, "--resume", "--out", str(tmp_path / "r")],
            "no checkpoint.pt", folder=tmp_path / "r")  # fmt: skip


def test_out_into_a_folder_of_the_users_files(tmp_path, capsys):
    out = tmp_path / "thesis"
    out.mkdir()
    (out / "chapter1.tex").write_text("\\chapter{One}")
    refused(capsys, ["fit", "vae", *TINY, "--out", str(out)], "chapter1.tex", "--overwrite",
            folder=out)  # fmt: skip
    before = snapshot(out)
    assert fit(out, "--overwrite") == 0
    assert snapshot(out)["chapter1.tex"] == before["chapter1.tex"]


def test_a_failed_command_leaves_no_stub(tmp_path, capsys):
    out = tmp_path / "r"
    # grey values under a Bernoulli: refused by fit's checks, before the first step
    args = ["fit", "vae", *TINY, "--binarize", "none", "--likelihood", "bernoulli"]
    refused(capsys, args + ["--out", str(out)], "binarize", folder=out)
    out.mkdir()
    (out / "keep.txt").write_text("x")
    refused(capsys, args + ["--out", str(out), "--overwrite"], "binarize", folder=out)


def test_evaluate_refuses_a_checkpoint_of_another_run(run, tmp_path, capsys):
    other = tmp_path / "other"
    assert fit(other, "--seed", "0") == 0  # same architecture and settings
    config = json.loads((run / "config.json").read_text())
    assert len(config["run_id"]) == 32
    assert ckpt.stored_run_id(ckpt.load(run / "checkpoint.pt")) == config["run_id"]
    shutil.copy(other / "checkpoint.pt", run / "checkpoint.pt")
    refused(capsys, ["evaluate", str(run)], "belongs to run", "different runs", folder=run)


def _make_read_only(folder: Path):
    """chmod for a user; root writes through permission bits, so the immutable flag."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return lambda: folder.chmod(0o755)
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(folder)]).returncode:
        pytest.skip("cannot make a folder read-only for root here")
    return lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)


def test_evaluate_on_a_read_only_run_directory(run, tmp_path, capsys, monkeypatch):
    from pyro_aevb.runs import evaluation_run

    restore = _make_read_only(run)
    try:
        with monkeypatch.context() as m:
            computed = lambda *a, **k: pytest.fail("computed before checking")  # noqa: E731
            m.setattr(evaluation_run, "evaluate", computed)
            refused(capsys, ["evaluate", str(run)], "cannot write metrics.json", "--out",
                    folder=run)  # fmt: skip
        elsewhere = ["--particles", "7", "--out", str(tmp_path / "m.json")]
        assert main(["evaluate", str(run), *elsewhere]) == 0
    finally:
        restore()
    assert json.loads((tmp_path / "m.json").read_text())["log_likelihood_particles"] == 7


def test_evaluate_prints_its_numbers_when_the_disk_is_full(run, capsys, monkeypatch):
    import errno

    from pyro_aevb.runs import evaluation_run

    def full(obj, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    before = snapshot(run)
    monkeypatch.setattr(evaluation_run, "save_json", full)
    assert main(["evaluate", str(run), "--particles", "10"]) == 2
    captured = capsys.readouterr()
    assert "test log-likelihood" in captured.out and "K = 10" in captured.out  # not lost
    assert "could not write" in captured.err and "metrics above were computed" in captured.err
    assert snapshot(run) == before


def test_evaluate_out_file_below_a_file(run, tmp_path, capsys):
    (tmp_path / "afile").write_text("")
    err = refused(capsys, ["evaluate", str(run), "--out", str(tmp_path / "afile" / "m.json")],
                  folder=run)  # fmt: skip
    assert "afile" in err


# --- damaged files ---------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_damaged_checkpoint_is_named(run, damage, capsys):
    path = run / "checkpoint.pt"
    data = path.read_bytes()
    damaged = {"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"x" * 99}
    path.write_bytes(damaged[damage])
    refused(capsys, ["evaluate", str(run)], str(path), "damaged", "--overwrite", folder=run)
    resume = ["fit", "vae", *TINY, "--eval-particles", "100", "--resume", "--out", str(run)]
    refused(capsys, resume, "damaged", folder=run)


@pytest.mark.parametrize(
    "edit, phrases",
    [
        (lambda text: text[:-5], ["not valid JSON", "line"]),
        (
            lambda text: text.replace('"lr"', '"learning_rate"'),
            ["missing key(s) ['lr']", "unknown key(s) ['learning_rate']"],
        ),
        (lambda text: text.replace('"z_dim"', '"zdim"'), ["architecture.z_dim", ".zdim"]),
        (lambda text: text.replace('"lr": 0.001', '"lr": -1'), ["--lr (lr)"]),
    ],
)
def test_edited_config_json_is_named(run, edit, phrases, capsys):
    path = run / "config.json"
    path.write_text(edit(path.read_text()))
    refused(capsys, ["evaluate", str(run)], str(path), *phrases, folder=run)


# --- interrupts and library errors at the top --------------------------------------------


def test_ctrl_c_says_how_to_resume_and_the_command_works(tmp_path, capsys, monkeypatch):
    from pyro_aevb.runs import training_run

    out = tmp_path / "r"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training_run, "write_figures", interrupted)  # after the last checkpoint
    assert fit(out) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "--resume" in err and "Traceback" not in err
    command = err.split("continue the run with: ")[1].strip()
    monkeypatch.undo()
    assert not (out / rundir.LOCK_NAME).exists()  # released on the way out
    argv = command.split()[1:]
    assert main([a.strip("'") for a in argv]) == 0


def test_ctrl_c_before_the_first_epoch_leaves_nothing(tmp_path, capsys, monkeypatch):
    from pyro_aevb.runs import training_run

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training_run, "fit", interrupted)
    assert fit(tmp_path / "r") == 130
    assert "nothing was saved" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_library_errors_are_one_paragraph_and_debug_shows_the_traceback(
    tmp_path, capsys, monkeypatch
):
    from pyro_aevb import NonFiniteLossError
    from pyro_aevb.runs import training_run

    def diverged(*args, **kwargs):
        raise NonFiniteLossError("the loss is nan at epoch 1, step 2; lower the learning rate")

    monkeypatch.setattr(training_run, "fit", diverged)
    err = refused(capsys, ["fit", "vae", *TINY, "--out", str(tmp_path / "r")], "diverged",
                  "epoch 1, step 2")  # fmt: skip
    assert "Nothing was saved" in err
    assert main(["fit", "vae", *TINY, "--out", str(tmp_path / "r"), "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "NonFiniteLossError" in err

    def bug(*args, **kwargs):
        raise KeyError("oops")

    monkeypatch.setattr(training_run, "fit", bug)
    refused(capsys, ["fit", "vae", *TINY, "--out", str(tmp_path / "r")], "unexpected KeyError",
            "--debug")  # fmt: skip


def test_orphan_temporaries_are_cleaned_on_the_next_start(run, capsys):
    for name in (".checkpoint.pt.k3j2h1.tmp", "metrics.json.tmp", "history.csv.tmp"):
        (run / name).write_bytes(b"half a file")
    (run / "mine.tmp").write_text("a user's file")
    args = ["fit", "vae", *TINY, "--eval-particles", "100", "--resume", "--out", str(run)]
    assert main(args) == 0
    names = {p.name for p in run.iterdir()}
    assert not {".checkpoint.pt.k3j2h1.tmp", "metrics.json.tmp", "history.csv.tmp"} & names
    assert "mine.tmp" in names


def test_no_carriage_returns_when_stderr_is_not_a_terminal(tmp_path, capfd):
    args = [a for a in TINY if a != "--no-progress"]
    assert main(["fit", "vae", *args, "--epochs", "3", "--out", str(tmp_path / "r")]) == 0
    assert "\r" not in capfd.readouterr().err


# --- the lock ----------------------------------------------------------------------------

HOLD = "import sys, time; from pyro_aevb.rundir import RunLock\n" \
       "with RunLock(sys.argv[1]):\n    print('locked', flush=True); time.sleep(120)\n"  # fmt: skip


def test_a_second_fit_into_a_locked_run_directory_is_refused(tmp_path, capsys):
    out = tmp_path / "r"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        refused(capsys, ["fit", "vae", *TINY, "--out", str(out)], f"process {holder.pid}",
                "in use", folder=out)  # fmt: skip
    finally:
        holder.kill()
        holder.wait()
    # its owner is dead now: the lock is stale and taken over, then released
    assert (out / rundir.LOCK_NAME).exists()
    assert fit(out) == 0
    assert not (out / rundir.LOCK_NAME).exists()


def test_lock_records_its_owner_is_reentrant_and_released_on_exceptions(tmp_path):
    with rundir.RunLock(tmp_path) as lock:
        owner = json.loads(lock.path.read_text())
        assert owner["pid"] == os.getpid()
        # the CLI holds the lock around fit, which takes it again: nested, not refused
        with rundir.RunLock(tmp_path):
            assert lock.path.exists()
        assert lock.path.exists()  # the outer one still holds it
    assert not (tmp_path / rundir.LOCK_NAME).exists()
    # a lock file of a live process that is not us is respected
    lock_path = tmp_path / rundir.LOCK_NAME
    lock_path.write_text(json.dumps({"pid": os.getppid()}))
    with pytest.raises(rundir.RunLockedError, match=f"process {os.getppid()}"):
        rundir.RunLock(tmp_path).acquire()
    lock_path.unlink()
    with pytest.raises(ZeroDivisionError), rundir.RunLock(tmp_path):
        raise ZeroDivisionError
    assert not (tmp_path / rundir.LOCK_NAME).exists()


def test_reconstructions_show_every_class():
    from pyro_aevb.plots import spread_over_classes

    labels = torch.arange(10).repeat_interleave(10)  # ordered by class, as bundled data are
    picks = spread_over_classes(labels, 30, 100)
    assert sorted(labels[picks].tolist()) == sorted(list(range(10)) * 3)
    # the old selection x[::3][:30] of 100 evenly spaced points never reached a 9
    assert 9 not in labels[::3][:30].tolist()
    assert len(spread_over_classes(None, 30, 100).unique()) == 30
