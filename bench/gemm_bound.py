"""How far lmforge's encoder-decoder paths could go past transformers if everything but the matrix products
were free: the GEMM share of lmforge's time against transformers' whole time, from torch's profiler.

Both libraries run the same fp32 products through the same MKL / oneDNN kernels, so lmforge's own GEMM time
is a floor under its step time. `bound = transformers' time / lmforge's GEMM time` is the ratio lmforge
would reach with every other op (attention, softmax, optimizer, norms, cache reorders, Python) at zero cost;
`bound keeping attention` leaves the attention kernels in. Workloads are the ones of `seq2seq_train.py`
(Marian 6+6 x 256, vocab 16k, batch 32, two optimizer steps) and `translate.py` (beam 4, batch 16, 64 new
tokens, Marian and T5). The profiler adds a cost per op, which is larger for the library with more ops, so
the profiled ratio runs above the benchmarks' (their ratios are the ones to quote); the GEMM shares are
what this script is for.

    python bench/gemm_bound.py [--threads 1] [--workloads train,marian,t5]
"""

from __future__ import annotations

import seq2seq_train
import torch
import translate
from common import arg_parser, describe, markdown_table, set_threads

from lmforge.training.optim import build_optimizer

GEMM_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation",
            "mkldnn::_linear_pointwise"}


def profiled_seconds(fn) -> dict[str, float]:
    """Self CPU seconds of one call of `fn` (after one untimed call): all ops, GEMMs, attention kernels."""
    fn()
    with torch.profiler.profile() as prof:
        fn()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    gemm = sum(e.self_cpu_time_total for e in events if e.key in GEMM_OPS) / 1e6
    attention = sum(e.self_cpu_time_total for e in events if "scaled_dot_product" in e.key) / 1e6
    return {"total": total, "gemm": gemm, "attention": attention}


def training_calls(shape: dict | None = None, batch_size: int = 32, max_len: int = 48) -> dict[str, object]:
    shape = shape or seq2seq_train.SHAPE
    theirs, ours = seq2seq_train.build_models(shape)
    batch = seq2seq_train.make_batch(shape["vocab_size"], batch_size, max_len)
    optimizers = {"transformers": torch.optim.AdamW(theirs.parameters(), lr=1e-4),
                  "lmforge": build_optimizer(ours, 1e-4, 0.0)}

    def steps(model, optimizer):
        def call():
            model.train()
            for _ in range(2):
                model(**batch).loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        return call

    return {"lmforge": steps(ours, optimizers["lmforge"]), "transformers": steps(theirs, optimizers["transformers"])}


def beam_calls(kind: str, shape: dict | None = None, batch_size: int = 16, new: int = 64) -> dict[str, object]:
    theirs, ours = translate.build(kind, shape)
    eos, pad = (translate.EOS, translate.PAD) if kind == "marian" else (1, 0)
    ids, mask = translate.sources(ours.config.vocab_size, batch_size, eos, pad)
    return {"lmforge": translate.generate_fn("lmforge", ours, ids, mask, new, 4),
            "transformers": translate.generate_fn("transformers", theirs, ids, mask, new, 4)}


WORKLOADS = {"train": ("seq2seq training, Marian 6+6 x 256, 2 steps", training_calls),
             "marian": ("beam-4 translation, Marian 6+6 x 256", lambda **kw: beam_calls("marian", **kw)),
             "t5": ("beam-4 translation, T5 v1.0 4+4 x 256", lambda **kw: beam_calls("t5", **kw))}


def bound_row(name: str, calls: dict[str, object]) -> dict[str, float | str]:
    ours, theirs = profiled_seconds(calls["lmforge"]), profiled_seconds(calls["transformers"])
    return {"workload": name, "lmforge_s": ours["total"], "gemm_share": ours["gemm"] / ours["total"],
            "attention_share": ours["attention"] / ours["total"], "transformers_s": theirs["total"],
            "profiled_ratio": theirs["total"] / ours["total"], "bound": theirs["total"] / ours["gemm"],
            "bound_keeping_attention": theirs["total"] / (ours["gemm"] + ours["attention"])}


def main() -> None:
    parser = arg_parser(__doc__)
    parser.add_argument("--workloads", default="train,marian,t5")
    args = parser.parse_args()
    set_threads(args.threads)
    rows = []
    for key in args.workloads.split(","):
        name, make = WORKLOADS[key]
        r = bound_row(name, make())
        rows.append([name, f"{r['lmforge_s']:.2f}", f"{r['gemm_share']:.0%}", f"{r['attention_share']:.0%}",
                     f"{r['transformers_s']:.2f}", f"{r['profiled_ratio']:.2f}x", f"{r['bound']:.2f}x",
                     f"{r['bound_keeping_attention']:.2f}x"])
    print(describe(args.threads))
    print(markdown_table(["workload", "lmforge s", "GEMM share", "attention share", "transformers s",
                          "profiled ratio", "bound (only GEMMs cost)", "bound keeping attention"], rows))


if __name__ == "__main__":
    main()
