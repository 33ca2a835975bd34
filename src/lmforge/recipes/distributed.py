"""Process-group setup for `torchrun`: gloo on CPU, nccl on GPU. A single process needs nothing."""

from __future__ import annotations

import os

import torch


def maybe_init_distributed() -> tuple[int, int]:
    """(rank, world_size); initialises the default process group when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()
