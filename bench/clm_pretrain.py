"""Causal-LM pretraining throughput: lmforge's training path vs transformers' GPT2LMHeadModel (SDPA), same
config, weights and batch, one process.

One optimizer step = forward + backward + AdamW on a batch of unpadded blocks (labels = inputs). lmforge runs
what `lmforge pretrain --objective clm` runs: `CausalLMTraining` (the base model, then the next-token loss fused
with the output projection, no (B, T, V) logits) and its fused AdamW; transformers runs
`GPT2LMHeadModel(input_ids, labels=input_ids)` with torch's AdamW, as its Trainer builds it. The shape is
gpt2-mini at the Shakespeare run's vocabulary (4 x 256, 8,000 tokens), no dropout (the short-budget setting).
Variants run round-robin (`--rounds`), each reporting its median; `--bf16` adds both under bf16 autocast.

    python bench/clm_pretrain.py [--steps 6] [--rounds 3] [--threads 2] [--bf16]
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
from common import arg_parser, describe, fmt, fmt_ratio, markdown_table, median, set_threads

from lmforge.training.optim import build_optimizer

# gpt2-mini with the vocabulary of the Shakespeare run; dropout off, as a 10-minute run trains.
SHAPE = dict(vocab_size=8000, n_positions=128, n_embd=256, n_layer=4, n_head=4, n_inner=1024,
             resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0)
NAME = "GPT-2 4x256 (vocab 8000)"


def build_models(shape: dict = SHAPE):
    """(transformers GPT2LMHeadModel, lmforge CausalLMTraining over lmforge's GPT2LMHeadModel), same weights."""
    import transformers

    import lmforge
    from lmforge.training.causal_lm import CausalLMTraining

    torch.manual_seed(0)
    theirs = transformers.GPT2LMHeadModel(transformers.GPT2Config(**shape, attn_implementation="sdpa"))
    ours = lmforge.GPT2LMHeadModel(lmforge.GPT2Config(**shape))
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=False)
    if missing or unexpected:
        raise RuntimeError(f"state dicts differ: missing {missing}, unexpected {unexpected}")
    return theirs, CausalLMTraining(ours)


def make_batch(vocab_size: int, batch_size: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, vocab_size, (batch_size, seq_len), generator=torch.Generator().manual_seed(seed))


def loss_of(model, input_ids: torch.Tensor) -> torch.Tensor:
    # Both take labels = inputs and shift them inside.
    return model(input_ids=input_ids, labels=input_ids).loss


def time_steps(model, optimizer, input_ids: torch.Tensor, steps: int, warmup: int, bf16: bool) -> float:
    """Seconds for `steps` optimizer steps after `warmup` untimed ones."""
    model.train()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        with autocast:
            loss = loss_of(model, input_ids)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


@dataclass
class ClmResult:
    tokens_per_s: dict[str, float]  # variant -> median over rounds
    seconds: dict[str, list[float]]  # of `steps` steps, each round
    batch_size: int
    seq_len: int
    initial_loss_diff: float  # |lmforge - transformers| of the first fp32 loss (same weights, same batch)


def run(steps: int = 6, warmup: int = 2, threads: int = 2, batch_size: int = 32, seq_len: int = 128,
        rounds: int = 3, bf16: bool = False, shape: dict = SHAPE) -> ClmResult:
    set_threads(threads)
    theirs, ours = build_models(shape)
    input_ids = make_batch(shape["vocab_size"], batch_size, seq_len)
    with torch.no_grad():
        initial_loss_diff = abs(loss_of(ours, input_ids).item() - loss_of(theirs, input_ids).item())
    # Each library trains its own copy from the same weights; optimizers are built once and kept.
    optimizers = {"transformers": torch.optim.AdamW(theirs.parameters(), lr=1e-4),
                  "lmforge": build_optimizer(ours, 1e-4, 0.0)}
    variants = [("transformers fp32", theirs, "transformers", False), ("lmforge fp32", ours, "lmforge", False)]
    if bf16:
        variants += [("transformers bf16", theirs, "transformers", True), ("lmforge bf16", ours, "lmforge", True)]
    seconds: dict[str, list[float]] = {name: [] for name, *_ in variants}
    for _ in range(rounds):  # interleaved: load drift hits every variant alike
        for name, model, library, use_bf16 in variants:
            seconds[name].append(time_steps(model, optimizers[library], input_ids, steps, warmup, use_bf16))
    tokens = batch_size * seq_len * steps
    return ClmResult(tokens_per_s={k: tokens / median(v) for k, v in seconds.items()}, seconds=seconds,
                     batch_size=batch_size, seq_len=seq_len, initial_loss_diff=initial_loss_diff)


def rows(result: ClmResult) -> list[list[str]]:
    """metric | lmforge | transformers | ratio rows, as run_all.py's table has them."""
    tps = result.tokens_per_s
    out = [[f"pretraining {NAME} causal LM fp32, tokens/s", fmt(tps["lmforge fp32"], 0),
            fmt(tps["transformers fp32"], 0), fmt_ratio(tps["lmforge fp32"], tps["transformers fp32"])]]
    if "lmforge bf16" in tps:
        out += [
            [f"pretraining {NAME} causal LM bf16 autocast, tokens/s", fmt(tps["lmforge bf16"], 0),
             fmt(tps["transformers bf16"], 0), fmt_ratio(tps["lmforge bf16"], tps["transformers bf16"])],
            [f"pretraining {NAME} causal LM, lmforge bf16 vs transformers fp32, tokens/s",
             fmt(tps["lmforge bf16"], 0), fmt(tps["transformers fp32"], 0),
             fmt_ratio(tps["lmforge bf16"], tps["transformers fp32"])],
        ]
    return out


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="alternating timings of each variant (median)")
    parser.add_argument("--bf16", action="store_true", help="also time both under bf16 autocast")
    args = parser.parse_args()
    result = run(args.steps, args.warmup, args.threads, args.batch_size, args.seq_len, args.rounds, args.bf16)
    print(f"causal-LM pretraining {NAME}, batch {args.batch_size} x {args.seq_len}, {describe(args.threads)}; "
          f"|first loss difference| {result.initial_loss_diff:.1e}")
    print(markdown_table(["metric", "lmforge", "transformers", "ratio"], rows(result)))


if __name__ == "__main__":
    main()
