"""AdamW parameter groups and learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lmforge.training import build_optimizer, build_scheduler, lr_multiplier


class MyLayerNorm(nn.Module):
    """A hand-written norm: recognised by its class name."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.weight


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.LayerNorm = nn.LayerNorm(4)
        self.dense = nn.Linear(4, 4)
        self.custom_norm = MyLayerNorm(4)
        self.head = nn.Linear(4, 10)
        self.head.weight = self.emb.weight  # tied: must be counted once
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_param_groups_split_decay_and_dedupe_tied():
    model = Tiny()
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1)
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    def ids(ps):
        return {id(p) for p in ps}
    assert ids(decay["params"]) == ids([model.emb.weight, model.dense.weight])
    assert ids(no_decay["params"]) == ids(
        [model.LayerNorm.weight, model.LayerNorm.bias, model.dense.bias, model.custom_norm.weight, model.head.bias]
    )
    # Every trainable parameter exactly once; frozen ones not at all.
    all_params = decay["params"] + no_decay["params"]
    assert len(all_params) == len(ids(all_params))
    assert ids(all_params) == ids(p for p in model.parameters() if p.requires_grad)
    assert opt.defaults["betas"] == (0.9, 0.999) and opt.defaults["eps"] == 1e-8


def _lrs(schedule: str, warmup: int, total: int, steps: list[int]) -> list[float]:
    """The lr the optimizer holds after `s` scheduler steps, for each s in steps."""
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = build_scheduler(opt, schedule, warmup_steps=warmup, total_steps=total)
    out, taken = [], 0
    for s in steps:
        while taken < s:
            opt.step()
            sched.step()
            taken += 1
        out.append(opt.param_groups[0]["lr"])
    return out


def test_linear_schedule():
    # warmup start, mid-warmup, warmup end, decay midpoint, end, past the end
    lrs = _lrs("linear", warmup=10, total=110, steps=[0, 5, 10, 60, 110, 115])
    assert lrs == pytest.approx([0.0, 1.0, 2.0, 1.0, 0.0, 0.0])


def test_cosine_schedule():
    lrs = _lrs("cosine", warmup=10, total=110, steps=[0, 10, 35, 60, 110, 120])
    half_way_down = 2.0 * 0.5 * (1 + math.cos(math.pi * 0.25))
    assert lrs == pytest.approx([0.0, 2.0, half_way_down, 1.0, 0.0, 0.0], abs=1e-12)


def test_constant_schedule_and_no_warmup():
    assert _lrs("constant", warmup=4, total=10, steps=[0, 2, 4, 10, 50]) == pytest.approx([0, 1, 2, 2, 2])
    assert _lrs("linear", warmup=0, total=4, steps=[0, 2, 4]) == pytest.approx([2.0, 1.0, 0.0])


def test_unknown_schedule_rejected():
    with pytest.raises(ValueError, match="schedule"):
        lr_multiplier("exponential", 0, 10)


def test_scheduler_state_is_plain():
    """The schedule is a plain function, so the scheduler state holds numbers only (weights_only)."""
    opt = torch.optim.AdamW([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(opt, "cosine", 2, 10)
    assert sched.state_dict()["lr_lambdas"] == [None]
