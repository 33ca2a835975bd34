"""Seq2seq training throughput: lmforge's training path vs transformers' MarianMTModel (SDPA), same config,
weights and batches, one process.

One optimizer step = forward + backward + AdamW on a batch of padded source / target pairs of mixed lengths.
lmforge runs what `finetune --task seq2seq` can run: `Seq2SeqLMTraining` (the encoder-decoder, then the
cross-entropy fused with the output projection over the real target tokens, no (B, T, V) logits) and its fused
AdamW; transformers runs `MarianMTModel(input_ids, attention_mask, labels, decoder_attention_mask)` with torch's
AdamW. The shape is a small Marian: 6 + 6 layers, d_model 256, 4 heads, FFN 1024, one 16,000-word vocabulary,
dropout 0.1 (Marian's default). Tokens/s counts the real (unpadded) source + target tokens. The first losses
(eval mode, same weights, same batch) must agree within 1e-5. Variants run round-robin (`--rounds`), each
reporting its median; `--bf16` adds both under bf16 autocast.

    python bench/seq2seq_train.py [--steps 4] [--rounds 3] [--threads 2] [--bf16]
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
from common import arg_parser, describe, fmt, fmt_ratio, markdown_table, median, set_threads

from lmforge.training.optim import build_optimizer

PAD, EOS = 1, 0
SHAPE = dict(vocab_size=16000, d_model=256, encoder_layers=6, decoder_layers=6, encoder_attention_heads=4,
             decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024, max_position_embeddings=256,
             pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD, forced_eos_token_id=EOS,
             scale_embedding=True, dropout=0.1, activation_function="swish")
NAME = "Marian 6+6 x 256 (vocab 16k)"


def build_models(shape: dict = SHAPE, seed: int = 0):
    """(transformers MarianMTModel, lmforge Seq2SeqLMTraining over lmforge's MarianMTModel), same weights, the
    weights moved off their init (zero biases hide differences)."""
    import transformers

    import lmforge
    from lmforge.training.seq2seq_lm import Seq2SeqLMTraining

    torch.manual_seed(seed)
    theirs = transformers.MarianMTModel(transformers.MarianConfig(**shape, attn_implementation="sdpa"))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "embed_positions" not in name:  # Marian's sinusoids stay sinusoids
                p.add_(torch.randn(p.shape, generator=g) * 0.02)
        theirs.final_logits_bias.copy_(torch.randn(theirs.final_logits_bias.shape, generator=g) * 0.1)
    ours = lmforge.MarianMTModel(lmforge.MarianConfig(**shape))
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=False)
    if [k for k in missing + unexpected if "embed_positions" not in k]:
        raise RuntimeError(f"state dicts differ: missing {missing}, unexpected {unexpected}")
    return theirs, Seq2SeqLMTraining(ours)


def make_batch(vocab_size: int, batch_size: int, max_len: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Right-padded sources and labels of mixed lengths (max_len / 4 .. max_len), each ending in EOS; labels are
    -100 at padding; the decoder mask covers the shifted labels (start token + all but the last)."""
    g = torch.Generator().manual_seed(seed)

    def padded(lengths: list[int], fill: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(2, vocab_size, (len(lengths), max(lengths)), generator=g)
        mask = torch.zeros_like(ids)
        for b, n in enumerate(lengths):
            mask[b, :n] = 1
            ids[b, n - 1] = EOS
        return ids.masked_fill(mask == 0, fill), mask

    def lengths() -> list[int]:
        return torch.randint(max(2, max_len // 4), max_len + 1, (batch_size,), generator=g).tolist()

    source, source_mask = padded(lengths(), PAD)
    labels, target_mask = padded(lengths(), -100)
    return dict(input_ids=source, attention_mask=source_mask, labels=labels, decoder_attention_mask=target_mask)


def loss_of(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**batch).loss


def time_steps(model, optimizer, batch: dict, steps: int, warmup: int, bf16: bool) -> float:
    """Seconds for `steps` optimizer steps after `warmup` untimed ones."""
    model.train()
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    for i in range(warmup + steps):
        if i == warmup:
            start = time.perf_counter()
        with autocast:
            loss = loss_of(model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


@dataclass
class Seq2SeqTrainResult:
    tokens_per_s: dict[str, float]  # variant -> median over rounds
    seconds: dict[str, list[float]]  # of `steps` steps, each round
    tokens: int  # real source + target tokens per batch
    initial_loss_diff: float  # |lmforge - transformers| of the first fp32 loss (eval mode, same weights and batch)


def run(steps: int = 4, warmup: int = 1, threads: int = 2, batch_size: int = 32, max_len: int = 48,
        rounds: int = 3, bf16: bool = False, shape: dict = SHAPE) -> Seq2SeqTrainResult:
    set_threads(threads)
    theirs, ours = build_models(shape)
    batch = make_batch(shape["vocab_size"], batch_size, max_len)
    theirs.eval(), ours.eval()
    with torch.no_grad():
        initial_loss_diff = abs(loss_of(ours, batch).item() - loss_of(theirs, batch).item())
    if initial_loss_diff > 1e-5:
        raise AssertionError(f"first losses differ by {initial_loss_diff:.2e} (> 1e-5)")
    optimizers = {"transformers": torch.optim.AdamW(theirs.parameters(), lr=1e-4),
                  "lmforge": build_optimizer(ours, 1e-4, 0.0)}
    variants = [("transformers fp32", theirs, "transformers", False), ("lmforge fp32", ours, "lmforge", False)]
    if bf16:
        variants += [("transformers bf16", theirs, "transformers", True), ("lmforge bf16", ours, "lmforge", True)]
    seconds: dict[str, list[float]] = {name: [] for name, *_ in variants}
    for _ in range(rounds):  # interleaved: load drift hits every variant alike
        for name, model, library, use_bf16 in variants:
            seconds[name].append(time_steps(model, optimizers[library], batch, steps, warmup, use_bf16))
    tokens = int(batch["attention_mask"].sum() + batch["decoder_attention_mask"].sum())
    return Seq2SeqTrainResult(tokens_per_s={k: tokens * steps / median(v) for k, v in seconds.items()},
                              seconds=seconds, tokens=tokens, initial_loss_diff=initial_loss_diff)


def rows(result: Seq2SeqTrainResult) -> list[list[str]]:
    """metric | lmforge | transformers | ratio rows, as run_all.py's table has them."""
    tps = result.tokens_per_s
    out = [[f"seq2seq training {NAME} fp32, source+target tokens/s", fmt(tps["lmforge fp32"], 0),
            fmt(tps["transformers fp32"], 0), fmt_ratio(tps["lmforge fp32"], tps["transformers fp32"])]]
    if "lmforge bf16" in tps:
        out.append([f"seq2seq training {NAME} bf16 autocast, source+target tokens/s", fmt(tps["lmforge bf16"], 0),
                    fmt(tps["transformers bf16"], 0), fmt_ratio(tps["lmforge bf16"], tps["transformers bf16"])])
    return out


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-len", type=int, default=48, help="longest source / target (others down to 1/4)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating timings of each variant (median)")
    parser.add_argument("--bf16", action="store_true", help="also time both under bf16 autocast")
    args = parser.parse_args()
    result = run(args.steps, args.warmup, args.threads, args.batch_size, args.max_len, args.rounds, args.bf16)
    print(f"seq2seq training {NAME}, batch {args.batch_size}, lengths {max(2, args.max_len // 4)}..{args.max_len} "
          f"({result.tokens} real tokens), {describe(args.threads)}; "
          f"|first loss difference| {result.initial_loss_diff:.1e}")
    print(markdown_table(["metric", "lmforge", "transformers", "ratio"], rows(result)))


if __name__ == "__main__":
    main()
