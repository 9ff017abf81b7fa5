"""The run directory of a fit: where it checkpoints, whether it resumes, what it may replace.

:class:`RunDirSettings` validates the run-directory options; :class:`Checkpointer` loads
the checkpoint to resume from (refusing another run's) and writes one after every epoch
(atomically, :mod:`pyro_aevb.checkpoint`), with ``history.csv`` beside it. The state a
checkpoint holds is :mod:`~pyro_aevb.training.state`'s.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .. import checkpoint as ckpt
from ..rundir import RunLock
from . import state as run_state
from .history import HISTORY_NAME


@dataclass(frozen=True)
class RunDirSettings:
    """Where and how a run is kept.

    :param run_dir: where to write ``checkpoint.pt`` (every epoch, atomically) and
        ``history.csv``; ``None`` keeps everything in memory.
    :param resume: continue from ``run_dir``'s checkpoint to the same parameters an
        uninterrupted run reaches; settings other than ``lr`` and ``patience``
        (:data:`~pyro_aevb.training.state.RESUME_MAY_CHANGE`) must be the checkpoint's.
    :param overwrite: allow starting afresh over an existing checkpoint.
    :param run_metadata: JSON-able facts stored in the checkpoint (e.g. a run id).
    """

    run_dir: str | os.PathLike | None = None
    resume: bool = False
    overwrite: bool = False
    run_metadata: dict | None = None

    def __post_init__(self):
        if self.run_dir is not None:
            object.__setattr__(self, "run_dir", Path(self.run_dir))
        if self.resume and self.run_dir is None:
            raise ValueError("resume=True needs the run_dir of the run to resume")

    @property
    def checkpoint_path(self) -> Path | None:
        return self.run_dir / ckpt.CHECKPOINT_NAME if self.run_dir is not None else None

    def load(self) -> dict | None:
        """The checkpoint to resume from, ``None`` for a fresh run; refuses to start
        afresh over a checkpoint unless ``overwrite``, and a resume without one."""
        path = self.checkpoint_path
        if path is not None and path.exists():
            if self.resume:
                return ckpt.load(path)
            if not self.overwrite:
                raise FileExistsError(
                    f"{path} exists; pass resume=True to continue that run, "
                    "overwrite=True to start afresh, or another run_dir"
                )
        elif self.resume:
            raise FileNotFoundError(
                f"resume=True but {self.run_dir} holds no {ckpt.CHECKPOINT_NAME}; pass "
                "resume=False to start a new run there"
            )
        return None

    def holding_lock(self, body):
        """Run ``body()`` holding the run directory's lock
        (:class:`~pyro_aevb.rundir.RunLock`: a second fit into the same run directory is
        refused while this one runs); a run directory this call created and left empty
        (it failed before writing) is removed."""
        if self.run_dir is None:
            return body()
        existed = self.run_dir.exists()
        try:
            with RunLock(self.run_dir):
                return body()
        except BaseException:
            if not existed and self.run_dir.is_dir() and not any(self.run_dir.iterdir()):
                self.run_dir.rmdir()
            raise


class Checkpointer:
    """Restores a resumed run and writes its checkpoint after every epoch.

    :param settings: the run directory's settings.
    :param config: the run's config (``FitSettings.run_config``), stored and compared.
    :param strategy: which process writes, and every process's RNG state.
    """

    def __init__(self, settings: RunDirSettings, config: dict, strategy, **parts):
        self.settings, self.config, self.strategy = settings, config, strategy
        #: model, guide, step, generator, history: what the checkpoint holds
        self.parts = parts

    def restore(self, state: dict, lr: float) -> tuple[int, float]:
        """Check that ``state`` is this run's and load it; ``(epoch, train_seconds)``."""
        model, guide = self.parts["model"], self.parts["guide"]
        path, metadata = self.settings.checkpoint_path, self.settings.run_metadata
        run_state.check_resumable(state, self.config, model, guide, path, metadata)
        epoch, seconds = run_state.restore(state, **self.parts)
        # a resume may lower the learning rate (only without a schedule, whose restored
        # state then holds the rate): the optimizer's restored state carries the old one
        if state["config"].get("lr") != lr:
            for group in self.parts["step"].optimizer.param_groups:
                group["lr"] = lr
        self.strategy.restore_rng(state)
        self.strategy.resumed(self.parts["history"].rows)
        return epoch, seconds

    def on_epoch_end(self, epoch: int, train_seconds: float) -> None:
        """Write the checkpoint and ``history.csv`` (the writing process only)."""
        path = self.settings.checkpoint_path
        if path is None:
            return
        rank_rng = self.strategy.gather_rng()  # a collective: every process takes part
        if not self.strategy.writes:
            return
        run_state.save(
            path,
            epoch=epoch,
            config=self.config,
            train_seconds=train_seconds,
            metadata=self.settings.run_metadata,
            rank_rng=rank_rng,
            **self.parts,
        )
        self.parts["history"].write_csv(self.settings.run_dir / HISTORY_NAME)


__all__ = ["Checkpointer", "RunDirSettings"]
