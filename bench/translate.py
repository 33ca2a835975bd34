"""Beam-search translation throughput: lmforge `model.generate` vs transformers `generate`, same weights, one
process, sentences/s.

Models: a small random Marian (6 + 6 layers, d_model 256, vocab 16,000: the training bench's shape) and a small
random T5 v1.0 (4 + 4 layers, d_model 256), weights moved off their init (and Marian's final_logits_bias made
non-zero). Random models repeat a few tokens and rarely pick EOS, so every row runs to `new` tokens (Marian's
forced EOS last): the longest case, the same work in both libraries. A batch of 16 sources of 8..32 tokens
(right-padded), num_beams 4. Both libraries must return the same tokens (checked: the
script fails otherwise). Timed round-robin (see common.py), medians.

    python bench/translate.py [--new 64] [--repeats 3] [--threads 2] [--batch-size 16]
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from common import arg_parser, describe, fmt, fmt_ratio, interleaved_times, markdown_table, median

LIBRARIES = ("lmforge", "transformers")
PAD, EOS = 1, 0
MARIAN = dict(vocab_size=16000, d_model=256, encoder_layers=6, decoder_layers=6, encoder_attention_heads=4,
              decoder_attention_heads=4, encoder_ffn_dim=1024, decoder_ffn_dim=1024, max_position_embeddings=256,
              pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD, forced_eos_token_id=EOS,
              scale_embedding=True, dropout=0.0, activation_function="swish")
# transformers' generate sizes its cache by the encoder's depth: as many decoder layers as encoder layers.
T5 = dict(vocab_size=16000, d_model=256, d_kv=64, d_ff=1024, num_layers=4, num_decoder_layers=4, num_heads=4,
          feed_forward_proj="relu", pad_token_id=0, eos_token_id=1, decoder_start_token_id=0, dropout_rate=0.0)
NAMES = {"marian": "Marian 6+6 x 256 (vocab 16k)", "t5": "T5 v1.0 4+4 x 256 (vocab 16k)"}


def build(kind: str, shape: dict | None = None, seed: int = 0):
    """(transformers model, lmforge model), same perturbed weights, eval mode."""
    import transformers

    import lmforge

    torch.manual_seed(seed)
    if kind == "marian":
        shape = shape or MARIAN
        theirs = transformers.MarianMTModel(transformers.MarianConfig(**shape, attn_implementation="sdpa"))
        ours = lmforge.MarianMTModel(lmforge.MarianConfig(**shape))
    else:
        shape = shape or T5
        theirs = transformers.T5ForConditionalGeneration(transformers.T5Config(**shape, attn_implementation="sdpa"))
        ours = lmforge.T5ForConditionalGeneration(lmforge.T5Config(**shape))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "embed_positions" not in name:  # Marian's sinusoids stay sinusoids
                p.add_(torch.randn(p.shape, generator=g) * 0.1 * p.std().clamp(min=0.02))
        if kind == "marian":
            theirs.final_logits_bias.copy_(torch.randn(theirs.final_logits_bias.shape, generator=g))
    missing, unexpected = ours.load_state_dict(theirs.state_dict(), strict=False)
    if [k for k in missing + unexpected if "embed_positions" not in k]:
        raise RuntimeError(f"state dicts differ: missing {missing}, unexpected {unexpected}")
    return theirs.eval(), ours.eval()


def sources(vocab_size: int, batch_size: int, eos: int, pad: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded source ids of 8..32 tokens, each ending in EOS, and their mask."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(8, 33, (batch_size,), generator=g).tolist()
    ids = torch.randint(2, vocab_size, (batch_size, max(lengths)), generator=g)
    mask = torch.zeros_like(ids)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        ids[b, n - 1] = eos
    return ids.masked_fill(mask == 0, pad), mask


def generate_fn(lib: str, model, ids: torch.Tensor, mask: torch.Tensor, new: int, beams: int):
    if lib == "lmforge":
        return lambda: model.generate(ids, mask, max_new_tokens=new, num_beams=beams)

    def call():
        with torch.no_grad():
            return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, num_beams=beams,
                                  do_sample=False)
    return call


@dataclass
class TranslateResult:
    new: int
    sentences_per_s: dict[str, float] = field(default_factory=dict)  # "<kind> <lib>"
    identical: dict[str, bool] = field(default_factory=dict)  # kind -> same tokens
    lengths: dict[str, tuple[int, int]] = field(default_factory=dict)  # kind -> (shortest, longest) output


def run(new: int = 64, repeats: int = 3, threads: int = 2, batch_size: int = 16, beams: int = 4,
        shapes: dict[str, dict] | None = None) -> TranslateResult:
    torch.set_num_threads(threads)
    shapes = shapes or {"marian": MARIAN, "t5": T5}
    result = TranslateResult(new)
    fns, warmups, batches = {}, {}, {}
    for kind, shape in shapes.items():
        models = dict(zip(("transformers", "lmforge"), build(kind, shape)))
        eos, pad = shape["eos_token_id"], shape["pad_token_id"]
        batches[kind] = sources(shape["vocab_size"], batch_size, eos, pad)
        for lib in LIBRARIES:
            fns[f"{kind} {lib}"] = generate_fn(lib, models[lib], *batches[kind], new, beams)
            warmups[f"{kind} {lib}"] = generate_fn(lib, models[lib], *batches[kind], 2, beams)
    times, outputs = interleaved_times(fns, repeats, warmup_fns=warmups)
    for kind, shape in shapes.items():
        ours, theirs = outputs[f"{kind} lmforge"], outputs[f"{kind} transformers"]
        result.identical[kind] = ours.shape == theirs.shape and torch.equal(ours, theirs)
        if not result.identical[kind]:
            raise AssertionError(f"{kind}: lmforge's beams differ from transformers'\n{ours}\n{theirs}")
        # Output length of each row: up to its first EOS after the start token.
        ends = [(row[1:] == shape["eos_token_id"]).nonzero() for row in ours]
        lengths = [int(e[0]) + 1 if len(e) else ours.size(1) - 1 for e in ends]
        result.lengths[kind] = (min(lengths), max(lengths))
        for lib in LIBRARIES:
            result.sentences_per_s[f"{kind} {lib}"] = batch_size / median(times[f"{kind} {lib}"])
    return result


def rows(result: TranslateResult, batch_size: int = 16, beams: int = 4) -> list[list[str]]:
    sps = result.sentences_per_s
    out = []
    for kind in result.identical:
        shortest, longest = result.lengths[kind]
        out.append([f"translate {NAMES.get(kind, kind)}, beam {beams}, batch {batch_size}, <= {result.new} new "
                    f"tokens ({shortest}..{longest}), sentences/s", fmt(sps[f"{kind} lmforge"], 2),
                    fmt(sps[f"{kind} transformers"], 2), fmt_ratio(sps[f"{kind} lmforge"], sps[f"{kind} transformers"])])
    return out


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--new", type=int, default=64, help="max new tokens per sentence")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--beams", type=int, default=4)
    args = parser.parse_args()
    result = run(args.new, args.repeats, args.threads, args.batch_size, args.beams)
    print(f"beam-search translation, random perturbed weights ({describe(args.threads)}); identical tokens: "
          + ", ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in result.identical.items()))
    print(markdown_table(["metric", "lmforge", "transformers", "ratio"], rows(result, args.batch_size, args.beams)))


if __name__ == "__main__":
    main()
