"""The safety of a run directory: one writer at a time, a run id, and nothing of a user's lost.

A run directory is ours when it holds ``config.json`` or ``checkpoint.pt``. Everything
here works on the files pyro-aevb itself writes (:data:`OWN_FILES`, the figures of
every pair and the temporary files of an atomic write); a user's other files in the
folder are never touched.

* :class:`RunLock` is an exclusive lock file created with ``O_CREAT | O_EXCL`` that
  holds the owner's process id. A lock left by a process that no longer exists is
  recognised as stale and taken over; a live owner is named in the refusal.
* :func:`new_run_id` draws the id that ties ``config.json`` to ``checkpoint.pt``.
* :func:`remove_orphan_temporaries` deletes what an interrupted atomic write left.
* :func:`config_differences` names every setting that a resume would change.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path

#: the name of the lock file inside a run directory
LOCK_NAME = ".pyro-aevb.lock"
#: files pyro-aevb writes into a run directory (figures included); ``--overwrite``
#: removes these and nothing else
OWN_FILES = (
    "config.json",
    "checkpoint.pt",
    "history.csv",
    "metrics.json",
    "learning_curve.png",
    "samples.png",
    "reconstructions.png",
    "evidence.png",
    "predictive_check.png",
    "class_conditional.png",
    "clustering.png",
    "cluster_grid.png",
    "generation_steps.png",
)


class RunDirectoryError(RuntimeError):
    """A run directory cannot be used as asked (locked, foreign files, changed settings)."""


class RunLockedError(RunDirectoryError):
    """Another live process holds the run directory's lock."""

    def __init__(self, message: str, pid: int | None):
        super().__init__(message)
        self.pid = pid


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: existence and permission check only
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _read_lock(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # half-written or unreadable: treated as an owner we cannot name


#: lock files this process holds -> nesting depth (a lock is re-entrant within a process:
#: the CLI holds it around ``fit``, which takes it again)
_HELD: dict[str, int] = {}


class RunLock:
    """Exclusive ownership of a run directory for the lifetime of a ``with`` block.

    The lock file ``.pyro-aevb.lock`` is created atomically (``O_CREAT | O_EXCL``) and
    records the owner's pid, host and command line. If the file already exists:

    * its owner is alive (same host, pid exists): :class:`RunLockedError` naming it;
    * its owner is dead, or the file is empty (a crash between create and write)
      and older than ``stale_after`` seconds: the lock is stale and taken over.

    The file is removed on exit, on exceptions too. A ``SIGKILL`` leaves it behind, and
    the next start recognises it as stale. Within one process the lock is re-entrant: a
    nested ``RunLock`` of a directory this process already holds succeeds, and the file
    goes when the outermost one exits.
    """

    def __init__(self, run_dir: str | os.PathLike, stale_after: float = 10.0):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self.stale_after = stale_after
        self._held = False

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "command": sys.argv}
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(owner))
            f.flush()
            os.fsync(f.fileno())
        return True

    def _owner_is_stale(self, owner: dict) -> bool:
        pid = owner.get("pid")
        if not isinstance(pid, int):
            # an empty or garbled file: a writer died between create and write, unless it
            # is being written right now (young file)
            import time

            try:
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return True
            return age > self.stale_after
        if owner.get("host") not in (None, socket.gethostname()):
            return False  # another machine's process: we cannot tell, so respect it
        return not _process_alive(pid)

    def _key(self) -> str:
        return str(self.path.resolve())

    def acquire(self) -> RunLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        key = self._key()
        if _HELD.get(key) and _read_lock(self.path).get("pid") == os.getpid():
            _HELD[key] += 1  # nested in this process (a forked child has another pid)
            self._held = True
            return self
        for _ in range(5):
            if self._try_create():
                self._held = True
                _HELD[key] = 1
                return self
            owner = _read_lock(self.path)
            if not self._owner_is_stale(owner):
                pid = owner.get("pid")
                who = f"process {pid}" if pid is not None else "another process"
                host = f" on {owner['host']}" if owner.get("host") else ""
                command = " ".join(owner.get("command") or [])
                raise RunLockedError(
                    f"{self.run_dir} is in use by {who}{host}"
                    + (f" ({command})" if command else "")
                    + f"; wait for it to finish, or if that process is gone, delete {self.path}",
                    pid if isinstance(pid, int) else None,
                )
            # Stale: move it aside atomically, so two processes taking it over at once
            # cannot both succeed (only one rename of the same file wins).
            aside = self.path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}")
            with contextlib.suppress(FileNotFoundError):
                os.replace(self.path, aside)
                os.unlink(aside)
        raise RunLockedError(f"could not take the lock {self.path}; try again", None)

    def release(self) -> None:
        if not self._held:
            return
        self._held = False
        key = self._key()
        _HELD[key] = _HELD.get(key, 1) - 1
        if _HELD[key] > 0:
            return  # an outer RunLock of this process still holds it
        del _HELD[key]
        # remove it only if it is still ours (never another process's lock)
        if _read_lock(self.path).get("pid") == os.getpid():
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def new_run_id() -> str:
    """A fresh random run id (uuid4, 32 hex digits)."""
    return uuid.uuid4().hex


def is_run_directory(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a pyro-aevb run (``config.json`` or ``checkpoint.pt``)."""
    path = Path(path)
    return (path / "config.json").exists() or (path / "checkpoint.pt").exists()


def _is_own_temporary(name: str) -> bool:
    # atomic_save: ".checkpoint.pt.XXXX.tmp"; save_json: "config.json.tmp";
    # the history writer: "history.tmp" / "history.csv.tmp"
    if not name.endswith(".tmp"):
        return False
    if name.startswith(".pyro-aevb-write-test."):
        return True
    stem = name[:-4]
    if stem.startswith(".") and any(stem[1:].startswith(f + ".") for f in OWN_FILES):
        return True
    return stem in OWN_FILES


def remove_orphan_temporaries(run_dir: str | os.PathLike) -> list[str]:
    """Delete temporary files an interrupted atomic write of ours left in ``run_dir``.

    Call it only while holding the run's :class:`RunLock` (a live writer's temporary
    file is not an orphan). Returns the names removed.
    """
    run_dir = Path(run_dir)
    removed = []
    if not run_dir.is_dir():
        return removed
    for entry in run_dir.iterdir():
        if entry.is_file() and _is_own_temporary(entry.name):
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry.name)
    return sorted(removed)


def foreign_files(run_dir: str | os.PathLike) -> list[str]:
    """Entries of ``run_dir`` that pyro-aevb did not write (a user's files)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    return sorted(
        e.name
        for e in run_dir.iterdir()
        if e.name not in OWN_FILES and e.name != LOCK_NAME and not _is_own_temporary(e.name)
    )


def clear_own_files(run_dir: str | os.PathLike) -> list[str]:
    """Remove what an earlier run wrote into ``run_dir`` (:data:`OWN_FILES` and our
    temporaries), never anything else. Returns the names removed."""
    run_dir = Path(run_dir)
    removed = []
    for name in OWN_FILES:
        with contextlib.suppress(FileNotFoundError):
            (run_dir / name).unlink()
            removed.append(name)
    return sorted(removed + remove_orphan_temporaries(run_dir))


def check_writable(directory: str | os.PathLike, what: str) -> None:
    """Raise ``PermissionError`` unless a file can be created in ``directory`` (tried for
    real: permission bits do not tell for root, read-only mounts or full quotas)."""
    directory = Path(directory)
    probe = directory / f".pyro-aevb-write-test.{os.getpid()}.tmp"
    try:
        with open(probe, "wb") as f:
            f.write(b"0")
        os.unlink(probe)
    except OSError as e:
        reason = os.strerror(e.errno) if e.errno else str(e)
        raise PermissionError(
            e.errno or errno.EACCES, f"cannot write {what} into {directory} ({reason})"
        ) from e


#: settings a resumed run may change: how long it trains, how it is evaluated, where
#: it runs, its learning rate and patience (``pyro_aevb.training.state.RESUME_MAY_CHANGE``,
#: which fit checks too); and bookkeeping
RESUMABLE_CHANGES = frozenset(
    {"epochs", "log_likelihood_particles", "device", "versions", "run_id", "lr", "patience"}
)

#: what a setting left out of the command line means: a resume that spells the default out
#: (``--optimizer adam``) changes nothing
SETTING_DEFAULTS = {"optimizer": "adam", "lr_schedule": "constant"}


def _normalized(config: Mapping) -> dict:
    """``config`` as JSON reads it back (tuples become lists), defaults filled in."""
    config = json.loads(json.dumps(config, default=str))
    for key, default in SETTING_DEFAULTS.items():
        if config.get(key) is None:
            config[key] = default
    return config


def config_differences(stored: Mapping, new: Mapping, allowed=RESUMABLE_CHANGES) -> list[str]:
    """Every setting in which ``new`` differs from ``stored``, as ``key: old -> new``,
    architecture options as ``architecture.key``; keys in ``allowed`` are ignored."""
    stored, new = _normalized(stored), _normalized(new)
    out = []

    def compare(a: Mapping, b: Mapping, prefix: str):
        for key in sorted(set(a) | set(b)):
            if not prefix and key in allowed:
                continue
            old, now = a.get(key), b.get(key)
            if isinstance(old, dict) and isinstance(now, dict) and key == "architecture":
                compare(old, now, "architecture.")
            elif old != now:
                out.append(f"{prefix}{key}: {old!r} -> {now!r}")

    compare(stored, new, "")
    return out


@contextlib.contextmanager
def removed_on_failure(path: str | os.PathLike) -> Iterator[None]:
    """Delete ``path`` if the block raises (a stub a failed command must not leave)."""
    try:
        yield
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        raise
