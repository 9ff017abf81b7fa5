"""Resolving the device a user asks for, with a clear error when it is not there."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device) -> torch.device:
    """``torch.device`` for ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...).

    :raises ValueError: for a malformed name, or CUDA requested where PyTorch
        sees no CUDA device (before any data are moved or steps taken).
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device '{device}'; use 'cpu', 'cuda' or 'cuda:N'") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device '{device}' requested but PyTorch sees no CUDA device "
                f"(torch {torch.__version__}, built with CUDA {torch.version.cuda}); "
                "use --device cpu or install a CUDA build of PyTorch on a machine with a GPU"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device '{device}' requested but only {torch.cuda.device_count()} "
                "CUDA device(s) are visible"
            )
    elif dev.type != "cpu":
        raise ValueError(f"unsupported device type '{dev.type}'; use 'cpu' or 'cuda'")
    return dev
