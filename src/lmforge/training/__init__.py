"""Training: the one loop (loop.py: `train` + `TrainArgs`), AdamW + lr schedules (optim.py), atomic checkpoints and
resume (state.py), torch.distributed set-up (distributed.py)."""

from .loop import TrainArgs, TrainingError, TrainResult, train
from .optim import build_optimizer, build_scheduler, lr_multiplier, param_groups
from .state import (
    Checkpoint,
    capture_rng_state,
    latest_checkpoint_path,
    list_checkpoints,
    load_checkpoint,
    load_latest_checkpoint,
    load_weights,
    restore_rng_state,
    save_checkpoint,
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
    "load_weights",
    "lr_multiplier",
    "param_groups",
    "restore_rng_state",
    "save_checkpoint",
    "train",
]
