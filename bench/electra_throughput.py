"""Pretraining throughput of the two objectives on one model size: ELECTRA (discriminator of the preset's size +
generator of `--generator-size` of it) vs MLM (BertForMaskedLM, sparse MLM head), same batch.

One optimizer step = forward + backward + AdamW, as `lmforge pretrain` runs it (dropout 0 as in the demo, fp32,
unpadded). Tokens/s counts the input tokens of the batch (both objectives read the same text); ELECTRA's step
also runs the generator and gives every token a training signal, MLM's only the masked 15%. The two
alternate `--rounds` times; medians are reported.

    python bench/electra_throughput.py [--preset bert-mini] [--seq-len 64] [--rounds 3] [--threads 2]
"""

from __future__ import annotations

import time

import torch
from common import arg_parser, median, set_threads

from lmforge.models.bert import BertConfig, BertForMaskedLM
from lmforge.models.electra import ElectraConfig, ElectraPretrainingModel
from lmforge.recipes.pretrain import PRESETS
from lmforge.training.optim import build_optimizer

MASK_ID = 4


def make_batch(vocab_size: int, batch_size: int, seq_len: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """15% of the tokens (at most 20 per sequence, as the recipe) masked with [MASK]; labels there."""
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab_size, (batch_size, seq_len), generator=g)
    k = min(20, round(0.15 * seq_len))
    chosen = torch.rand(batch_size, seq_len, generator=g).argsort(-1)[:, :k]  # (B, k) positions
    masked = torch.zeros(batch_size, seq_len, dtype=torch.bool).scatter_(1, chosen, True)
    return {"input_ids": input_ids.masked_fill(masked, MASK_ID), "attention_mask": torch.ones_like(input_ids),
            "token_type_ids": torch.zeros_like(input_ids), "labels": input_ids.masked_fill(~masked, -100)}


def seconds_per_step(model, batch: dict, extra: dict, steps: int, warmup: int) -> float:
    optimizer = build_optimizer(model, 1e-4, 0.01)
    model.train()
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        model(**batch, **extra).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--preset", default="bert-mini", choices=sorted(PRESETS))
    parser.add_argument("--generator-size", type=float, default=0.25)
    parser.add_argument("--vocab-size", type=int, default=8000, help="the recipe's default trained vocabulary")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=64, help="the demo's pretraining length")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    set_threads(args.threads)

    shape = dict(PRESETS[args.preset], vocab_size=args.vocab_size, max_position_embeddings=512,
                 hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    models = {
        "mlm": (BertForMaskedLM(BertConfig(**shape)), {"sparse_mlm": True}),
        "electra": (ElectraPretrainingModel(ElectraConfig(**shape, embedding_size=shape["hidden_size"]),
                                            generator_size=args.generator_size), {}),
    }
    batch = make_batch(args.vocab_size, args.batch_size, args.seq_len)
    seconds: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):  # alternate, so drift in machine load hits both alike
        for name, (model, extra) in models.items():
            seconds[name].append(seconds_per_step(model, batch, extra, args.steps, args.warmup))
    tokens = args.batch_size * args.seq_len
    print(f"{args.preset} ({shape['num_hidden_layers']}x{shape['hidden_size']}), generator {args.generator_size:g}, "
          f"vocab {args.vocab_size}, batch {args.batch_size} x {args.seq_len}, fp32, {args.threads} threads, "
          f"torch {torch.__version__}")
    print("| objective | parameters | s / step | tokens/s |")
    print("|---|---:|---:|---:|")
    for name, (model, _) in models.items():
        step = median(seconds[name])
        params = sum(p.numel() for p in model.parameters())
        print(f"| {name} | {params / 1e6:.2f}M | {step:.3f} | {tokens / step:,.0f} |")
    ratio = median(seconds["mlm"]) / median(seconds["electra"])
    print(f"electra / mlm tokens/s: {ratio:.2f}x")


if __name__ == "__main__":
    main()
