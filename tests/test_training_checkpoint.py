"""Atomic checkpoints and bit-exact resume, in-process, across a killed process, and under torchrun."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lmforge.training import (
    TrainArgs,
    build_optimizer,
    build_scheduler,
    latest_checkpoint_path,
    load_checkpoint,
    load_latest_checkpoint,
    save_checkpoint,
    train,
)
from lmforge.training import state as state_mod

# The toy model and batch source, as a file: imported here and run as a script by the subprocess
# tests (where it trains once and writes its per-step losses to a JSON file).
TOY_SOURCE = textwrap.dedent(
    '''
    import json, os, signal, sys
    from dataclasses import dataclass

    import torch
    import torch.nn.functional as F
    from torch import nn

    VOCAB = 16


    @dataclass
    class ToyOutput:
        loss: torch.Tensor
        logits: torch.Tensor


    class ToyLM(nn.Module):
        """Tied embedding/output LM with LayerNorm and dropout (so resume must restore the RNG)."""

        def __init__(self, dim=16, dropout=0.2):
            super().__init__()
            self.emb = nn.Embedding(VOCAB, dim)
            self.norm = nn.LayerNorm(dim)
            self.drop = nn.Dropout(dropout)
            self.head = nn.Linear(dim, VOCAB)
            self.head.weight = self.emb.weight

        def forward(self, input_ids, labels, attention_mask=None):
            logits = self.head(self.drop(self.norm(self.emb(input_ids))))
            return ToyOutput(F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1)), logits)


    class PretrainedToyLM(ToyLM):
        """Like lmforge models: save_pretrained writes model.safetensors without the tied copy."""

        def save_pretrained(self, path):
            from safetensors.torch import save_file

            state = {k: v.contiguous() for k, v in self.state_dict().items() if k != "head.weight"}
            save_file(state, os.path.join(path, "model.safetensors"))
            with open(os.path.join(path, "config.json"), "w") as f:
                f.write("{}")


    class ToyBatches:
        """Endless batches seeded by (seed, rank, index); `crash_at` SIGKILLs the process when
        batch `crash_at` is requested (a hard crash: no cleanup, no exception handling)."""

        def __init__(self, seed=0, rank=0, batch_size=4, seq_len=8, crash_at=None):
            self.seed, self.rank, self.batch_size, self.seq_len = seed, rank, batch_size, seq_len
            self.crash_at = crash_at
            self.index = 0

        def __iter__(self):
            while True:
                if self.crash_at is not None and self.index == self.crash_at:
                    sys.stdout.flush()
                    os.kill(os.getpid(), signal.SIGKILL)
                g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.rank * 10_007 + self.index)
                ids = torch.randint(0, VOCAB, (self.batch_size, self.seq_len), generator=g)
                self.index += 1
                yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": (ids * 3 + 1) % VOCAB}

        def state_dict(self):
            return {"index": self.index}

        def load_state_dict(self, state):
            self.index = state["index"]


    def main():
        import torch.distributed as dist
        from lmforge.training import TrainArgs, train

        cfg = json.loads(sys.argv[1])
        rank = 0
        if "RANK" in os.environ:  # under torchrun
            dist.init_process_group("gloo")
            rank = dist.get_rank()
        torch.manual_seed(cfg.get("init_seed", 0))
        model = ToyLM()
        crash = os.environ.get("TOY_CRASH_AT_BATCH")
        batches = ToyBatches(rank=rank, crash_at=int(crash) if crash else None)
        result = train(model, batches, TrainArgs(**cfg["args"]))
        if rank == 0:
            with open(cfg["out"], "w") as f:
                json.dump({"start_step": result.start_step, "losses": result.losses}, f)
        if dist.is_initialized():
            dist.destroy_process_group()


    if __name__ == "__main__":
        main()
    '''
)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    path = tmp_path_factory.mktemp("toy") / "toy_training.py"
    path.write_text(TOY_SOURCE)
    spec = importlib.util.spec_from_file_location("toy_training", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.PATH = path
    return module


def _args(out, **kw) -> TrainArgs:
    base = {
        "max_steps": 6, "learning_rate": 1e-2, "warmup_steps": 2, "schedule": "linear", "save_every": 3,
        "log_every": 1, "grad_accum_steps": 2, "progress": False,
    }
    return TrainArgs(out, **{**base, **kw})


# ------------------------------------------------------------------------------------ exact resume
def test_resume_is_bit_identical(tmp_path, toy):
    def evaluate(model):
        torch.rand(5)  # evaluation randomness must not leak into training
        return {"x": 1.0}

    torch.manual_seed(0)
    model_full = toy.ToyLM()
    full = train(model_full, toy.ToyBatches(), _args(tmp_path / "full", eval_every=2), evaluate=evaluate)
    assert len(full.losses) == 6

    # The first part stops at 3 but follows the same 6-step lr schedule.
    torch.manual_seed(0)
    part1 = train(toy.ToyLM(), toy.ToyBatches(), _args(tmp_path / "split", max_steps=3, schedule_steps=6),
                  evaluate=evaluate)
    assert part1.losses == full.losses[:3]

    # A fresh model (other init) and a fresh batch source: everything comes from the checkpoint.
    torch.manual_seed(123)
    model_resumed = toy.ToyLM()
    part2 = train(model_resumed, toy.ToyBatches(), _args(tmp_path / "split", resume=True), evaluate=evaluate)
    assert part2.start_step == 3
    assert part2.losses == full.losses[3:]  # exactly, not approximately
    for a, b in zip(model_full.state_dict().values(), model_resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert model_resumed.head.weight is model_resumed.emb.weight  # tying survives loading

    records = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6]

    # Resuming a finished run does nothing.
    done = train(toy.ToyLM(), toy.ToyBatches(), _args(tmp_path / "split", resume=True))
    assert done.start_step == 6 and done.losses == []


def test_resume_is_bit_identical_with_lmforge_bert(tmp_path):
    """The real model: dropout everywhere, tied decoder, save_pretrained checkpoints."""
    bert = pytest.importorskip("lmforge.models.bert")
    from lmforge.models.bert import BertConfig

    class Batches:
        def __init__(self):
            self.index = 0

        def __iter__(self):
            while True:
                g = torch.Generator().manual_seed(self.index)
                self.index += 1
                ids = torch.randint(5, 100, (4, 16), generator=g)
                mask = torch.ones_like(ids)
                mask[:2, 12:] = 0
                labels = torch.full_like(ids, -100)
                labels[:, 3::4] = ids[:, 3::4]
                yield {"input_ids": ids, "attention_mask": mask, "labels": labels,
                       "next_sentence_label": torch.randint(0, 2, (4,), generator=g)}

        def state_dict(self):
            return {"index": self.index}

        def load_state_dict(self, state):
            self.index = state["index"]

    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=32)

    def model(seed):
        torch.manual_seed(seed)
        return bert.BertForPreTraining(config)

    common = {"learning_rate": 1e-3, "warmup_steps": 2, "save_every": 3, "progress": False, "schedule_steps": 6}
    full = train(model(0), Batches(), TrainArgs(tmp_path / "a", max_steps=6, **common))
    train(model(0), Batches(), TrainArgs(tmp_path / "b", max_steps=3, **common))
    resumed_model = model(1)
    resumed = train(resumed_model, Batches(), TrainArgs(tmp_path / "b", max_steps=6, resume=True, **common))
    assert resumed.losses == full.losses[3:]
    # A checkpoint folder is also a pretrained-model folder.
    reloaded = bert.BertForPreTraining.from_pretrained(tmp_path / "b" / "checkpoints" / "step-000006")
    for a, b in zip(reloaded.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)
    records = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert {"mlm_loss", "nsp_loss"} <= set(records[-1])


def _run_script(toy, cfg: dict, crash_at: int | None = None, torchrun: bool = False) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("TOY_CRASH_AT_BATCH", None)
    if crash_at is not None:
        env["TOY_CRASH_AT_BATCH"] = str(crash_at)
    launcher = [sys.executable]
    if torchrun:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    # A new session, so that on timeout the whole group (torchrun's workers too) can be killed.
    proc = subprocess.Popen(
        [*launcher, str(toy.PATH), json.dumps(cfg)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _losses(path: Path) -> dict:
    return json.loads(path.read_text())


def test_resume_after_killed_process(tmp_path, toy):
    common = {"max_steps": 6, "learning_rate": 1e-2, "warmup_steps": 2, "save_every": 3, "log_every": 1,
              "progress": False}
    ref = _run_script(toy, {"args": dict(common, output_dir=str(tmp_path / "ref")), "out": str(tmp_path / "ref.json")})
    assert ref.returncode == 0, ref.stderr

    run = {"args": dict(common, output_dir=str(tmp_path / "run")), "out": str(tmp_path / "run.json")}
    crashed = _run_script(toy, run, crash_at=4)  # killed asking for step 5's batch (after step 4)
    assert crashed.returncode == -9, crashed.stderr
    assert not (tmp_path / "run.json").exists()
    assert latest_checkpoint_path(tmp_path / "run").name == "step-000003"

    run["args"]["resume"] = True
    resumed = _run_script(toy, run)
    assert resumed.returncode == 0, resumed.stderr
    got, want = _losses(tmp_path / "run.json"), _losses(tmp_path / "ref.json")
    assert got["start_step"] == 3
    assert got["losses"] == want["losses"][3:]
    # step 4 was logged by the killed run and again after resume: it must appear once
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]


@pytest.mark.slow  # three torchrun launches, ~15 s
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_torchrun_two_processes_resume(tmp_path, toy):
    """DDP on CPU (gloo): rank 0 writes, and a killed 2-process run resumes exactly."""
    common = {"max_steps": 4, "learning_rate": 1e-2, "save_every": 2, "log_every": 1, "progress": False}
    ref = _run_script(
        toy, {"args": dict(common, output_dir=str(tmp_path / "ref")), "out": str(tmp_path / "ref.json")},
        torchrun=True,
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    checkpoint = load_latest_checkpoint(tmp_path / "ref")
    assert checkpoint.step == 4 and checkpoint.world_size == 2
    assert [checkpoint.batches_state(r) for r in (0, 1)] == [{"index": 4}, {"index": 4}]

    run = {"args": dict(common, output_dir=str(tmp_path / "run")), "out": str(tmp_path / "run.json")}
    crashed = _run_script(toy, run, crash_at=3, torchrun=True)
    assert crashed.returncode != 0
    run["args"]["resume"] = True
    resumed = _run_script(toy, run, torchrun=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    got, want = _losses(tmp_path / "run.json"), _losses(tmp_path / "ref.json")
    assert got["start_step"] == 2 and got["losses"] == want["losses"][2:]


# ------------------------------------------------------------------------------ atomic checkpoints
def _setup(toy, cls_name: str = "ToyLM"):
    torch.manual_seed(0)
    model = getattr(toy, cls_name)()
    opt = build_optimizer(model, lr=1e-2, weight_decay=0.01)
    sched = build_scheduler(opt, "linear", 1, 10)
    return model, opt, sched


def _step(toy, model, opt, sched, seed: int) -> None:
    batch = next(iter(toy.ToyBatches(seed=seed)))
    model(**batch).loss.backward()
    opt.step()
    sched.step()
    opt.zero_grad()


@pytest.mark.parametrize("cls_name", ["ToyLM", "PretrainedToyLM"])
def test_checkpoint_roundtrip_weights_only(tmp_path, toy, cls_name):
    model, opt, sched = _setup(toy, cls_name)
    _step(toy, model, opt, sched, 0)
    path = save_checkpoint(tmp_path, 1, model, opt, sched, {"index": 7}, {"note": "hi"})
    assert path == tmp_path / "checkpoints" / "step-000001"
    assert (path / "model.safetensors").is_file()
    assert (path / "config.json").is_file() == (cls_name == "PretrainedToyLM")
    # plain content: loads with weights_only=True
    state = torch.load(path / "training_state.pt", weights_only=True)
    assert state["step"] == 1 and state["batches"] == {"index": 7} and state["extra"] == {"note": "hi"}

    fresh, fresh_opt, fresh_sched = _setup(toy, cls_name)
    torch.nn.init.normal_(fresh.emb.weight)
    checkpoint = load_latest_checkpoint(tmp_path)
    checkpoint.restore(fresh, fresh_opt, fresh_sched, rng=False)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert fresh.head.weight is fresh.emb.weight
    assert fresh_sched.last_epoch == sched.last_epoch and fresh_opt.param_groups[0]["lr"] == opt.param_groups[0]["lr"]


def test_rng_states_roundtrip(tmp_path, toy):
    import random

    import numpy as np

    model, opt, sched = _setup(toy)
    random.random(), np.random.rand(), torch.rand(1)
    save_checkpoint(tmp_path, 1, model, opt, sched, None)
    expected = (random.random(), float(np.random.rand()), torch.rand(3))
    random.seed(99), np.random.seed(99), torch.manual_seed(99)
    state_mod.restore_rng_state(load_latest_checkpoint(tmp_path).rng_state())
    got = (random.random(), float(np.random.rand()), torch.rand(3))
    assert got[:2] == expected[:2] and torch.equal(got[2], expected[2])


def test_failed_save_leaves_previous_checkpoint(tmp_path, toy, monkeypatch):
    model, opt, sched = _setup(toy)
    save_checkpoint(tmp_path, 1, model, opt, sched, {"index": 1})
    _step(toy, model, opt, sched, 1)
    save_checkpoint(tmp_path, 2, model, opt, sched, {"index": 2})
    weights_at_2 = {k: v.clone() for k, v in model.state_dict().items()}
    _step(toy, model, opt, sched, 2)

    def broken_write(model, directory):
        (directory / "model.safetensors").write_bytes(b"\x00" * 100)  # half a file, then the crash
        raise OSError("disk full")

    monkeypatch.setattr(state_mod, "_write_weights", broken_write)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, 3, model, opt, sched, {"index": 3})
    root = tmp_path / "checkpoints"
    assert (root / "latest").read_text().strip() == "step-000002"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000001", "step-000002"]
    checkpoint = load_latest_checkpoint(tmp_path)
    assert checkpoint.step == 2 and checkpoint.batches_state() == {"index": 2}
    fresh, _, _ = _setup(toy)
    checkpoint.load_weights(fresh)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, weights_at_2[k])


def test_interrupted_save_leftovers_are_ignored(tmp_path, toy, monkeypatch):
    model, opt, sched = _setup(toy)
    save_checkpoint(tmp_path, 2, model, opt, sched, {"index": 2})
    root = tmp_path / "checkpoints"
    # A process killed mid-save leaves its temp folder; it must never be picked up.
    leftover = root / ".tmp-step-000005-99999"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"garbage")
    assert latest_checkpoint_path(tmp_path).name == "step-000002"
    # Killed after the rename but before the pointer update: the pointer still names step 2.
    monkeypatch.setattr(state_mod, "atomic_write_text", lambda *a: (_ for _ in ()).throw(OSError("killed")))
    with pytest.raises(OSError):
        save_checkpoint(tmp_path, 4, model, opt, sched, {"index": 4})
    assert latest_checkpoint_path(tmp_path).name == "step-000002"
    assert load_latest_checkpoint(tmp_path).step == 2
    # A lost pointer falls back to the highest complete step folder (not the temp folder).
    (root / "latest").unlink()
    assert latest_checkpoint_path(tmp_path).name == "step-000004"
    assert load_checkpoint(root / "step-000004").batches_state() == {"index": 4}
    monkeypatch.undo()
    save_checkpoint(tmp_path, 6, model, opt, sched, {"index": 6})
    assert not leftover.exists()  # cleaned up by the next successful save


def test_keep_last_rotation(tmp_path, toy):
    model, opt, sched = _setup(toy)
    for step in range(1, 6):
        save_checkpoint(tmp_path, step, model, opt, sched, {"index": step}, keep_last=2)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000004", "step-000005"]
    assert load_latest_checkpoint(tmp_path).step == 5
    for step in (6, 7):
        save_checkpoint(tmp_path, step, model, opt, sched, None, keep_last=0)  # keep all
    assert len([p for p in root.iterdir() if p.name.startswith("step-")]) == 4
    assert load_latest_checkpoint(tmp_path) is not None and latest_checkpoint_path(tmp_path).name == "step-000007"


def test_no_checkpoint(tmp_path):
    assert load_latest_checkpoint(tmp_path) is None
    assert latest_checkpoint_path(tmp_path / "missing") is None
