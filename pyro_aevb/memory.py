"""Memory an evaluation needs, and what is free, checked before any work starts."""

from __future__ import annotations

import torch

#: bytes of memory per kept importance weight of one batch: float32 log-weights and ELBO
#: terms, their float64 concatenation, the softmax for the ESS and ArviZ's float64
#: copies for PSIS (measured peak about 60 bytes; rounded up)
BYTES_PER_WEIGHT = 64


def evaluation_memory_bytes(num_particles: int, batch_size: int, num_points: int) -> int:
    """Memory an evaluation needs for the weights of one batch, ``K * B`` of them
    (see :data:`BYTES_PER_WEIGHT`), besides one forward pass of :data:`MAX_ROWS` rows."""
    return BYTES_PER_WEIGHT * int(num_particles) * min(int(batch_size), int(num_points))


def available_memory_bytes(device: torch.device) -> int | None:
    """Free memory where the weights live: ``MemAvailable`` of the host for the CPU,
    the device's free memory for CUDA; ``None`` where it cannot be read."""
    if device.type == "cuda":
        try:
            return int(torch.cuda.mem_get_info(device)[0])
        except Exception:  # no driver query available: do not guess
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(num_particles: int, batch_size: int, num_points: int, device) -> None:
    """Refuse an evaluation whose weights cannot fit, before drawing any, saying how much
    memory it needs and what to lower."""
    need = evaluation_memory_bytes(num_particles, batch_size, num_points)
    have = available_memory_bytes(torch.device(device))
    if have is not None and need > have:
        raise MemoryError(
            f"evaluating with num_particles={num_particles} needs about {need / 2**30:.1f} GiB "
            f"for the {num_particles} x {min(batch_size, num_points)} importance weights of "
            f"one batch, and {have / 2**30:.1f} GiB are available on {device}; use fewer "
            "particles (--particles / --eval-particles) or a smaller batch_size"
        )
