"""Atomic checkpoints and the RNG state needed to resume a run exactly."""

from __future__ import annotations

import errno
import io
import os
import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointWriteError(OSError):
    """A checkpoint that could not be written (a full disk, a quota); the file it would
    have replaced is intact."""


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename.

    A crash or interrupt during the write leaves any previous file at ``path``
    intact: ``os.replace`` is atomic on POSIX and Windows. The object is serialized in
    memory first, so that a failing write (a full disk) surfaces as the operating
    system's error, not as torch's zip writer's "unexpected pos", and is raised as
    :class:`CheckpointWriteError` saying where and what to do.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getbuffer()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with _suppress():
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise CheckpointWriteError(e.errno, _no_space_message(path, len(data))) from e
        raise


def _no_space_message(path: Path, needed: int) -> str:
    try:
        free = f"{shutil.disk_usage(path.parent).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    kept = (
        f"the previous checkpoint {path} is intact (a resume continues from it)"
        if path.exists()
        else f"no checkpoint was written to {path}"
    )
    return (
        f"the disk holding {path.parent} is full: the checkpoint ({needed / 2**20:.1f} MiB, "
        f"{free}) could not be written; {kept}; free some space, then resume"
    )


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], OSError)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read: empty, truncated, or not a checkpoint."""


def load(path: str | os.PathLike) -> dict:
    """Load a checkpoint written by :func:`atomic_save` (tensors and plain data only).

    :raises FileNotFoundError: if there is no file at ``path``.
    :raises CheckpointError: if the file is empty, truncated or garbage (not a dict),
        naming the file and what to do.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")

    def damaged(reason: str) -> CheckpointError:
        return CheckpointError(
            f"{path} is damaged ({reason}) and cannot be read. It was not written by an "
            "interrupted run (checkpoints are replaced atomically), so it was changed or "
            "truncated afterwards: restore it from a copy, or start the run afresh with "
            "--overwrite (fit(..., overwrite=True))"
        )

    data = path.read_bytes()  # reading errors (permissions, I/O) surface here as they are
    if not data:
        raise damaged("the file is empty")
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ...
        raise damaged(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    if not isinstance(state, dict):
        raise damaged(f"it holds a {type(state).__name__}, not a checkpoint dict")
    return state


def stored_run_id(state: dict) -> str | None:
    """The run id a checkpoint records (``run_metadata["run_id"]``), if any."""
    metadata = state.get("run_metadata")
    return metadata.get("run_id") if isinstance(metadata, dict) else None


def rng_state() -> dict:
    """The states of Python's, NumPy's and PyTorch's (CPU and CUDA) global generators,
    as plain data and tensors (loadable with ``weights_only=True``)."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.as_tensor(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    v = state["python"]
    random.setstate((v[0], tuple(v[1]), v[2]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
