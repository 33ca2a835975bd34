"""Pretraining throughput: lmforge BertForPreTraining vs transformers' (SDPA), same config and batch.

One optimizer step = forward + backward + AdamW, MLM (15% of tokens predicted) + NSP.
lmforge runs its sparse MLM head (only masked positions reach the vocabulary projection), as
Google's BERT does; transformers computes logits for every position.

    python bench/pretrain_throughput.py [--steps 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import torch


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


def time_steps(model, batch, steps: int, warmup: int, extra: dict) -> float:
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        loss = model(**batch, **extra).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import transformers

    import lmforge

    shape = dict(vocab_size=30522, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                 intermediate_size=1024, max_position_embeddings=512)
    torch.manual_seed(0)
    theirs = transformers.BertForPreTraining(transformers.BertConfig(**shape, attn_implementation="sdpa"))
    ours = lmforge.BertForPreTraining(lmforge.BertConfig(**shape))
    ours.load_state_dict(theirs.state_dict(), strict=False)
    batch = make_batch(shape["vocab_size"], args.batch_size, args.seq_len)
    tokens = args.batch_size * args.seq_len * args.steps

    results = {}
    # Interleave to share any drift in machine load fairly.
    for name, model, extra in [("transformers", theirs, {}), ("lmforge", ours, {"sparse_mlm": True})]:
        results[name] = tokens / time_steps(model, batch, args.steps, args.warmup, extra)
    ratio = results["lmforge"] / results["transformers"]
    print(f"pretraining BERT 4x256 (4 heads, vocab 30522), batch {args.batch_size} x {args.seq_len}, fp32, "
          f"{args.threads} threads, torch {torch.__version__}, transformers {transformers.__version__}")
    print("| implementation | tokens/s |")
    print("|---|---:|")
    for name, value in results.items():
        print(f"| {name} | {value:,.0f} |")
    print(f"ratio lmforge / transformers: {ratio:.2f}x")


if __name__ == "__main__":
    main()
