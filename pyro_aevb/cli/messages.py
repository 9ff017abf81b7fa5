"""What the command line prints: the metrics summary, and one paragraph per failure saying
what went wrong and what to do."""

from __future__ import annotations

import contextlib
import errno
import json
import shlex
from pathlib import Path

from ..checkpoint import CHECKPOINT_NAME
from ..evaluation import ImplausibleEstimateError
from ..pairs import get_pair
from ..psis import khat_advice
from ..runs.evaluation_run import collapse_lines
from ..training import NonFiniteLossError


def _summary(metrics: dict, pair: str | None = None, run_dir: str | None = None) -> str:
    """What the command line prints: every metric with its unit and standard error, the
    lines of ``pair``'s own metrics (:attr:`~pyro_aevb.pairs.PairSpec.summary`), then
    the warnings (the k-hat advice names the commands for ``run_dir``)."""
    lines = [
        f"test ELBO            {metrics['test_elbo']:9.2f} +- {metrics['test_elbo_se']:.2f} nats",
        f"test log-likelihood  {metrics['test_log_likelihood']:9.2f} +- "
        f"{metrics['test_log_likelihood_se']:.2f} nats "
        f"(K = {metrics['log_likelihood_particles']} importance samples)",
        f"ESS mean             {metrics['ess_mean']:9.1f} "
        f"(effective samples of the K, per data point)",
    ]
    if "test_log_evidence" in metrics:
        lines.append(
            f"test log-evidence    {metrics['test_log_evidence']:9.3f} +- "
            f"{metrics['test_log_evidence_se']:.3f} nats (exact)"
        )
    spec = get_pair(pair) if pair is not None else None
    if spec is not None and spec.summary is not None:
        lines += spec.summary(metrics)
    lines += collapse_lines(metrics)
    if "pareto_k_mean" in metrics:
        lines.append(
            f"Pareto k-hat mean    {metrics['pareto_k_mean']:9.2f} "
            f"({100 * metrics['pareto_k_fraction_above_0.7']:.0f}% above 0.7)"
        )
    if metrics.get("train_seconds") is not None:
        lines.append(
            f"training             {metrics['train_seconds']:9.1f} s "
            f"({metrics['epochs_completed']} epochs)"
        )
    n = metrics.get("num_test_points")
    lines.append(
        "All values are nats per data point, means over the "
        + (f"{n} " if n else "")
        + "test points; +- is the standard error of that mean over the test points."
    )
    advice = khat_advice(metrics, run_dir)  # k-hat flags most points: what to do
    if advice is not None:
        lines.append(f"WARNING: {advice}")
    for problem in metrics.get("problems", []):
        lines.append(f"WARNING: {problem}")
    return "\n".join(lines)


def _resume_command(argv: list[str], out: str) -> str:
    words = list(argv)
    if "--out" not in words:
        words += ["--out", out]
    words = [w for w in words if w != "--overwrite"]
    if "--resume" not in words:
        words.append("--resume")
    return "pyro-aevb " + shlex.join(words)


def _lower_lr_command(argv: list[str], out: str, lr: float | None) -> str:
    """The resume command with a tenth of the learning rate (a resume may change --lr)."""
    words = list(argv)
    if "--lr" in words[:-1]:
        at = words.index("--lr")
        del words[at : at + 2]
    if lr is None:  # the pair's default: what the run's config.json recorded
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            lr = float(json.loads((Path(out) / "config.json").read_text())["lr"])
    lower = (lr if lr is not None else 1e-3) / 10
    return _resume_command(words, out) + f" --lr {lower:g}"


_OS_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EDQUOT: "the disk quota is exhausted",
}


def _message(e: BaseException, args, argv: list[str]) -> str:
    """One paragraph saying what went wrong and what to do."""
    out = getattr(args, "resolved_out", None)
    has_checkpoint = out is not None and (Path(out) / CHECKPOINT_NAME).exists()
    fit = args.command == "fit"
    if isinstance(e, KeyboardInterrupt):
        if fit and has_checkpoint:
            return (
                f"interrupted. The last finished epoch is saved in {out}; continue the run "
                f"with: {_resume_command(argv, out)}"
            )
        if fit:
            return "interrupted before the first epoch finished; nothing was saved"
        return "interrupted; metrics.json was not changed"
    if isinstance(e, ImplausibleEstimateError):
        where = f" The checkpoint in {out} is kept; metrics.json was not written." if out else ""
        again = " Refit with a smaller --lr and --overwrite." if fit else ""
        return (
            "the evaluation gave impossible numbers, which are not a result: "
            + "; ".join(e.problems)
            + ". The parameters have most likely diverged numerically (a learning rate too "
            f"large).{where}{again}"
        )
    if isinstance(e, NonFiniteLossError):
        lower = _lower_lr_command(argv, out, getattr(args, "lr", None)) if has_checkpoint else ""
        kept = (
            f" The last good checkpoint in {out} is kept: continue it with a lower learning "
            f"rate ({lower}), start afresh with --overwrite, or look into the data and model"
            if has_checkpoint
            else " Nothing was saved: lower --lr or look into the data and model"
        )
        return f"training diverged: {e}.{kept}."
    if isinstance(e, MemoryError):
        return str(e) or "out of memory; use fewer particles or a smaller batch size"
    if isinstance(e, OSError):
        if e.filename is not None:
            text = f"{_OS_REASONS.get(e.errno, e.strerror)}: {e.filename}"
        else:
            text = e.strerror if e.strerror is not None else str(e)
        if fit and has_checkpoint and not isinstance(e, (FileNotFoundError, FileExistsError)):
            text += (
                f". The last checkpoint in {out} is intact; once fixed, continue with: "
                f"{_resume_command(argv, out)}"
            )
        return text
    if isinstance(e, (ValueError, RuntimeError, NotImplementedError)):
        return str(e)
    return (
        f"unexpected {type(e).__name__}: {e}. Rerun with --debug to see the traceback, and "
        "please report it"
    )
