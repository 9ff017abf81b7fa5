"""Real processes: a CLI fit killed with SIGKILL at random moments (and once inside a
checkpoint write) resumes to the bit-identical checkpoint of an uninterrupted run, and a
second fit into a run directory that a live fit holds is refused, naming its pid."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pyro_aevb import checkpoint as ckpt
from pyro_aevb import rundir
from pyro_aevb.cli import main

# A tiny run with many epochs: each epoch is 2 steps and a checkpoint write, so most of
# the time goes into writing checkpoints and a random kill often lands inside one.
ARGS = [
    "fit", "vae", "--dataset", "digits", "--epochs", "25", "--hidden", "8", "--latent-dim",
    "2", "--max-train", "40", "--max-test", "20", "--batch-size", "20",
    "--eval-particles", "5", "--no-progress",
]  # fmt: skip

# Kills the process after the 5th checkpoint's temporary file is written and fsynced,
# just before it would be renamed into place: an interrupted checkpoint write.
KILL_IN_WRITE = """
import os, signal, sys
real_replace, writes = os.replace, []
def replace(src, dst):
    if str(dst).endswith("checkpoint.pt"):
        writes.append(dst)
        if len(writes) == 5:
            os.kill(os.getpid(), signal.SIGKILL)
    return real_replace(src, dst)
os.replace = replace
from pyro_aevb.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="2", PYTHONHASHSEED="0")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get(
        "PYTHONPATH", ""
    )
    return env


def _argv(out: Path) -> list[str]:
    resume = ["--resume"] if (out / ckpt.CHECKPOINT_NAME).exists() else []
    return [*ARGS, "--out", str(out), *resume]


def _wait_for_lock_of(proc: subprocess.Popen, out: Path, timeout=120.0) -> bool:
    """Until ``proc`` holds the run's lock (it is then past its imports), or has ended."""
    deadline = time.monotonic() + timeout
    lock = out / rundir.LOCK_NAME
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if json.loads(lock.read_text()).get("pid") == proc.pid:
                return True
        except (OSError, ValueError):
            pass
        time.sleep(0.01)
    return False


def _tensors(obj, path=""):
    """Every tensor and number of a checkpoint by its path, wall-clock times left out."""
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if "seconds" not in str(k) and k != "run_metadata":
                yield from _tensors(v, f"{path}/{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{path}/{i}")
    else:
        yield path, obj


def _assert_identical(a: dict, b: dict):
    left, right = dict(_tensors(a)), dict(_tensors(b))
    assert left.keys() == right.keys()
    for key, value in left.items():
        if isinstance(value, torch.Tensor):
            assert value.dtype == right[key].dtype and torch.equal(value, right[key]), key
        else:
            assert value == right[key], key


def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    reference = tmp_path / "reference"
    t0 = time.perf_counter()
    assert main([*ARGS, "--out", str(reference)]) == 0
    run_seconds = time.perf_counter() - t0

    out = tmp_path / "killed"
    # 1. killed inside a checkpoint write: the temporary file is complete, not renamed
    proc = subprocess.run(
        [sys.executable, "-c", KILL_IN_WRITE, *_argv(out)], env=_env(), timeout=120
    )
    assert proc.returncode == -signal.SIGKILL
    assert ckpt.load(out / ckpt.CHECKPOINT_NAME)["epoch"] == 4  # the previous one stands
    assert any(p.name.endswith(".tmp") for p in out.iterdir())  # the orphan it left
    assert (out / rundir.LOCK_NAME).exists()  # and a stale lock

    # 2. killed at seeded random moments of the training (after the imports)
    rng = np.random.default_rng(0)
    for delay in rng.uniform(0.0, run_seconds, size=3):
        proc = subprocess.Popen([sys.executable, "-m", "pyro_aevb.cli", *_argv(out)], env=_env())
        try:
            if _wait_for_lock_of(proc, out):
                time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.wait(timeout=60)

    # 3. resumed to the end (or, if the last kill came late, to itself)
    assert main(_argv(out)) == 0
    _assert_identical(
        ckpt.load(reference / ckpt.CHECKPOINT_NAME), ckpt.load(out / ckpt.CHECKPOINT_NAME)
    )
    assert (out / "history.csv").read_text().count("\n") == 26  # header and 25 epochs
    done, again = (json.loads((d / "metrics.json").read_text()) for d in (reference, out))
    for key in ("test_elbo", "test_log_likelihood", "final_train_elbo", "epochs_completed"):
        assert done[key] == again[key], key
    left = {p.name for p in out.iterdir()}
    assert not [n for n in left if n.endswith(".tmp")] and rundir.LOCK_NAME not in left


def test_a_concurrent_fit_is_refused_and_the_first_run_survives(tmp_path, capsys):
    out = tmp_path / "run"
    argv = [*ARGS, "--epochs", "40", "--out", str(out)]
    first = subprocess.Popen(
        [sys.executable, "-m", "pyro_aevb.cli", *argv], env=_env(), stdout=subprocess.PIPE
    )
    try:
        assert _wait_for_lock_of(first, out)
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"in use by process {first.pid}" in err
        assert main([*argv, "--overwrite"]) == 2  # not even --overwrite takes it away
        assert f"process {first.pid}" in capsys.readouterr().err
        assert first.wait(timeout=120) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert ckpt.load(out / ckpt.CHECKPOINT_NAME)["epoch"] == 40  # the first run is whole
    assert json.loads((out / "metrics.json").read_text())["epochs_completed"] == 40
    assert not (out / rundir.LOCK_NAME).exists()
