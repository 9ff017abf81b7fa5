"""Small file helpers shared by the run directory and the training loop."""

from __future__ import annotations

import json
import os
from pathlib import Path


def save_json(obj, path: str | os.PathLike) -> None:
    """Write ``obj`` as indented JSON atomically (a temporary file, then a rename)."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)
