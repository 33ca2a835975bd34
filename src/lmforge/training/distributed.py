"""torch.distributed set-up for `torchrun` (gloo on CPU, nccl on GPU; a single process needs nothing), what
the training loop asks of the process group, and FSDP2 sharding (`shard_model`, `full_state_dict`).

FSDP2 (`torch.distributed.fsdp.fully_shard`) shards each transformer layer (the elements of the model's
`nn.ModuleList` layer stacks) as one unit and the root (embeddings, heads, everything else) as another:
a layer's parameters are all-gathered just before its forward / backward and freed after, gradients are
reduce-scattered, and each rank keeps only its shard of the parameters, gradients and optimizer state.
Tied parameters (input embeddings = LM head, ELECTRA's shared embeddings, T5's shared table) live outside
the layer stacks, so they stay in the root unit whole and their tying is kept; a layer whose parameters
are shared with a module outside it is not made a unit of its own (the root holds it).
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


def maybe_init_distributed() -> tuple[int, int]:
    """(rank, world_size); initialises the default process group when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def local_device() -> torch.device:
    """This process's device: cuda:LOCAL_RANK when CUDA is available (torchrun sets LOCAL_RANK), else cpu."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return torch.device("cpu")


@dataclass
class DistInfo:
    """This process's rank and the world size; barrier, gather and broadcast that do nothing in a single
    process."""

    rank: int = 0
    world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def gather(self, obj: Any) -> list[Any]:
        if not self.enabled:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank (picklable values)."""
        if not self.enabled:
            return obj
        holder = [obj]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]


def dist_info() -> DistInfo:
    """The initialised process group's rank and size, else rank 0 of 1."""
    if dist.is_available() and dist.is_initialized():
        return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size())
    return DistInfo()


# ------------------------------------------------------------------------------------------------- FSDP2
# Parameters read outside their layer's forward, so the layer holding them stays in the root unit: T5's stack
# computes the relative position bias of its first block before it runs the blocks.
READ_OUTSIDE_LAYER = ("relative_attention_bias",)


def transformer_layers(model: nn.Module) -> list[nn.Module]:
    """The FSDP units below the root: elements of `nn.ModuleList`s (the layer stacks: BERT's encoder.layer,
    GPT-2's h, Llama's / BART's layers, T5's block), outermost only, whose parameters are used nowhere
    outside them (a tied parameter stays in the root, whole) and not read outside the layer's forward
    (`READ_OUTSIDE_LAYER`)."""
    owners: dict[int, set[str]] = {}  # parameter -> every name it has in the model
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), set()).add(name)
    units: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList):
            continue
        for index, layer in enumerate(module):
            prefix = f"{name}.{index}." if name else f"{index}."
            if any(prefix.startswith(unit + ".") for unit, _ in units):
                continue  # inside a unit already (T5's block.i.layer)
            names = [n for p in layer.parameters() for n in owners[id(p)]]
            if all(n.startswith(prefix) and not any(key in n for key in READ_OUTSIDE_LAYER) for n in names):
                units.append((prefix[:-1], layer))
    return [layer for _, layer in units]


def shard_model(model: nn.Module, bf16: bool) -> nn.Module:
    """A copy of `model` sharded with FSDP2 (`fully_shard` per transformer layer, then the root), rank 0's
    weights on every rank. With `bf16`, parameters are all-gathered and computed in bfloat16 and gradients
    reduced in float32 (`MixedPrecisionPolicy`). `model` itself is left as it was (fully_shard changes the
    classes and parameters of the modules it wraps)."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    sharded = copy.deepcopy(model)
    # fully_shard keeps each rank's own slice of its local tensor: make every rank's tensors rank 0's first.
    with torch.no_grad():
        for tensor in sharded.state_dict().values():
            dist.broadcast(tensor, src=0)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if bf16 else None,
                                  reduce_dtype=torch.float32 if bf16 else None)
    for layer in transformer_layers(sharded):
        fully_shard(layer, mp_policy=policy)
    fully_shard(sharded, mp_policy=policy)
    return sharded


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_state_dict(sharded: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state dict, all-gathered on every rank (a collective call)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(sharded, options=StateDictOptions(full_state_dict=True))


def copy_full_weights(sharded: nn.Module, model: nn.Module) -> None:
    """Put the sharded copy's current weights into the whole `model` (in place; a collective call)."""
    state = full_state_dict(sharded)
    with torch.no_grad():
        target = model.state_dict()
        for name, value in state.items():
            target[name].copy_(value)
