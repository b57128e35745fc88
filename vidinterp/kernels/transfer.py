"""Moving small host-made tensors (seeded subsample indices, head indices) to the model's
device inside a site visit without making the host wait for the device."""

from __future__ import annotations

import torch

__all__ = ["to_device"]


def to_device(tensor: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """``tensor`` on ``device``, copied without a host synchronisation.

    A plain ``tensor.to("cuda")`` from host memory waits until the device has finished the work
    queued before it (one stall per call, so per site visit inside an analysis' ``update``).
    From pinned host memory with ``non_blocking=True`` the copy is queued like a kernel and the
    host goes on. The values are the same; a tensor already on ``device`` is returned as is (and
    one on an accelerator is copied to the host the ordinary, waiting way).
    """
    device = torch.device(device)
    if tensor.device.type == "cpu" and device.type == "cuda":
        tensor = tensor.pin_memory()
    # never non-blocking from an accelerator to the host: the host would read it before it arrived
    return tensor.to(device, non_blocking=not (device.type == "cpu" and tensor.device.type != "cpu"))
