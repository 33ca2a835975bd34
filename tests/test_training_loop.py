"""The training loop on a toy LM: learning, gradient accumulation, metrics, evaluation, failure."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lmforge.training import TrainArgs, TrainingError, load_latest_checkpoint, train

VOCAB = 16


@dataclass
class ToyOutput:
    loss: torch.Tensor
    logits: torch.Tensor
    mlm_loss: torch.Tensor | None = None


class ToyLM(nn.Module):
    """Embedding -> LayerNorm -> dropout -> linear; learns labels = f(input_ids) per token."""

    def __init__(self, dim: int = 16, dropout: float = 0.0):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, dim)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, VOCAB)
        self.nan_at_call: int | None = None  # make the loss NaN on this forward call (1-based)
        self.calls = 0

    def forward(self, input_ids, labels, attention_mask=None):
        self.calls += 1
        logits = self.head(self.drop(self.norm(self.emb(input_ids))))
        loss = F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1))
        if self.calls == self.nan_at_call:
            loss = loss * float("nan")
        return ToyOutput(loss=loss, logits=logits, mlm_loss=loss.detach())


class ToyBatches:
    """Endless seeded batches; batch i depends only on (seed, i). Position = `index`."""

    def __init__(self, seed: int = 0, batch_size: int = 4, seq_len: int = 8, pad: int = 0):
        self.seed, self.batch_size, self.seq_len, self.pad = seed, batch_size, seq_len, pad
        self.index = 0

    def make(self, i: int) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        ids = torch.randint(0, VOCAB, (self.batch_size, self.seq_len), generator=g)
        mask = torch.ones_like(ids)
        if self.pad:
            mask[:, -self.pad :] = 0
        return {"input_ids": ids, "attention_mask": mask, "labels": (ids * 3 + 1) % VOCAB}

    def __iter__(self):
        while True:
            batch = self.make(self.index)
            self.index += 1
            yield batch

    def state_dict(self):
        return {"index": self.index}

    def load_state_dict(self, state):
        self.index = state["index"]


class ListBatches:
    """A finite list of batches (one pass = one epoch), resumable."""

    def __init__(self, batches):
        self.batches, self.index = batches, 0

    def __iter__(self):
        while self.index < len(self.batches):
            self.index += 1
            yield self.batches[self.index - 1]
        self.index = 0  # the next pass starts over

    def state_dict(self):
        return {"index": self.index}

    def load_state_dict(self, state):
        self.index = state["index"]


def _model(seed: int = 0, **kw) -> ToyLM:
    torch.manual_seed(seed)
    return ToyLM(**kw)


def initial_loss(batch: dict[str, torch.Tensor], bf16: bool = False) -> float:
    """The loss of a fresh `_model()` on `batch`, computed outside the loop."""
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        return _model()(**batch).loss.item()


def test_loss_decreases(tmp_path):
    args = TrainArgs(tmp_path, max_steps=60, learning_rate=3e-2, schedule="constant", progress=False)
    result = train(_model(), ToyBatches(), args)
    assert len(result.losses) == 60 and result.step == 60 and result.start_step == 0
    assert result.losses[0] == pytest.approx(initial_loss(ToyBatches().make(0)), rel=1e-6)  # before any update
    assert result.losses[0] == pytest.approx(math.log(VOCAB), rel=0.2)  # an untrained model: near uniform
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    assert result.tokens == 60 * 4 * 8


def test_grad_accumulation_matches_bigger_batch(tmp_path):
    source = ToyBatches(batch_size=4)
    big = [source.make(i) for i in range(5)]
    halves = [{k: v[sl] for k, v in b.items()} for b in big for sl in (slice(0, 2), slice(2, 4))]
    common = {"max_steps": 5, "learning_rate": 1e-2, "warmup_steps": 2, "progress": False}

    model_a, model_b = _model(), _model()
    res_a = train(model_a, ListBatches(big), TrainArgs(tmp_path / "a", **common))
    res_b = train(model_b, ListBatches(halves), TrainArgs(tmp_path / "b", grad_accum_steps=2, **common))
    assert res_a.losses == pytest.approx(res_b.losses, rel=1e-5, abs=1e-6)
    for pa, pb in zip(model_a.parameters(), model_b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    assert res_a.tokens == res_b.tokens == 5 * 4 * 8


def test_finite_source_is_reiterated(tmp_path):
    source = ToyBatches()
    batches = [source.make(i) for i in range(3)]
    model = _model()
    seen = []
    model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["input_ids"]), with_kwargs=True)
    result = train(model, ListBatches(batches), TrainArgs(tmp_path, max_steps=7, learning_rate=1e-2, progress=False))
    assert len(result.losses) == 7 and len(seen) == 7
    for step, ids in enumerate(seen):  # epochs of batches 0, 1, 2 in order, then again
        assert torch.equal(ids, batches[step % 3]["input_ids"]), step
    assert result.losses[0] == pytest.approx(initial_loss(batches[0]), rel=1e-6)
    assert result.losses[3] < result.losses[0]  # same batch, but the model has learned since


def test_metrics_jsonl_and_evaluate(tmp_path):
    seen = []

    def evaluate(model):
        # The loop puts the model in eval mode without grad, and back to train mode after.
        seen.append((model.training, torch.is_grad_enabled()))
        torch.rand(3)  # consuming randomness here must not disturb training
        return {"acc": 0.5, "eval_loss": 1.25}

    args = TrainArgs(tmp_path, max_steps=7, log_every=2, eval_every=3, progress=False, learning_rate=1e-3)
    model = _model()
    result = train(model, ToyBatches(pad=2), args, evaluate=evaluate)
    assert model.training
    assert seen == [(False, False)] * 3  # steps 3, 6 and the end (7)

    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in records if "loss" in r]
    eval_recs = [r for r in records if "eval_acc" in r]
    assert [r["step"] for r in train_recs] == [2, 4, 6, 7]
    for r in train_recs:
        assert {"step", "loss", "lr", "tokens_per_s", "grad_norm", "elapsed", "mlm_loss"} <= set(r)
        assert r["tokens_per_s"] > 0 and r["grad_norm"] > 0
    # loss is the mean over the logging interval
    assert train_recs[0]["loss"] == pytest.approx(sum(result.losses[:2]) / 2)
    assert train_recs[-1]["loss"] == pytest.approx(result.losses[6])
    assert [r["step"] for r in eval_recs] == [3, 6, 7]
    assert eval_recs[0]["eval_loss"] == 1.25 and eval_recs[0]["eval_acc"] == 0.5
    assert result.final_eval == {"eval_acc": 0.5, "eval_loss": 1.25}
    assert [r["step"] for r in result.eval_history] == [3, 6, 7]
    # tokens counted from attention_mask: 6 of 8 positions per row
    assert result.tokens == 7 * 4 * 6


def test_bf16_autocast_trains(tmp_path):
    args = TrainArgs(tmp_path, max_steps=40, bf16=True, learning_rate=3e-2, schedule="constant", progress=False)
    result = train(_model(), ToyBatches(), args)
    assert len(result.losses) == 40 and all(math.isfinite(x) for x in result.losses)
    batch = ToyBatches().make(0)
    # The first step's loss is the bf16-autocast loss of the initial weights: close to fp32, not equal.
    assert result.losses[0] == pytest.approx(initial_loss(batch, bf16=True), rel=1e-6)
    assert result.losses[0] != initial_loss(batch)
    assert result.losses[0] == pytest.approx(initial_loss(batch), rel=2e-2)
    first, last = sum(result.losses[:5]) / 5, sum(result.losses[-5:]) / 5
    assert last < 0.5 * first, (first, last)


def test_non_finite_loss_stops_and_keeps_last_checkpoint(tmp_path):
    model = _model()
    model.nan_at_call = 5  # the forward of step 5
    args = TrainArgs(tmp_path, max_steps=8, save_every=2, progress=False)
    with pytest.raises(TrainingError, match=r"non-finite loss nan at step 5"):
        train(model, ToyBatches(), args)
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert ckpts == ["latest", "step-000002", "step-000004"]
    checkpoint = load_latest_checkpoint(tmp_path)
    assert checkpoint.step == 4 and checkpoint.path.name == "step-000004"
    fresh = _model(seed=1)
    checkpoint.load_weights(fresh)
    assert all(torch.isfinite(p).all() for p in fresh.parameters())
    # and the run can be resumed from it
    result = train(_model(seed=2), ToyBatches(), TrainArgs(tmp_path, max_steps=6, save_every=2, resume=True,
                                                           progress=False))
    assert result.start_step == 4 and len(result.losses) == 2


def test_fresh_run_refuses_existing_checkpoints(tmp_path):
    args = TrainArgs(tmp_path, max_steps=2, save_every=1, progress=False)
    train(_model(), ToyBatches(), args)
    with pytest.raises(TrainingError, match="resume=True"):
        train(_model(), ToyBatches(), args)
    args.overwrite = True
    result = train(_model(), ToyBatches(), args)
    assert result.start_step == 0 and result.last_checkpoint.name == "step-000002"


def test_max_time_stops_with_a_checkpoint(tmp_path):
    evals = []
    args = TrainArgs(tmp_path, max_steps=50, max_time=1e-9, save_every=100, log_every=100, progress=False)
    result = train(_model(), ToyBatches(), args, evaluate=lambda m: evals.append(1) or {"x": 1.0})
    # The first step already exceeds the budget: it is treated as the final step.
    assert result.step == 1 and len(result.losses) == 1 and evals == [1]
    assert result.last_checkpoint.name == "step-000001" and load_latest_checkpoint(tmp_path).step == 1
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 1]  # the training record and the eval record
    args.max_time, args.resume = None, True
    assert train(_model(), ToyBatches(), args).step == 50


def test_args_validation():
    with pytest.raises(ValueError):
        TrainArgs("x", max_steps=0)
    with pytest.raises(ValueError):
        TrainArgs("x", max_steps=1, grad_accum_steps=0)
    assert TrainArgs("x", max_steps=100, warmup_ratio=0.1).num_warmup_steps == 10
    assert TrainArgs("x", max_steps=100, warmup_ratio=0.1, warmup_steps=3).num_warmup_steps == 3


@dataclass
class TwoPartOutput:
    loss: torch.Tensor
    logits: torch.Tensor
    token_loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    unused_loss: torch.Tensor | None = None  # never set: not a part of this model's loss


class TwoPartLM(ToyLM):
    """Its loss is token loss + 0.5 x a weight penalty; reports both parts under names the loop never saw."""

    def forward(self, input_ids, labels, attention_mask=None):
        logits = self.head(self.norm(self.emb(input_ids)))
        token_loss = F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1))
        aux_loss = 0.5 * self.head.weight.square().mean()
        return TwoPartOutput(loss=token_loss + aux_loss, logits=logits, token_loss=token_loss.detach(),
                             aux_loss=aux_loss.detach())


def test_loss_parts_of_any_name_are_logged(tmp_path):
    torch.manual_seed(0)
    args = TrainArgs(tmp_path, max_steps=4, log_every=2, grad_accum_steps=2, progress=False, learning_rate=1e-3)
    result = train(TwoPartLM(), ToyBatches(), args)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    for r in records:
        assert "unused_loss" not in r and "mlm_loss" not in r
        assert r["token_loss"] > 0 and r["aux_loss"] > 0
        assert r["token_loss"] + r["aux_loss"] == pytest.approx(r["loss"], rel=1e-5)
    assert records[0]["loss"] == pytest.approx(sum(result.losses[:2]) / 2)


# ------------------------------------------------------------------------------- time-fitted schedule
class FakeClock:
    """`time` for the loop module: every forward call of `ClockedLM` advances it, so the loop measures the
    step times the test sets whatever the machine does."""

    def __init__(self):
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


class ClockedLM(ToyLM):
    """The first forward takes 5 s (building kernels), the others `seconds` each, from call
    `slow_from_call` on `slow_seconds`."""

    def __init__(self, clock: FakeClock, slow_from_call: int | None = None, slow_seconds: float = 2.0):
        super().__init__()
        self.clock, self.slow_from_call, self.slow_seconds = clock, slow_from_call, slow_seconds

    def forward(self, input_ids, labels, attention_mask=None):
        slow = self.slow_from_call is not None and self.calls + 1 >= self.slow_from_call
        self.clock.now += 5.0 if self.calls == 0 else self.slow_seconds if slow else 1.0
        return super().forward(input_ids, labels, attention_mask)


def _clocked(monkeypatch, **slowdown) -> ClockedLM:
    from lmforge.training import loop

    clock = FakeClock()
    monkeypatch.setattr(loop, "time", clock)
    torch.manual_seed(0)
    return ClockedLM(clock, **slowdown)


def _lrs(folder) -> list[tuple[int, float]]:
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["lr"]) for r in records if "lr" in r]


def _fits(folder) -> list[tuple[int, int]]:
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["fitted_steps"]) for r in records if "fitted_steps" in r]


def time_args(folder, **changes) -> TrainArgs:
    settings = dict(max_steps=10_000, max_time=100.0, calibration_steps=10, learning_rate=0.01, warmup_ratio=0.1,
                    log_every=1, progress=False)
    settings.update(changes)
    return TrainArgs(folder, **settings)


def _ends_its_schedule(folder, steps: int) -> None:
    from lmforge.training.optim import lr_multiplier

    lrs = dict(_lrs(folder))
    # the last step runs at the schedule's last value (warm-up ceil(0.1 x steps), linear decay to 0)
    end = lr_multiplier("linear", math.ceil(0.1 * steps), steps)
    assert lrs[steps] == pytest.approx(0.01 * end(steps - 1)) and end(steps) == 0.0


def test_time_budget_fits_the_schedule_so_the_last_step_ends_it(tmp_path, monkeypatch):
    from lmforge.training.loop import TIME_FIT_MARGIN

    result = train(_clocked(monkeypatch), ToyBatches(), time_args(tmp_path))
    # After step s the clock reads s + 4 s (5 s, then 1 s a step): the fit at 10 and the refits at 20, 40, 80
    # give s + int((100 - s - 4) x margin) steps; the last one (95) is the run's length.
    fits = [(s, s + int((96 - s) * TIME_FIT_MARGIN)) for s in (10, 20, 40, 80)]
    assert _fits(tmp_path) == fits
    assert result.step == result.schedule_steps == fits[-1][1] < 10_000
    assert len(_lrs(tmp_path)) == result.step
    _ends_its_schedule(tmp_path, result.step)


def test_refits_follow_a_machine_that_slows_down(tmp_path, monkeypatch):
    # Steps take 2 s from step 11 on: the calibration's fit (91 steps) would stop on time at step 53 with
    # the lr at ~45% of its peak; the refits at 20 (51 steps) and 40 (52) end the schedule with the budget.
    result = train(_clocked(monkeypatch, slow_from_call=11), ToyBatches(), time_args(tmp_path))
    assert _fits(tmp_path) == [(10, 91), (20, 51), (40, 52)]
    assert result.step == result.schedule_steps == 52
    _ends_its_schedule(tmp_path, 52)


def test_time_fitted_schedule_resumes_exactly(tmp_path, monkeypatch):
    reference = train(_clocked(monkeypatch), ToyBatches(), time_args(tmp_path / "ref"))
    model = _clocked(monkeypatch)
    model.nan_at_call = 91  # crash at step 91: the checkpoint of step 90 (after the last refit) is the latest
    with pytest.raises(TrainingError):
        train(model, ToyBatches(), time_args(tmp_path / "run", save_every=30))
    resumed = train(_clocked(monkeypatch), ToyBatches(), time_args(tmp_path / "run", save_every=30, resume=True))
    assert resumed.start_step == 90 and resumed.step == resumed.schedule_steps == reference.step
    assert resumed.losses == reference.losses[90:]
    assert _lrs(tmp_path / "run") == _lrs(tmp_path / "ref")


def test_a_resumed_run_keeps_its_checkpoints_schedule(tmp_path, monkeypatch):
    model = _clocked(monkeypatch)
    model.nan_at_call = 61  # the checkpoint of step 60 holds the fit of step 40 (93 steps)
    with pytest.raises(TrainingError):
        train(model, ToyBatches(), time_args(tmp_path, save_every=30))
    resumed = train(_clocked(monkeypatch), ToyBatches(), time_args(tmp_path, save_every=30, resume=True))
    assert resumed.step == resumed.schedule_steps == 93  # no refit at 80 after the resume
    assert [fit for fit in _fits(tmp_path) if fit[0] > 60] == []


def test_calibration_needs_a_time_budget():
    with pytest.raises(ValueError, match="calibration_steps"):
        TrainArgs("x", max_steps=10, calibration_steps=5)
