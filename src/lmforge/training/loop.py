"""The one training loop, used by pretraining and fine-tuning alike.

Everything it does is visible in `train()`; behaviour is chosen by the `TrainArgs` dataclass, not by
callbacks. Per optimizer step:

    grad_accum_steps x (forward [bf16 autocast] -> loss / grad_accum_steps -> backward)
    -> check the loss is finite -> clip grad norm -> optimizer step -> scheduler step -> zero grad
    -> log (metrics.jsonl, progress bar) -> evaluate (every eval_every) -> checkpoint (every save_every)

The batch source is any iterable of batch dicts (HF argument names) with `state_dict()` /
`load_state_dict()`; it is re-iterated when exhausted (the next epoch), and in distributed runs it
is responsible for giving each rank its own shard.

Resume (`resume=True`) restores weights, optimizer, scheduler, RNG states and the batch-source
position from the latest checkpoint, so on CPU the resumed run's losses are bit-identical to an
uninterrupted run's. Evaluation runs with the RNG states saved and restored around it, so whether
and when it runs never changes the training random streams.

Distributed: when `torch.distributed` is initialised (e.g. under `torchrun`), the model is wrapped in
DistributedDataParallel, or with `fsdp=True` a copy of it is sharded with FSDP2 (`distributed.shard_model`:
parameters, gradients and optimizer state split over the ranks) and the caller's model receives the
gathered weights before each evaluation and at the end. Only rank 0 writes files (a sharded checkpoint:
every rank its shard) and shows progress. Logged losses and token counts are averaged / summed over ranks.

Resume on another number of processes: the weights and optimizer state load on any number (a sharded
checkpoint is resharded by torch.distributed.checkpoint; a DDP one is whole), so it is allowed when every
rank saved the same batch-source position (a global position, as `PretrainingBatches` and `TaskBatches`
keep); the random streams then restart from the seed, so the run is no longer bit-identical to an
uninterrupted one. A per-rank position (sources that shard by iterating) needs the same number.
Either kind of checkpoint resumes with or without `fsdp`.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ..cpu import capabilities as cpu_caps
from ..files import atomic_write_text
from .distributed import DistInfo, copy_full_weights, dist_info, shard_model
from .optim import build_optimizer, build_scheduler, lr_multiplier
from .state import (
    CHECKPOINTS_DIR,
    capture_rng_state,
    checkpoint_dir_name,
    list_checkpoints,
    load_latest_checkpoint,
    restore_rng_state,
    save_checkpoint,
    save_sharded_checkpoint,
)

METRICS_NAME = "metrics.jsonl"
# Optional detached parts of the loss that models expose for logging (BERT pretraining).


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. a non-finite loss); the last checkpoint is left as it was."""


@dataclass
class TrainArgs:
    output_dir: str | Path
    max_steps: int  # optimizer steps; training stops when the global step reaches it
    # Wall-clock budget of this call in seconds: the step that exceeds it is the last one (logged,
    # evaluated and checkpointed like the final step), so a later resume=True call continues.
    max_time: float | None = None
    # With max_time: after this many steps, time them and set max_steps and the lr schedule's length to
    # the steps that fit in the rest of max_time (never more than max_steps), so the schedule ends with
    # the budget on a fast or a slow machine; refit at twice the last fit's step (2c, 4c, ...) from the
    # speed since then. The fitted length is saved in checkpoints; a resumed call keeps it (no refit).
    calibration_steps: int = 0
    learning_rate: float = 5e-5  # peak learning rate
    weight_decay: float = 0.01
    warmup_steps: int = 0  # wins over warmup_ratio when > 0
    warmup_ratio: float = 0.0  # fraction of schedule_steps
    schedule: str = "linear"  # "linear" | "cosine" | "constant"
    # Length of the lr schedule; defaults to max_steps. Set it when a run is deliberately stopped
    # early and resumed with a larger max_steps, so both parts follow the same schedule.
    schedule_steps: int | None = None
    adam_betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_accum_steps: int = 1
    max_grad_norm: float = 1.0  # <= 0: no clipping (the norm is still logged)
    bf16: bool = False  # torch.autocast(bfloat16) on the model's device type
    eval_every: int = 0  # 0: evaluate only at the end (when an evaluate function is given)
    save_every: int = 0  # 0: no checkpoints; otherwise every save_every steps and at the end
    keep_last: int = 2  # checkpoints kept; <= 0 keeps all
    log_every: int = 10  # metrics.jsonl training records (losses are recorded every step anyway)
    seed: int = 0  # rank r seeds with seed + r
    resume: bool = False  # continue from output_dir's latest checkpoint if there is one
    overwrite: bool = False  # with resume=False: delete checkpoints of an earlier run in output_dir
    progress: bool = True  # tqdm progress bar (rank 0)
    # DDP: needed when some parameters get no gradient in a step (e.g. an unused pooler).
    ddp_find_unused_parameters: bool = False
    # Distributed runs: shard a copy of the model with FSDP2 (each transformer layer and the root; with bf16 a
    # bfloat16 MixedPrecisionPolicy) instead of DDP; checkpoints become sharded (torch.distributed.checkpoint).
    # One process trains the model as it is.
    fsdp: bool = False

    def __post_init__(self) -> None:
        if self.max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {self.max_steps}")
        if self.grad_accum_steps < 1:
            raise ValueError(f"grad_accum_steps must be >= 1, got {self.grad_accum_steps}")
        if not 0.0 <= self.warmup_ratio <= 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1], got {self.warmup_ratio}")
        if min(self.eval_every, self.save_every, self.log_every) < 0:
            raise ValueError("eval_every, save_every and log_every must be >= 0")
        if self.max_time is not None and self.max_time <= 0:
            raise ValueError(f"max_time must be positive seconds, got {self.max_time}")
        if self.calibration_steps < 0 or (self.calibration_steps > 0 and self.max_time is None):
            raise ValueError("calibration_steps must be >= 0, and > 0 only with a max_time to fit the schedule to")

    @property
    def total_schedule_steps(self) -> int:
        return self.schedule_steps if self.schedule_steps is not None else self.max_steps

    @property
    def num_warmup_steps(self) -> int:
        return self.warmup_for(self.total_schedule_steps)

    def warmup_for(self, total_steps: int) -> int:
        if self.warmup_steps > 0:
            return self.warmup_steps
        return math.ceil(self.warmup_ratio * total_steps)


# Share of the time left after calibration that the fitted steps may fill: evaluations and checkpoints
# (~2-3% of a pretraining run) and speed drift take the rest.
TIME_FIT_MARGIN = 0.95


@dataclass
class TrainResult:
    step: int  # global step reached
    start_step: int  # global step this call started from (> 0 after a resume)
    losses: list[float] = field(default_factory=list)  # loss of steps start_step+1 .. step
    eval_history: list[dict[str, float]] = field(default_factory=list)  # each has "step"
    final_eval: dict[str, float] | None = None  # metrics of the evaluation at the end
    last_checkpoint: Path | None = None
    tokens: int = 0  # tokens trained on in this call, all ranks
    elapsed: float = 0.0  # seconds spent in this call
    schedule_steps: int = 0  # length of the lr schedule (fitted to max_time with calibration_steps)


def loss_parts(outputs: Any) -> dict[str, torch.Tensor]:
    """The parts of a model output's loss it reports: its `*_loss` fields other than `loss` that are set
    (detached parts of `loss`, the contract of lmforge.outputs), by field name."""
    return {f.name: getattr(outputs, f.name) for f in fields(outputs)
            if f.name.endswith("_loss") and f.name != "loss" and getattr(outputs, f.name) is not None}


def fit_steps(calibration_step: int, seconds_per_step: float, seconds_left: float, max_steps: int) -> int:
    """The step count that ends a run in `seconds_left` from `calibration_step` at the measured speed
    (`TIME_FIT_MARGIN` of it), between calibration_step and max_steps."""
    more = int(seconds_left * TIME_FIT_MARGIN / max(seconds_per_step, 1e-9))
    return max(calibration_step, min(max_steps, calibration_step + more))


def _fit_to_budget(step: int, seconds_per_step: float, seconds_left: float, max_steps: int, ddp: DistInfo,
                   device: torch.device) -> int:
    """`fit_steps` agreed by every rank (they must stop at the same step): the slowest rank's step time
    and the least time left."""
    if ddp.enabled:
        agreed = torch.tensor([seconds_per_step, -seconds_left], device=device, dtype=torch.float64)
        dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
        seconds_per_step, seconds_left = agreed[0].item(), -agreed[1].item()
    return fit_steps(step, seconds_per_step, seconds_left, max_steps)


def _set_schedule(scheduler: Any, args: TrainArgs, total_steps: int) -> None:
    """Point a LambdaLR built by `build_scheduler` at a schedule of `total_steps`, from its current step on
    (the optimizer's lr is set to the new schedule's value there)."""
    multiplier = lr_multiplier(args.schedule, args.warmup_for(total_steps), total_steps)
    scheduler.lr_lambdas = [multiplier] * len(scheduler.optimizer.param_groups)
    lrs = [base * multiplier(scheduler.last_epoch) for base in scheduler.base_lrs]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


class _BatchStream:
    """Endless `next()` over a batch source: a new pass (epoch) starts when one is exhausted."""

    def __init__(self, source: Iterable[Mapping[str, Any]]):
        self.source = source
        self._it: Iterator | None = None

    def next(self) -> Mapping[str, Any]:
        if self._it is None:
            self._it = iter(self.source)
        try:
            return next(self._it)
        except StopIteration:
            self._it = iter(self.source)
            try:
                return next(self._it)
            except StopIteration:
                raise TrainingError("the batch source yielded no batches") from None


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _count_tokens(batch: Mapping[str, Any]) -> torch.Tensor | int:
    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor):
        return mask.sum()
    ids = batch.get("input_ids")
    return ids.numel() if isinstance(ids, torch.Tensor) else 0


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@contextlib.contextmanager
def _rng_preserved() -> Iterator[None]:
    """Run a block (evaluation) without consuming or changing any training random stream."""
    state = capture_rng_state()
    try:
        yield
    finally:
        restore_rng_state(state)


def _plain(value: Any) -> Any:
    """TrainArgs values as weights_only-loadable primitives (Paths become strings)."""
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


class _MetricsLog:
    """Append-only JSONL log written by rank 0."""

    def __init__(self, path: Path, enabled: bool):
        self.path = path
        self.enabled = enabled

    def start(self, resume_step: int | None) -> None:
        """Fresh run: empty the file. Resume: drop records past the checkpoint (the crashed run
        logged steps that will now be trained again)."""
        if not self.enabled:
            return
        kept: list[str] = []
        if resume_step is not None and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a line cut short by the crash
                    continue
                if record.get("step", 0) <= resume_step:
                    kept.append(line)
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")


def _evaluate(
    evaluate: Callable[[nn.Module], Mapping[str, float]], model: nn.Module, step: int
) -> dict[str, float]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), _rng_preserved():
            metrics = evaluate(model)
    finally:
        model.train(was_training)
    record: dict[str, float] = {"step": step}
    for key, value in dict(metrics).items():
        name = key if key.startswith("eval_") else f"eval_{key}"
        record[name] = float(value)
    return record


# ------------------------------------------------------------------------------------------ train
def train(
    model: nn.Module,
    batches: Any,
    args: TrainArgs,
    evaluate: Callable[[nn.Module], Mapping[str, float]] | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
) -> TrainResult:
    """Train `model` for `args.max_steps` optimizer steps on `batches`.

    `model(**batch)` must return an object with `.loss`. `evaluate(model) -> {name: value}` is
    called (model in eval mode, no grad) every `eval_every` steps and at the end. `optimizer` /
    `scheduler` default to `build_optimizer` / `build_scheduler` from `args`.
    """
    ddp = dist_info()
    output_dir = Path(args.output_dir)
    device = _model_device(model)
    if ddp.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    metrics = _MetricsLog(output_dir / METRICS_NAME, enabled=ddp.is_main)

    _seed_everything(args.seed + ddp.rank)
    if args.calibration_steps > 0 and scheduler is not None:
        raise ValueError("calibration_steps refits the loop's own lr schedule; do not pass a scheduler with it")
    sharding = args.fsdp and ddp.enabled
    if sharding and (optimizer is not None or scheduler is not None):
        raise ValueError("fsdp builds its optimizer and scheduler over the sharded parameters; do not pass them")
    # FSDP: a sharded copy trains (the optimizer holds its shards); `model` gets its weights back to evaluate
    # and at the end. DDP and one process: `model` itself trains.
    raw_model = model
    if sharding:
        model = shard_model(raw_model, bf16=args.bf16)
    if optimizer is None:
        optimizer = build_optimizer(
            model, args.learning_rate, args.weight_decay, betas=args.adam_betas, eps=args.adam_eps
        )
    if scheduler is None:
        scheduler = build_scheduler(optimizer, args.schedule, args.num_warmup_steps, args.total_schedule_steps)

    # ---- resume, or make sure a fresh run does not mix with an earlier run's checkpoints
    start_step, elapsed_before, checkpoint_path = 0, 0.0, None
    fitted_steps: int | None = None  # the schedule's length once fitted to max_time
    checkpoint = load_latest_checkpoint(output_dir) if args.resume else None
    if checkpoint is not None:
        same_world = checkpoint.world_size == ddp.world_size
        if not same_world:
            positions = checkpoint.batches_states()
            if any(p != positions[0] for p in positions):
                raise TrainingError(
                    f"{checkpoint.path} was saved by {checkpoint.world_size} processes at different batch "
                    f"positions per rank, this run has {ddp.world_size}; resume it on {checkpoint.world_size}"
                )
            if ddp.is_main:
                tqdm.write(
                    f"warning: resuming a run of {checkpoint.world_size} processes on {ddp.world_size}: same "
                    "weights, optimizer state and data position; random streams restart from the seed"
                )
        checkpoint.restore(model, optimizer, scheduler, batches, rank=ddp.rank if same_world else 0,
                           rng=same_world)
        start_step, checkpoint_path = checkpoint.step, checkpoint.path
        loop_state = checkpoint.extra.get("loop", {})
        elapsed_before = float(loop_state.get("elapsed", 0.0))
        saved_schedule = loop_state.get("schedule_steps")
        if args.calibration_steps > 0 and loop_state.get("fitted_steps") is not None:
            # The run fitted its schedule to its time budget before this checkpoint: keep that schedule.
            fitted_steps = int(loop_state["fitted_steps"])
            _set_schedule(scheduler, args, fitted_steps)
        if ddp.is_main and saved_schedule is not None and saved_schedule != (fitted_steps or args.total_schedule_steps):
            tqdm.write(
                f"warning: resuming a run whose lr schedule spanned {saved_schedule} steps with "
                f"{args.total_schedule_steps}; the lr curve changes from step {start_step} on "
                "(set schedule_steps to keep it)"
            )
    elif list_checkpoints(output_dir):
        if not args.overwrite:
            raise TrainingError(
                f"{output_dir / CHECKPOINTS_DIR} holds checkpoints of an earlier run; pass resume=True "
                "to continue it, overwrite=True to discard them, or another output_dir"
            )
        if ddp.is_main:
            shutil.rmtree(output_dir / CHECKPOINTS_DIR)
    ddp.barrier()
    metrics.start(resume_step=start_step if checkpoint is not None else None)

    stop_step = fitted_steps or args.max_steps
    result = TrainResult(step=start_step, start_step=start_step, last_checkpoint=checkpoint_path,
                         schedule_steps=fitted_steps or args.total_schedule_steps)
    if start_step >= stop_step:
        if sharding:
            copy_full_weights(model, raw_model)  # the checkpoint's weights, as a DDP resume leaves them
        return result

    # Wrap after restoring: DDP broadcasts rank 0's (restored) weights to the other ranks.
    if ddp.enabled and not sharding:
        device_ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=args.ddp_find_unused_parameters
        )

    stream = _BatchStream(batches)
    accum = args.grad_accum_steps
    max_norm = args.max_grad_norm if args.max_grad_norm > 0 else float("inf")
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=args.bf16)
    if args.bf16:
        cpu_caps.warn_if_bf16_slow(device)
    # Per step: [loss, tokens, out of time, *loss parts], all-reduced once across ranks (so all
    # ranks agree on the loss check and on stopping for max_time).
    # Loss parts: the output's `*_loss` fields other than `loss` (lmforge.outputs), named by the first
    # micro-batch (the same model, so the same names on every rank).
    part_names: list[str] | None = None

    step = start_step
    t_start = time.perf_counter()
    t_log, tokens_since_log, loss_since_log, steps_since_log = t_start, 0, 0.0, 0
    parts_since_log: list[float] = []
    last_eval_step = -1
    t_first_step = t_start  # end of this call's first step: calibration times the steps after it
    t_last_fit, last_fit_step = t_start, start_step
    # The step of the next fit of the schedule to max_time. A resumed run keeps the schedule saved in its
    # checkpoint (the same lr curve from there on), so only the call that calibrated refits.
    next_fit = args.calibration_steps if args.calibration_steps > 0 and fitted_steps is None else -1
    pbar = tqdm(
        total=stop_step,
        initial=start_step,
        desc="train",
        disable=not (args.progress and ddp.is_main),
        dynamic_ncols=True,
    )
    model.train()
    optimizer.zero_grad(set_to_none=True)
    try:
        while step < stop_step:
            lr = optimizer.param_groups[0]["lr"]  # the lr this step uses
            stats = torch.zeros(3, device=device, dtype=torch.float32)
            parts: torch.Tensor | None = None
            for micro in range(accum):
                batch = _to_device(stream.next(), device)
                # Reduce gradients across ranks only on the last micro-batch of the step.
                if sharding:
                    model.set_requires_gradient_sync(micro == accum - 1)
                sync = (model.no_sync() if ddp.enabled and not sharding and micro < accum - 1
                        else contextlib.nullcontext())
                with sync:
                    with autocast:
                        outputs = model(**batch)
                    loss = outputs.loss
                    (loss / accum).backward()
                stats[0] += loss.detach().float() / accum
                stats[1] += _count_tokens(batch)
                found = loss_parts(outputs)
                if part_names is None:
                    part_names = list(found)
                    parts_since_log = [0.0] * len(part_names)
                if parts is None:
                    parts = torch.zeros(len(part_names), device=device, dtype=torch.float32)
                for i, name in enumerate(part_names):
                    if name in found:
                        parts[i] += found[name].detach().float() / accum
            stats = torch.cat([stats, parts])  # [loss, tokens, out of time, *loss parts]
            if args.max_time is not None and time.perf_counter() - t_start >= args.max_time:
                stats[2] = 1.0
            if ddp.enabled:
                dist.all_reduce(stats)
                stats[0] /= ddp.world_size
                stats[3:] /= ddp.world_size
            values = stats.tolist()  # one device sync per step
            step_loss, step_tokens, out_of_time = values[0], int(values[1]), values[2] > 0
            if not math.isfinite(step_loss):
                # Every rank sees the same all-reduced value, so all stop together. Nothing is
                # saved: the last checkpoint stays the one to resume from.
                raise TrainingError(
                    f"non-finite loss {step_loss} at step {step + 1}; last checkpoint: {checkpoint_path}"
                )
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            # FSDP: a DTensor of the shards' norms; full_tensor() combines them (the same on every rank).
            grad_norm = float(grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm)
            if not math.isfinite(grad_norm):
                raise TrainingError(
                    f"non-finite gradient norm {grad_norm} at step {step + 1} (loss {step_loss}); "
                    f"last checkpoint: {checkpoint_path}"
                )
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step == start_step + 1:
                t_first_step = time.perf_counter()  # the first step also builds kernels and buffers
            if step == next_fit:
                # Calibration (the first fit), then refits at twice the step of the last one: each times
                # the steps since the last fit (evaluations and checkpoints included), so a machine that
                # slows down or speeds up later still ends its schedule with the budget.
                now = time.perf_counter()
                if fitted_steps is None:
                    timed = step - start_step - 1
                    per_step = (now - t_first_step) / timed if timed > 0 else now - t_start
                else:
                    per_step = (now - t_last_fit) / (step - last_fit_step)
                new_steps = _fit_to_budget(step, per_step, args.max_time - (now - t_start), args.max_steps,
                                           ddp, device)
                if new_steps != fitted_steps:
                    fitted_steps = stop_step = result.schedule_steps = new_steps
                    _set_schedule(scheduler, args, fitted_steps)
                    pbar.total = fitted_steps
                    metrics.write({"step": step, "fitted_steps": fitted_steps, "seconds_per_step": per_step})
                t_last_fit, last_fit_step, next_fit = now, step, 2 * step
            last = step == stop_step or out_of_time

            result.losses.append(step_loss)
            result.tokens += step_tokens
            tokens_since_log += step_tokens
            loss_since_log += step_loss
            steps_since_log += 1
            for i in range(len(part_names)):
                parts_since_log[i] += values[3 + i]
            now = time.perf_counter()

            if args.log_every > 0 and (step % args.log_every == 0 or last):
                interval = max(now - t_log, 1e-9)
                record: dict[str, Any] = {
                    "step": step,
                    "loss": loss_since_log / steps_since_log,  # mean over the logging interval
                    "lr": lr,
                    "tokens_per_s": tokens_since_log / interval,
                    "grad_norm": grad_norm,
                    "elapsed": elapsed_before + now - t_start,
                }
                for name, total in zip(part_names, parts_since_log):
                    record[name] = total / steps_since_log
                metrics.write(record)
                pbar.set_postfix(
                    loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}",
                    refresh=False,
                )
                t_log, tokens_since_log, loss_since_log, steps_since_log = now, 0, 0.0, 0
                parts_since_log = [0.0] * len(part_names)
            pbar.update(1)

            if evaluate is not None and (
                (args.eval_every > 0 and step % args.eval_every == 0) or last
            ):
                if sharding:
                    copy_full_weights(model, raw_model)
                eval_record = _evaluate(evaluate, raw_model, step)
                eval_record["elapsed"] = elapsed_before + time.perf_counter() - t_start
                result.eval_history.append(eval_record)
                last_eval_step = step
                metrics.write(eval_record)
                if ddp.is_main:
                    shown = ", ".join(f"{k}={v:.4g}" for k, v in eval_record.items() if k.startswith("eval_"))
                    tqdm.write(f"step {step}: {shown}")

            if args.save_every > 0 and (step % args.save_every == 0 or last):
                checkpoint_path = _save(
                    output_dir, step, model if sharding else raw_model, optimizer, scheduler, batches, args, ddp,
                    elapsed=elapsed_before + time.perf_counter() - t_start, fitted_steps=fitted_steps,
                )
                result.last_checkpoint = checkpoint_path
            if last:
                break
    finally:
        pbar.close()

    if sharding:
        copy_full_weights(model, raw_model)  # the caller's model ends with the trained weights, as with DDP
    result.step = step
    result.elapsed = time.perf_counter() - t_start
    if last_eval_step == step:
        result.final_eval = {k: v for k, v in result.eval_history[-1].items() if k not in ("step", "elapsed")}
    return result


def _save(
    output_dir: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    batches: Any,
    args: TrainArgs,
    ddp: DistInfo,
    elapsed: float,
    fitted_steps: int | None,
) -> Path:
    """Checkpoint with every rank's batch position and RNG states (a collective call): written by rank 0, or
    with FSDP by every rank (its shard of the model and optimizer state)."""
    batches_states = ddp.gather(batches.state_dict())
    rng_states = ddp.gather(capture_rng_state())
    extra = {
        "loop": {"elapsed": elapsed, "schedule_steps": fitted_steps or args.total_schedule_steps,
                 "fitted_steps": fitted_steps},
        "train_args": {k: _plain(v) for k, v in asdict(args).items()},
    }
    if args.fsdp and ddp.enabled:
        return save_sharded_checkpoint(output_dir, step, model, optimizer, scheduler, batches_states, extra,
                                       keep_last=args.keep_last, rng_state=rng_states)
    if ddp.is_main:
        save_checkpoint(
            output_dir,
            step,
            model,
            optimizer,
            scheduler,
            batches_states if ddp.enabled else batches_states[0],
            extra,
            keep_last=args.keep_last,
            rng_state=rng_states if ddp.enabled else rng_states[0],
            world_size=ddp.world_size,
        )
    # No rank runs ahead (and could crash) before the checkpoint is in place.
    ddp.barrier()
    return output_dir / CHECKPOINTS_DIR / checkpoint_dir_name(step)
