"""A full disk during a checkpoint write: the message says so, where, and that the last
checkpoint is intact; the run resumes from it once there is space again."""

import os
import tempfile

import pytest
import torch

from pyro_aevb import checkpoint as ckpt
from pyro_aevb.cli import main

TINY = [
    "--dataset", "digits", "--hidden", "8", "--latent-dim", "2", "--max-train", "50",
    "--max-test", "20", "--batch-size", "25", "--eval-particles", "10", "--no-progress",
]  # fmt: skip

pytestmark = pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")


def _full_disk_after(monkeypatch, writes: int):
    """Let ``writes`` checkpoint writes through, then make every temporary file a handle
    on /dev/full, whose writes fail with ENOSPC as on a full disk."""
    real, calls = tempfile.mkstemp, []

    def mkstemp(*args, **kwargs):
        fd, path = real(*args, **kwargs)
        calls.append(path)
        if len(calls) > writes:
            os.close(fd)
            fd = os.open("/dev/full", os.O_WRONLY)
        return fd, path

    monkeypatch.setattr(ckpt.tempfile, "mkstemp", mkstemp)


def test_a_full_disk_at_a_checkpoint_says_so_and_keeps_the_last_one(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    assert main(["fit", "vae", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    first = (out / ckpt.CHECKPOINT_NAME).read_bytes()
    _full_disk_after(monkeypatch, writes=0)
    capsys.readouterr()
    argv = ["fit", "vae", *TINY, "--epochs", "2", "--out", str(out), "--resume"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "inline_container" not in err
    assert "disk holding" in err and "is full" in err and str(out) in err
    assert "is intact" in err and "--resume" in err
    assert (out / ckpt.CHECKPOINT_NAME).read_bytes() == first  # untouched
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no debris
    monkeypatch.undo()  # space again: the advice works
    assert main(argv) == 0
    assert torch.load(out / ckpt.CHECKPOINT_NAME, weights_only=True)["epoch"] == 2


def test_atomic_save_turns_enospc_into_a_checkpoint_write_error(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.pt"
    _full_disk_after(monkeypatch, writes=0)
    with pytest.raises(ckpt.CheckpointWriteError, match="no checkpoint was written"):
        ckpt.atomic_save({"a": torch.zeros(10_000)}, path)
    assert list(tmp_path.iterdir()) == []
