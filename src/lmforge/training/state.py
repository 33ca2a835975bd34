"""Atomic training checkpoints and exact resume.

Layout under `output_dir/checkpoints/`:

    step-000123/            model weights (`model.save_pretrained` or `model.safetensors`)
                            + training_state.pt (optimizer, scheduler, step, batch-source position,
                            RNG states, extra)
    step-000456/            a sharded (FSDP) run's: sharded/ (torch.distributed.checkpoint: each rank
                            writes its shard of the model and optimizer state, rank 0 the metadata)
                            + training_state.pt (the rest, as above; "sharded": True)
    latest                  text file naming the newest complete checkpoint ("step-000123")

A sharded checkpoint loads into a model sharded over any number of processes (DCP reshards) or into a
whole model (one process, or each DDP process; `Checkpoint.restore` does either); every rank must see the same folder
(a shared filesystem on several machines).

Crash safety: a checkpoint is written into a hidden sibling `.tmp-step-000123-<pid>/`, every file
is fsync'd, and only then the folder is renamed into place (a rename is atomic on POSIX) and the
`latest` pointer is replaced (write a temp file + `os.replace`). A sharded save writes into
`.tmp-step-000123/` from every rank; rank 0 renames it once every rank has finished (a barrier).
Folders whose name does not match `step-NNNNNN` are never read, so a save interrupted at any point leaves the previous checkpoint as
the one that resumes. Old checkpoints are renamed away before they are deleted, for the same reason.

`training_state.pt` holds only tensors and plain Python values, so it loads with
`torch.load(weights_only=True)`: RNG states are converted (numpy's to lists, torch's are tensors).
"""

from __future__ import annotations

import os
import random
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..files import atomic_write_text, fsync_path, fsync_tree, remove_dir
from ..hub import SAFE_WEIGHTS_NAME, read_state_dict
from .distributed import dist_info, is_sharded

CHECKPOINTS_DIR = "checkpoints"
LATEST_NAME = "latest"
TRAINING_STATE_NAME = "training_state.pt"
SHARDED_DIR = "sharded"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dir_name(step: int) -> str:
    return f"step-{step:06d}"


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel / DataParallel wrappers."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


# ------------------------------------------------------------------------------------------- RNG
def capture_rng_state() -> dict[str, Any]:
    """Python, numpy (global), torch CPU and CUDA generator states, as weights_only-loadable values."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    npst = state["numpy"]
    keys = np.asarray(npst["keys"].numpy(), dtype=np.uint32)
    np.random.set_state((npst["kind"], keys, npst["pos"], npst["has_gauss"], npst["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) != torch.cuda.device_count():
            warnings.warn(
                f"checkpoint has RNG states for {len(cuda_states)} CUDA devices, this process sees "
                f"{torch.cuda.device_count()}; CUDA random streams are not restored",
                stacklevel=2,
            )
        else:
            torch.cuda.set_rng_state_all(cuda_states)


# ---------------------------------------------------------------------------------------- weights
def _write_weights(model: nn.Module, directory: Path) -> None:
    """Write the model's weights into `directory` (a module-level function so tests can break it)."""
    if hasattr(model, "save_pretrained"):
        # lmforge models: the checkpoint folder is then also a loadable pretrained-model folder.
        model.save_pretrained(directory)
    else:
        from safetensors.torch import save_model

        # save_model drops the duplicate names of shared (tied) tensors, which save_file refuses.
        save_model(model, str(directory / SAFE_WEIGHTS_NAME))


def load_weights(model: nn.Module, directory: str | os.PathLike) -> None:
    """Load checkpoint weights into `model` in place, exactly (no renaming, no dtype change).

    Keys missing from the file are accepted only when they are tied to a key that was loaded
    (same storage in the model): tied copies are not written.
    """
    directory = Path(directory)
    model = unwrap_model(model)
    state, _ = read_state_dict(directory)
    # copies written for other readers (KeyRules.saved_copies, e.g. BERT's decoder bias) are not weights here
    copies = getattr(getattr(model, "key_rules", None), "saved_copies", {})
    state = {k: v for k, v in state.items() if k not in copies}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected:
        raise RuntimeError(f"{directory}: weights not in the model: {sorted(unexpected)[:10]}")
    if missing:
        model_state = model.state_dict()
        loaded_ptrs = {model_state[k].data_ptr() for k in state if k in model_state}
        untied = [k for k in missing if model_state[k].data_ptr() not in loaded_ptrs]
        if untied:
            raise RuntimeError(f"{directory}: weights missing from the checkpoint: {sorted(untied)[:10]}")


# ------------------------------------------------------------------------------------ checkpoints
@dataclass
class Checkpoint:
    """A checkpoint on disk and its loaded training state.

    `training_state` keys: format, step, optimizer, scheduler, batches, rng, world_size, extra.
    With `world_size > 1`, `batches` and `rng` are lists indexed by rank.
    """

    path: Path
    step: int
    training_state: dict[str, Any]

    @property
    def extra(self) -> dict[str, Any]:
        return self.training_state.get("extra") or {}

    @property
    def world_size(self) -> int:
        return int(self.training_state.get("world_size", 1))

    @property
    def sharded(self) -> bool:
        """Model and optimizer state are in `sharded/` (torch.distributed.checkpoint), not in this file."""
        return bool(self.training_state.get("sharded", False))

    def batches_states(self) -> list[Any]:
        """The batch-source state of every rank that saved it."""
        value = self.training_state.get("batches")
        return list(value) if self.world_size > 1 else [value]

    def batches_state(self, rank: int = 0) -> Any:
        value = self.training_state.get("batches")
        return value[rank] if self.world_size > 1 else value

    def rng_state(self, rank: int = 0) -> dict[str, Any] | None:
        value = self.training_state.get("rng")
        return value[rank] if self.world_size > 1 and value is not None else value

    def load_weights(self, model: nn.Module) -> None:
        load_weights(model, self.path)

    def restore(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any | None = None,
        batches: Any | None = None,
        *,
        rank: int = 0,
        rng: bool = True,
    ) -> None:
        """Put model, optimizer, scheduler, batch source and RNGs back as they were at `step`.

        Order matters for the learning rate: the optimizer state carries the current lr of each
        group, the scheduler state its position; both are restored after they were constructed.
        Either kind of checkpoint loads into either kind of model: a sharded checkpoint into an
        FSDP-sharded `model` (and its optimizer) on any number of processes or into a whole one; a whole
        checkpoint into a whole model, or cut into an FSDP-sharded one's shards.
        """
        optimizer_state = self.training_state.get("optimizer")
        if self.sharded:
            load_sharded(self.path, model, optimizer)
        elif is_sharded(model):
            load_whole_into_sharded(self.path, model, optimizer, optimizer_state)
        else:
            self.load_weights(model)
            if optimizer is not None and optimizer_state is not None:
                optimizer.load_state_dict(optimizer_state)
        if scheduler is not None and self.training_state.get("scheduler") is not None:
            scheduler.load_state_dict(self.training_state["scheduler"])
        if batches is not None and self.batches_state(rank) is not None:
            batches.load_state_dict(self.batches_state(rank))
        if rng and self.rng_state(rank) is not None:
            restore_rng_state(self.rng_state(rank))


def checkpoints_root(output_dir: str | os.PathLike) -> Path:
    return Path(output_dir) / CHECKPOINTS_DIR


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders, oldest step first (temp / trash folders are ignored)."""
    root = checkpoints_root(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint_path(output_dir: str | os.PathLike) -> Path | None:
    """The folder `latest` names; if the pointer is missing or dangling, the highest step folder."""
    root = checkpoints_root(output_dir)
    pointer = root / LATEST_NAME
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8").strip()
        if _STEP_DIR.match(name) and (root / name).is_dir():
            return root / name
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def _load_training_state(file: Path) -> dict[str, Any]:
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError or its wrappers vary across versions
        # Only reached when a batch source put non-plain objects in its state. The file was
        # written by this library into the user's own output folder, so loading it in full is
        # acceptable, but say so.
        warnings.warn(
            f"{file}: not loadable with weights_only=True ({str(e).splitlines()[0]}); loading it "
            "with weights_only=False. Make batch-source state dicts plain values to avoid this.",
            stacklevel=3,
        )
        return torch.load(file, map_location="cpu", weights_only=False)


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    path = Path(path)
    state = _load_training_state(path / TRAINING_STATE_NAME)
    if state.get("format") != FORMAT_VERSION:
        raise RuntimeError(f"{path}: unknown training-state format {state.get('format')!r}")
    return Checkpoint(path=path, step=int(state["step"]), training_state=state)


def load_latest_checkpoint(output_dir: str | os.PathLike) -> Checkpoint | None:
    """The newest complete checkpoint under `output_dir`, or None when there is none."""
    path = latest_checkpoint_path(output_dir)
    return None if path is None else load_checkpoint(path)


def save_checkpoint(
    output_dir: str | os.PathLike,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    batches_state: Any,
    extra: dict[str, Any] | None = None,
    *,
    keep_last: int = 2,
    rng_state: Any | None = None,
    world_size: int = 1,
) -> Path:
    """Write `output_dir/checkpoints/step-NNNNNN/` atomically, point `latest` at it, and keep only
    the newest `keep_last` checkpoints (`keep_last <= 0` keeps all). Returns the folder.

    `rng_state` defaults to this process's RNG states. With `world_size > 1`, `batches_state` and
    `rng_state` must be lists indexed by rank (the loop gathers them; only rank 0 calls this).
    """
    root = checkpoints_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    name = checkpoint_dir_name(step)
    final = root / name
    tmp = root / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    state = {
        "format": FORMAT_VERSION,
        "step": int(step),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "batches": batches_state,
        "rng": rng_state if rng_state is not None else capture_rng_state(),
        "world_size": int(world_size),
        "extra": extra or {},
    }
    try:
        tmp.mkdir()
        _write_weights(unwrap_model(model), tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(tmp, final, state, keep_last)
    return final


def _publish(tmp: Path, final: Path, state: dict[str, Any], keep_last: int) -> None:
    """Add training_state.pt to the written folder `tmp`, sync it, rename it to `final`, point `latest` at it and
    rotate old checkpoints; `tmp` is removed if any of that fails."""
    root = final.parent
    try:
        torch.save(state, tmp / TRAINING_STATE_NAME)
        fsync_tree(tmp)
        if final.exists():
            # Re-saving a step (e.g. a run restarted from an earlier checkpoint): move the old
            # folder away first; if we crash in between, `latest` falls back to the newest folder.
            remove_dir(final)
        os.rename(tmp, final)
        fsync_path(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(root / LATEST_NAME, final.name + "\n")
    _rotate(root, keep=final, keep_last=keep_last)


def _rotate(root: Path, keep: Path, keep_last: int) -> None:
    """Delete checkpoints beyond the newest `keep_last` (never `keep`) and stale temp folders."""
    for leftover in root.iterdir():
        # Temp folders of interrupted saves; this process is the only writer of this root.
        if leftover.is_dir() and leftover.name.startswith((".tmp-step-", ".trash-")):
            shutil.rmtree(leftover, ignore_errors=True)
    if keep_last <= 0:
        return
    found = list_checkpoints(root.parent)
    for path in found[:-keep_last]:
        if path != keep:
            remove_dir(path)


# ---------------------------------------------------------------------------------- sharded (DCP)
def _dcp_state(model: nn.Module, optimizer: torch.optim.Optimizer | None) -> dict[str, Any]:
    """{"model": ..., "optim": ...} keyed by parameter names (sharded tensors for a sharded model)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optim": optim_state}


def load_sharded(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None) -> None:
    """Load `path/sharded/` into `model` (sharded or whole) and `optimizer`: each rank reads the parts of the
    saved shards its own shard covers, whatever the number of processes that saved them (collective when
    a process group is initialised)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import set_state_dict

    state = _dcp_state(model, optimizer)
    single = not dist_info().enabled
    with warnings.catch_warnings():
        if single:  # DCP warns that it loads in one process: that is the intent here
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        dcp.load(state, checkpoint_id=Path(path) / SHARDED_DIR, no_dist=single)
    set_state_dict(model, optimizer if optimizer is not None else (),
                   model_state_dict=state["model"], optim_state_dict=state.get("optim", {}))


def load_whole_into_sharded(
    directory: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None,
    optimizer_state: dict[str, Any] | None,
) -> None:
    """A whole checkpoint (a DDP or one-process run's) into an FSDP-sharded `model`: every rank reads the whole
    weights and keeps its shard, and cuts the optimizer state the same way (it is indexed like the
    optimizer's parameters, whose order sharding keeps)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.tensor import DTensor, distribute_tensor

    state, _ = read_state_dict(Path(directory))
    copies = getattr(getattr(model, "key_rules", None), "saved_copies", {})
    state = {k: v for k, v in state.items() if k not in copies}
    # Tied names the file leaves out get the tensor of their parameter's other name.
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    for group in names.values():
        present = [n for n in group if n in state]
        for name in group:
            if name not in state and present:
                state[name] = state[present[0]]
    set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))
    if optimizer is None or optimizer_state is None:
        return
    params = [p for group in optimizer.param_groups for p in group["params"]]
    saved = [i for group in optimizer_state["param_groups"] for i in group["params"]]
    if len(saved) != len(params):
        raise RuntimeError(f"{directory}: the optimizer state holds {len(saved)} parameters, the optimizer "
                           f"{len(params)}")

    def shard(value: Any, param: torch.Tensor) -> Any:
        if isinstance(param, DTensor) and torch.is_tensor(value) and value.shape == param.shape:
            # src_data_rank=None: every rank holds the whole tensor and keeps its own part, no communication
            return distribute_tensor(value.to(param.device), param.device_mesh, param.placements, src_data_rank=None)
        return value

    optimizer.load_state_dict({
        "state": {i: {k: shard(v, params[i]) for k, v in values.items()}
                  for i, values in optimizer_state["state"].items()},
        "param_groups": optimizer_state["param_groups"],
    })


def save_sharded_checkpoint(
    output_dir: str | os.PathLike,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any | None,
    batches_state: list[Any],
    extra: dict[str, Any] | None = None,
    *,
    keep_last: int = 2,
    rng_state: list[Any],
) -> Path:
    """`save_checkpoint` for an FSDP-sharded model, called by every rank (a collective call): each rank writes
    its shard of the model and optimizer state into `.tmp-step-NNNNNN/sharded/`, rank 0 then adds
    training_state.pt (scheduler, step, every rank's batch position and RNG states, extra) and renames the
    folder into place once all ranks are done, points `latest` at it and rotates old checkpoints."""
    import torch.distributed.checkpoint as dcp

    ddp = dist_info()
    root = checkpoints_root(output_dir)
    name = checkpoint_dir_name(step)
    final = root / name
    tmp = root / f".tmp-{name}"  # one name for all ranks (a pid would differ between them)
    if ddp.is_main:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    ddp.barrier()
    dcp.save(_dcp_state(model, optimizer), checkpoint_id=tmp / SHARDED_DIR)
    # Every rank syncs what it wrote (on a shared filesystem the others' files too: harmless).
    fsync_tree(tmp)
    ddp.barrier()
    if ddp.is_main:
        state = {
            "format": FORMAT_VERSION,
            "step": int(step),
            "optimizer": None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "batches": batches_state,
            "rng": rng_state,
            "world_size": ddp.world_size,
            "sharded": True,
            "extra": extra or {},
        }
        _publish(tmp, final, state, keep_last)
    ddp.barrier()
    return final
