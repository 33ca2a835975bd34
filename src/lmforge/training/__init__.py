"""Training: the one loop (loop.py: `train` + `TrainArgs`), AdamW + lr schedules (optim.py), atomic checkpoints and
resume, whole or sharded (state.py), torch.distributed set-up and FSDP2 sharding (distributed.py)."""

from .loop import TrainArgs, TrainingError, TrainResult, train
from .optim import build_optimizer, build_scheduler, lr_multiplier, param_groups
from .state import (
    Checkpoint,
    capture_rng_state,
    latest_checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    load_sharded,
    load_weights,
    restore_rng_state,
    save_checkpoint,
    save_sharded_checkpoint,
)

__all__ = [
    "Checkpoint",
    "TrainArgs",
    "TrainResult",
    "TrainingError",
    "build_optimizer",
    "build_scheduler",
    "capture_rng_state",
    "latest_checkpoint_path",
    "list_checkpoints",
    "load_checkpoint",
    "load_latest_checkpoint",
    "load_sharded",
    "load_weights",
    "lr_multiplier",
    "param_groups",
    "restore_rng_state",
    "save_checkpoint",
    "save_sharded_checkpoint",
    "train",
]
