"""AdamW with the usual BERT weight-decay split, and the learning-rate schedules the loop uses.

Weight decay is a pull towards zero; it makes sense for weight matrices but not for biases or the
gain/shift of normalisation layers (decaying a LayerNorm gain towards 0 shrinks the activations),
so those go in a second parameter group with `weight_decay=0` (as in Google BERT and `transformers`).

Schedules are multipliers of the peak learning rate, as functions of the number of optimizer steps
taken so far (`LambdaLR` semantics, same as `transformers.get_*_schedule_with_warmup`): linear
warmup from 0 over `warmup_steps`, then linear or cosine decay to 0 at `total_steps`, or constant.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("linear", "cosine", "constant")

# Normalisation layers whose parameters are gains/shifts, never decayed.
_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.modules.batchnorm._BatchNorm,
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())


def _is_norm(module: nn.Module) -> bool:
    # The class-name test catches hand-written LayerNorm variants (e.g. a T5-style RMS LayerNorm).
    return isinstance(module, _NORM_TYPES) or "LayerNorm" in type(module).__name__


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW parameter groups: decayed weights, and biases + normalisation parameters.

    Shared (tied) parameters appear once. A parameter is exempt from decay if any module that holds
    it is a normalisation layer or its name there ends in "bias".
    """
    params: dict[int, nn.Parameter] = {}
    no_decay: dict[int, bool] = {}
    # remove_duplicate=False: a tied parameter is seen under every module that holds it, so that
    # "no decay" wins if any of its uses asks for it.
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False, remove_duplicate=False):
            if not p.requires_grad:
                continue
            exempt = _is_norm(module) or name.endswith("bias")
            key = id(p)
            params.setdefault(key, p)
            no_decay[key] = no_decay.get(key, False) or exempt
    decay = [p for key, p in params.items() if not no_decay[key]]
    exempt = [p for key, p in params.items() if no_decay[key]]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": exempt, "weight_decay": 0.0}]
    # An empty group is harmless to AdamW but keep the state dict tidy.
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: nn.Module,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> torch.optim.AdamW:
    """torch AdamW over `param_groups(model, weight_decay)`.

    The fused kernel (one pass over all parameters, CPU and CUDA since torch 2.4) replaces the
    per-tensor loop torch uses by default on CPU; it computes the same update.
    """
    groups = param_groups(model, weight_decay)
    devices = {p.device.type for g in groups for p in g["params"]}
    fused = devices <= {"cpu", "cuda"} and all(p.dtype.is_floating_point for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None)


def lr_multiplier(schedule: str, warmup_steps: int, total_steps: int) -> Callable[[int], float]:
    """The function `step -> multiplier of the peak lr` for `LambdaLR`."""
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {SCHEDULES}")
    if warmup_steps < 0 or total_steps < 0:
        raise ValueError(f"warmup_steps ({warmup_steps}) and total_steps ({total_steps}) must be >= 0")

    # A plain function (not a callable object): LambdaLR then stores nothing for it in its state
    # dict, so the scheduler state stays plain numbers and the schedule is rebuilt from arguments.
    def multiplier(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        if schedule == "constant":
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        progress = min(progress, 1.0)
        if schedule == "linear":
            return 1.0 - progress
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


def build_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str = "linear", warmup_steps: int = 0, total_steps: int = 0
) -> LambdaLR:
    """`LambdaLR`: linear warmup from 0, then linear / cosine decay to 0 at `total_steps`, or constant."""
    return LambdaLR(optimizer, lr_multiplier(schedule, warmup_steps, total_steps))
