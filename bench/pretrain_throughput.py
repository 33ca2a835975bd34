"""Pretraining throughput: lmforge BertForPreTraining vs transformers' (SDPA), same config and batch.

One optimizer step = forward + backward + AdamW, MLM (15% of tokens predicted) + NSP.
lmforge runs its sparse MLM head (only masked positions reach the vocabulary projection), as
Google's BERT does; transformers computes logits for every position. With `--rounds N` the two
implementations alternate N times and the median is reported.

    python bench/pretrain_throughput.py [--steps 8] [--threads 2] [--rounds 1]
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from common import arg_parser, median, set_threads

from lmforge.training.optim import build_optimizer

# BERT 4x256 (4 heads), BERT's vocabulary.
SHAPE = dict(vocab_size=30522, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
             intermediate_size=1024, max_position_embeddings=512)


def make_batch(vocab_size: int, batch_size: int, seq_len: int, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab_size, (batch_size, seq_len), generator=g)
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, seq_len // 2:] = 1
    masked = torch.rand(batch_size, seq_len, generator=g) < 0.15
    labels = input_ids.masked_fill(~masked, -100)
    input_ids = input_ids.masked_fill(masked, 4)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "token_type_ids": token_type_ids,
        "labels": labels,
        "next_sentence_label": torch.randint(0, 2, (batch_size,), generator=g),
    }


def time_steps(model, batch, steps: int, warmup: int, extra: dict, optimizer=None) -> float:
    """Seconds for `steps` optimizer steps after `warmup` untimed ones. Default optimizer: torch
    AdamW as transformers' Trainer builds it; lmforge passes its own (`build_optimizer`)."""
    model.train()
    optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=1e-4)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        loss = model(**batch, **extra).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def build_models(shape: dict = SHAPE):
    """(transformers model, lmforge model) with the same weights."""
    import transformers

    import lmforge

    torch.manual_seed(0)
    theirs = transformers.BertForPreTraining(transformers.BertConfig(**shape, attn_implementation="sdpa"))
    ours = lmforge.BertForPreTraining(lmforge.BertConfig(**shape))
    ours.load_state_dict(theirs.state_dict(), strict=False)
    return theirs, ours


@dataclass
class PretrainResult:
    tokens_per_s: dict[str, float]  # median over rounds
    seconds: dict[str, list[float]]  # of `steps` steps, each round
    batch_size: int
    seq_len: int
    masked_per_batch: int  # MLM positions predicted per batch


def run(steps: int = 8, warmup: int = 2, threads: int = 2, batch_size: int = 32, seq_len: int = 128,
        rounds: int = 1) -> PretrainResult:
    set_threads(threads)
    theirs, ours = build_models()
    batch = make_batch(SHAPE["vocab_size"], batch_size, seq_len)
    tokens = batch_size * seq_len * steps
    seconds: dict[str, list[float]] = {"transformers": [], "lmforge": []}
    # Interleave to share any drift in machine load fairly.
    for _ in range(rounds):
        for name, model, extra in [("transformers", theirs, {}), ("lmforge", ours, {"sparse_mlm": True})]:
            optimizer = build_optimizer(model, 1e-4, 0.0) if name == "lmforge" else None
            seconds[name].append(time_steps(model, batch, steps, warmup, extra, optimizer))
    return PretrainResult(
        tokens_per_s={k: tokens / median(v) for k, v in seconds.items()},
        seconds=seconds, batch_size=batch_size, seq_len=seq_len,
        masked_per_batch=int((batch["labels"] != -100).sum()),
    )


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=1, help="alternating timings of each (median)")
    args = parser.parse_args()

    import transformers

    result = run(args.steps, args.warmup, args.threads, args.batch_size, args.seq_len, args.rounds)
    ratio = result.tokens_per_s["lmforge"] / result.tokens_per_s["transformers"]
    print(f"pretraining BERT 4x256 (4 heads, vocab 30522), batch {args.batch_size} x {args.seq_len}, fp32, "
          f"{args.threads} threads, torch {torch.__version__}, transformers {transformers.__version__}")
    print("| implementation | tokens/s |")
    print("|---|---:|")
    for name, value in result.tokens_per_s.items():
        print(f"| {name} | {value:,.0f} |")
    print(f"ratio lmforge / transformers: {ratio:.2f}x")


if __name__ == "__main__":
    main()
