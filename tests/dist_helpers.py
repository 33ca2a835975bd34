"""Multi-process training for the tests: a toy LM with a layer stack (FSDP units), a batch source with a
global position, and `launch`, which runs a worker function on N forked gloo processes (no torch import per
process, so a launch costs ~1 s) with a hard timeout. The file also runs under torchrun (`main`)."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

VOCAB = 16


@dataclass
class ToyOutput:
    loss: torch.Tensor
    logits: torch.Tensor


class ToyLayer(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.ff = nn.Linear(dim, dim)

    def forward(self, x):
        return x + F.gelu(self.ff(self.norm(x)))


class ToyLM(nn.Module):
    """Tied embedding / output LM with a stack of layers (one FSDP unit each) and dropout."""

    def __init__(self, dim: int = 16, layers: int = 2, dropout: float = 0.0):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, dim)
        self.layers = nn.ModuleList(ToyLayer(dim) for _ in range(layers))
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(dim, VOCAB)
        self.head.weight = self.emb.weight
        nn.init.normal_(self.emb.weight, std=0.1)  # logits of order 1 at the start

    def forward(self, input_ids, labels, attention_mask=None):
        h = self.drop(self.emb(input_ids))
        for layer in self.layers:
            h = layer(h)
        logits = self.head(h)
        return ToyOutput(F.cross_entropy(logits.reshape(-1, VOCAB), labels.reshape(-1)), logits)


class GlobalBatches:
    """Endless batches: global batch `i` (seeded by i) is cut into `world_size` slices, rank r takes slice r.
    The position (`index`) is global, so any number of processes resumes it. `fail_at` (batch index, rank):
    that rank is killed (SIGKILL) or raises there."""

    def __init__(self, rank=0, world_size=1, global_batch=8, seq_len=8, fail_at=None, fail_how="kill"):
        self.rank, self.world_size, self.global_batch, self.seq_len = rank, world_size, global_batch, seq_len
        self.fail_at, self.fail_how = fail_at, fail_how
        self.index = 0

    def __iter__(self):
        while True:
            if self.fail_at is not None and (self.index, self.rank) == tuple(self.fail_at):
                if self.fail_how == "kill":
                    os.kill(os.getpid(), signal.SIGKILL)
                raise RuntimeError(f"rank {self.rank} failed on purpose at batch {self.index}")
            g = torch.Generator().manual_seed(1000 + self.index)
            ids = torch.randint(0, VOCAB, (self.global_batch, self.seq_len), generator=g)
            local = self.global_batch // self.world_size
            ids = ids[self.rank * local:(self.rank + 1) * local]
            self.index += 1
            yield {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": (ids * 3 + 1) % VOCAB}

    def state_dict(self):
        return {"index": self.index}

    def load_state_dict(self, state):
        self.index = state["index"]


def train_toy(spec: dict, rank: int = 0, world_size: int = 1) -> dict:
    """One toy run from `spec` ({"args": TrainArgs fields, "dropout", "fail_at", "fail_how", "out"}); rank 0
    saves {"start_step", "losses", "state"} to spec["out"] (torch.save) when given."""
    from lmforge.training import TrainArgs, train

    torch.manual_seed(spec.get("init_seed", 0))
    model = ToyLM(dropout=spec.get("dropout", 0.0))
    batches = GlobalBatches(rank, world_size, fail_at=spec.get("fail_at"), fail_how=spec.get("fail_how", "kill"))
    result = train(model, batches, TrainArgs(**spec["args"]))
    out = {"start_step": result.start_step, "losses": result.losses,
           "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
    if rank == 0 and spec.get("out"):
        torch.save(out, spec["out"])
    return out


def train_toys(rank: int, world_size: int, specs: list[dict]) -> None:
    for spec in specs:
        train_toy(spec, rank, world_size)


# ------------------------------------------------------------------------------------ the model families
SMALL = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=32)


def family_model(name: str) -> nn.Module:
    """A tiny model of each family as its recipe trains it (fast paths on, unpadded attention for BERT)."""
    from lmforge.auto import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoModelForSequenceClassification
    from lmforge.models.bert import BertConfig, BertForPreTraining
    from lmforge.training.causal_lm import CausalLMTraining

    if name == "bert-mlm+nsp":
        return BertForPreTraining(BertConfig(**SMALL)).set_attn_implementation("unpadded")
    if name == "bert-classification":
        model = AutoModelForSequenceClassification.from_config(AutoConfig.for_model("bert", num_labels=3, **SMALL))
        return model.set_attn_implementation("unpadded")
    if name == "electra":
        from lmforge.models.electra import ElectraPretrainingModel

        config = AutoConfig.for_model("electra", embedding_size=32, **SMALL)
        return ElectraPretrainingModel(config, generator_size=0.5, disc_weight=50.0)
    if name == "gpt2":
        config = AutoConfig.for_model("gpt2", vocab_size=64, n_layer=2, n_embd=32, n_head=2, n_positions=32)
        return CausalLMTraining(AutoModelForCausalLM.from_config(config))
    if name == "llama":
        config = AutoConfig.for_model("llama", num_key_value_heads=1, tie_word_embeddings=True, **SMALL)
        return CausalLMTraining(AutoModelForCausalLM.from_config(config))
    if name in ("t5", "bart"):
        sizes = (dict(vocab_size=64, d_model=32, d_kv=16, d_ff=64, num_layers=2, num_heads=2, pad_token_id=0,
                      decoder_start_token_id=0) if name == "t5" else
                 dict(vocab_size=64, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                      decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=32,
                      pad_token_id=1, decoder_start_token_id=2))
        return AutoModelForSeq2SeqLM.from_config(AutoConfig.for_model(name, **sizes))
    raise ValueError(name)


def family_batch(name: str, index: int, rank: int, world_size: int, global_batch: int = 4) -> dict:
    g = torch.Generator().manual_seed(500 + index)
    ids = torch.randint(5, 64, (global_batch, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[::2, 9:] = 0  # padding in half the rows
    masked = torch.full_like(ids, -100)
    masked[:, 2:9:3] = ids[:, 2:9:3]
    batch = {"bert-mlm+nsp": {"input_ids": ids, "attention_mask": mask, "labels": masked, "sparse_mlm": True,
                              "next_sentence_label": torch.randint(0, 2, (global_batch,), generator=g)},
             "bert-classification": {"input_ids": ids, "attention_mask": mask,
                                     "labels": torch.randint(0, 3, (global_batch,), generator=g)},
             "electra": {"input_ids": ids, "attention_mask": mask, "labels": masked},
             "gpt2": {"input_ids": ids}, "llama": {"input_ids": ids},
             "t5": {"input_ids": ids, "attention_mask": mask, "labels": ids.flip(1)[:, :8]},
             "bart": {"input_ids": ids, "attention_mask": mask, "labels": ids.flip(1)[:, :8]}}[name]
    local = global_batch // world_size
    return {k: v[rank * local:(rank + 1) * local] if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class FamilyBatches:
    def __init__(self, name: str, rank: int, world_size: int):
        self.name, self.rank, self.world_size, self.index = name, rank, world_size, 0

    def __iter__(self):
        while True:
            self.index += 1
            yield family_batch(self.name, self.index - 1, self.rank, self.world_size)

    def state_dict(self):
        return {"index": self.index}

    def load_state_dict(self, state):
        self.index = state["index"]


def train_families(rank: int, world_size: int, spec: dict) -> None:
    """For each family: DDP and FSDP runs of `spec["steps"]` steps from one init; rank 0 saves
    {name: {"ddp": (losses, state), "fsdp": (losses, state)}} to spec["out"]."""
    from lmforge.training import TrainArgs, train

    results = {}
    for name in spec["families"]:
        for mode in ("ddp", "fsdp"):
            torch.manual_seed(0)
            model = family_model(name)
            args = TrainArgs(f"{spec['dir']}/{name}-{mode}", max_steps=spec["steps"], learning_rate=1e-3,
                             grad_accum_steps=2, progress=False, fsdp=mode == "fsdp", log_every=0)
            result = train(model, FamilyBatches(name, rank, world_size), args)
            results.setdefault(name, {})[mode] = (result.losses, {k: v.clone() for k, v in model.state_dict().items()})
    if rank == 0:
        torch.save(results, spec["out"])


# ------------------------------------------------------------------------------------------------ launch
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank: int, world_size: int, port: int, target, payload) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world_size))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    target(rank, world_size, payload)
    dist.destroy_process_group()


def launch(target, payload, world_size: int = 2, timeout: float = 60.0) -> list[int | None]:
    """Run `target(rank, world_size, payload)` on `world_size` forked processes in one gloo group; like
    torchrun, the first process that fails gets the others killed. Returns the exit codes (-9: killed).
    Raises TimeoutError (after killing them all) past `timeout` seconds."""
    import multiprocessing as mp

    # Imported once here, not in every child: forked children start with them loaded.
    import torch.distributed.checkpoint.state_dict  # noqa: F401
    import torch.distributed.fsdp  # noqa: F401

    import lmforge.training  # noqa: F401

    ctx = mp.get_context("fork")
    port = _free_port()
    procs = [ctx.Process(target=_entry, args=(r, world_size, port, target, payload)) for r in range(world_size)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    try:
        while any(p.exitcode is None for p in procs):
            if any(p.exitcode not in (None, 0) for p in procs):
                time.sleep(0.5)  # the others may still fail with their own error first
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"processes still running after {timeout} s")
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.exitcode is None:
                p.kill()
            p.join()
    return [p.exitcode for p in procs]


def main() -> None:
    """torchrun entry: `python -m torch.distributed.run ... dist_helpers.py SPEC_JSON`."""
    from torch.distributed.elastic.multiprocessing.errors import record

    from lmforge.training.distributed import maybe_init_distributed

    @record
    def run() -> None:
        rank, world_size = maybe_init_distributed()
        train_toy(json.loads(sys.argv[1]), rank, world_size)

    run()


if __name__ == "__main__":
    main()
