"""Wall-clock reads that wait for the accelerator: CUDA kernels run asynchronously, so a timer
read while kernels are queued measures the launch, not the work."""

from __future__ import annotations

import time

import torch


def clock(device: torch.device | str | None = None) -> float:
    """``time.perf_counter()`` once ``device``'s queued work has finished (a no-op wait on the CPU)."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


__all__ = ["clock"]
