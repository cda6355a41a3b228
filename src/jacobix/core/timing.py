"""Wall-clock reads that wait for the accelerator: CUDA kernels run asynchronously, so a timer
read while kernels are queued measures the launch, not the work."""

from __future__ import annotations

import time

import torch


def clock(device: torch.device | str | None = None) -> float:
    """``time.perf_counter()`` once ``device``'s queued work has finished (no wait on the CPU).

    Any accelerator is waited for (``torch.accelerator.synchronize`` where torch has it: CUDA,
    ROCm, MPS, XPU, ...); older torch builds fall back to CUDA's own call."""
    device = torch.device(device) if device is not None else None
    if device is not None and device.type not in ("cpu", "meta"):
        accelerator = getattr(torch, "accelerator", None)
        if accelerator is not None and hasattr(accelerator, "synchronize"):
            accelerator.synchronize(device)
        elif device.type == "cuda":
            torch.cuda.synchronize(device)
    return time.perf_counter()


__all__ = ["clock"]
