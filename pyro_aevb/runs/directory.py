"""The run directory's policy for ``pyro-aevb fit``: what may be written where, and what
``--resume`` and ``--overwrite`` find there (checks that touch nothing).

**The manifest.** A run directory that pyro-aevb created holds :data:`MANIFEST_NAME`, a
JSON object ``{"run_id": ..., "files": [...]}`` naming the files the library writes
there (:data:`~pyro_aevb.rundir.OWN_FILES`), written before the run's first file. It
is what tells the library's files from a user's: a folder without one (and without a
run of an older version, below) is not a run directory, so a fresh run into it is
refused unless it is empty, whatever its files are named, and ``--overwrite`` refuses,
naming them, files that bear the library's names but that it did not write (a user's
own ``history.csv``); a user's other files are kept, as before.

**Runs of older versions** (written before the manifest existed) are trusted by name, as
they were: a folder whose ``config.json`` is a JSON object carrying a ``run_id``, or one
holding ``config.json`` and ``checkpoint.pt`` (before run ids), is a run directory and
its files with the library's names are the library's. The next run written into it
(``--resume`` or ``--overwrite``) adds the manifest.

Limitation: a file that a user later copies into a run directory under one of the
library's names counts as the library's (the manifest lists names, not contents).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from .. import checkpoint as ckpt
from .. import rundir
from ..training import save_json
from .build import _check_same_run
from .config import CONFIG_NAME, read_config

#: the run directory's bookkeeping of the files pyro-aevb wrote there
MANIFEST_NAME = ".pyro-aevb-manifest.json"


def library_files(run_dir: Path) -> set[str] | None:
    """The names of the files in ``run_dir`` that pyro-aevb wrote (listed in its manifest,
    or by name in a run of an older version); ``None`` if pyro-aevb did not create it."""
    manifest = run_dir / MANIFEST_NAME
    if manifest.is_file():
        with contextlib.suppress(OSError, ValueError, TypeError):
            return set(json.loads(manifest.read_text())["files"])
    config = None
    with contextlib.suppress(OSError, ValueError):
        config = json.loads((run_dir / CONFIG_NAME).read_text())
    if not isinstance(config, dict):
        return None
    has_checkpoint = (run_dir / ckpt.CHECKPOINT_NAME).exists()
    if isinstance(config.get("run_id"), str) or has_checkpoint:
        return set(rundir.OWN_FILES)  # an older version's run: its files, by name
    return None


def write_manifest(run_dir: Path, run_id: str) -> None:
    """Record that pyro-aevb writes its files into ``run_dir`` (before the first one)."""
    save_json({"run_id": run_id, "files": sorted(rundir.OWN_FILES)}, run_dir / MANIFEST_NAME)


def clear_library_files(run_dir: Path) -> list[str]:
    """``--overwrite``: remove the files the manifest says pyro-aevb wrote (and its
    temporaries), nothing else; returns their names."""
    removed = []
    for name in sorted(library_files(run_dir) or ()):
        with contextlib.suppress(FileNotFoundError):
            (run_dir / name).unlink()
            removed.append(name)
    return sorted(removed + rundir.remove_orphan_temporaries(run_dir))


def _entries(run_dir: Path) -> list[str]:
    """What ``run_dir`` holds besides the lock, the manifest and our temporaries."""
    if not run_dir.is_dir():
        return []
    skip = {rundir.LOCK_NAME, MANIFEST_NAME}
    return sorted(
        e.name
        for e in run_dir.iterdir()
        if e.name not in skip
        and not e.name.startswith(MANIFEST_NAME)  # and its temporary
        and not rundir._is_own_temporary(e.name)
    )


def _shown(names: list[str]) -> str:
    more = f" and {len(names) - 5} more" if len(names) > 5 else ""
    return ", ".join(names[:5]) + more


def _check_parents(run_dir: Path) -> None:
    for parent in (run_dir, *run_dir.parents):
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(
                    f"--out {run_dir}: {parent} is a file, not a folder; choose another --out"
                )
            break


def _check_run_directory(run_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refusals that need no data and touch nothing."""
    checkpoint_path = run_dir / ckpt.CHECKPOINT_NAME
    if resume and not checkpoint_path.exists():
        raise FileNotFoundError(
            f"--resume: no {ckpt.CHECKPOINT_NAME} in {run_dir}, so there is nothing to "
            "continue (the run did not finish an epoch); start it without --resume"
        )
    if checkpoint_path.exists() and not (resume or overwrite):
        raise FileExistsError(
            f"{checkpoint_path} exists; use --resume to continue it, --overwrite to start "
            "afresh, or another --out"
        )
    entries, ours = _entries(run_dir), library_files(run_dir)
    if entries and ours is None and not overwrite:
        raise rundir.RunDirectoryError(
            f"--out {run_dir} is a folder with other files ({_shown(entries)}) and no "
            "pyro-aevb run; choose an empty or new --out, or pass --overwrite to write the "
            "run next to them (they are kept: --overwrite removes only pyro-aevb's own files)"
        )
    clashes = [e for e in entries if e in rundir.OWN_FILES and e not in (ours or ())]
    if clashes:
        raise rundir.RunDirectoryError(
            f"--out {run_dir} holds {_shown(clashes)}, which pyro-aevb did not write (the "
            "folder's manifest does not list them) but would write over; move them away "
            "or choose another --out (--overwrite removes only pyro-aevb's own files)"
        )


def _resume_config(run_dir: Path, config: dict) -> dict:
    """The stored config of the run to resume, after refusing any change of a setting
    that defines the run (every difference named); nothing is written."""
    stored = read_config(run_dir)
    differences = rundir.config_differences(stored, config)
    if differences:
        raise rundir.RunDirectoryError(
            f"cannot resume {run_dir} with different settings (stored in config.json -> "
            "now): " + "; ".join(differences) + ". Pass the options of the original run "
            "(see its config.json), or start a new run with another --out (or --overwrite)"
        )
    state = ckpt.load(run_dir / ckpt.CHECKPOINT_NAME)
    _check_same_run(run_dir, stored, state)
    return stored
