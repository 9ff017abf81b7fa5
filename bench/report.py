"""Writing a benchmark's results: the command that produced them, the machine's load, the
``.json`` and ``.md`` files and the footer every report ends with."""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

#: where the benchmarks write their results by default
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """``python -m bench.SCRIPT ARGS``, quoted for a shell: what reproduces the results."""
    words = sys.argv[1:] if argv is None else argv
    return f"python -m bench.{script} " + " ".join(shlex.quote(a) for a in words)


def load_average() -> tuple[float, float, float]:
    """The 1-, 5- and 15-minute load averages: other processes slow every timing, so a
    report says whether the run had the cores to itself."""
    return os.getloadavg()


def warm_up_optimizers() -> None:
    """``torch.optim`` imports ``torch._dynamo`` (about a second) on first use: pay it
    before timing, not in whichever implementation happens to train first."""
    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


def _load(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.2f}"


def environment_line(env: dict, load_start: float | None, load_end: float, tail: str = "") -> str:
    """The date, machine, versions, commit and load of a run, one sentence; ``tail``
    (e.g. ``"; 3.2 min in all"``) goes before its full stop."""
    return (
        f"{env['date_utc']}; {env['platform']}, {env['cpu_count']} CPUs; torch {env['torch']}, "
        f"pyro {env['pyro']}, pyro-aevb {env['pyro_aevb']} (commit {str(env['commit'])[:10]}"
        f"{', library tree modified' if env['library_tree_dirty'] else ''}); "
        f"1-minute load average {_load(load_start)} at the start, "
        f"{load_end:.2f} at the end{tail}."
    )


def produced_by(command: str, resumed_with: Sequence[str] = ()) -> list[str]:
    """The report's last lines: the command (and each resuming command) in a code block."""
    return ["Produced by:", "", "```", command, *(f"{c}  # resumed" for c in resumed_with),
            "```", ""]  # fmt: skip


def result_paths(stem: str | os.PathLike) -> tuple[Path, Path]:
    """``STEM.json`` and ``STEM.md``, their folder created. The suffixes are appended
    rather than set with ``with_suffix``, so a stem with a dot in it is kept whole."""
    json_path, md_path = Path(f"{stem}.json"), Path(f"{stem}.md")
    json_path.parent.mkdir(parents=True, exist_ok=True)
    return json_path, md_path


def write_results(
    results: dict, stem: str | os.PathLike, markdown: str, indent: int = 2
) -> tuple[Path, Path]:
    """Write ``results`` to ``STEM.json`` and the report ``markdown`` to ``STEM.md``."""
    json_path, md_path = result_paths(stem)
    json_path.write_text(json.dumps(results, indent=indent) + "\n")
    md_path.write_text(markdown)
    return json_path, md_path
