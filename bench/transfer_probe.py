"""What a pretrained folder's representations hold, against the same architecture from random weights.

    python bench/transfer_probe.py runs/demo/pretrain/final [--threads 2]

On `movie-sentences` (split seed 0, 64 tokens), for the pretrained weights and a seeded random init:
* anisotropy: mean cosine similarity of two different test sentences' vectors (mean-pooled last hidden
  states, and the [CLS] state). Near 1: every sentence looks alike to a classifier (collapse).
* linear probe: logistic regression on the frozen mean-pooled vectors, trained on 10% / 100% of the
  training sentences, test accuracy. What the encoder gives a classifier before any fine-tuning.
* masked-LM answers (models with an MLM head): on the test sentences with 15% of the tokens masked, the
  top-1 accuracy, how many distinct tokens the model predicts, and the share of its predictions that are
  one of the 10 most frequent tokens of the pretraining corpus' tokenizer output on these sentences
  (the frequent-word plateau predicts "the", "," and "." everywhere).
Prints one JSON object. Used for the pretraining investigation in docs/design.md.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter

import torch
import torch.nn.functional as F

from lmforge.auto import AutoConfig, AutoModel, AutoModelForMaskedLM
from lmforge.data.collators import MaskingCollator
from lmforge.data.datasets import load_dataset
from lmforge.data.splits import subsample
from lmforge.tokenizers import AutoTokenizer


def encode(tokenizer, texts: list[str], max_length: int = 64) -> list[list[int]]:
    return [tokenizer(t, truncation=True, max_length=max_length)["input_ids"] for t in texts]


def batches(ids: list[list[int]], pad_id: int, size: int = 64):
    for i in range(0, len(ids), size):
        chunk = ids[i:i + size]
        width = max(len(x) for x in chunk)
        input_ids = torch.tensor([x + [pad_id] * (width - len(x)) for x in chunk])
        yield {"input_ids": input_ids, "attention_mask": (input_ids != pad_id).long()}


@torch.no_grad()
def sentence_vectors(model, ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean-pooled, [CLS]) last hidden states, (N, C) each."""
    means, cls = [], []
    for batch in batches(ids, pad_id):
        hidden = model(**batch).last_hidden_state.float()  # (B, T, C)
        mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
        means.append((hidden * mask).sum(1) / mask.sum(1))
        cls.append(hidden[:, 0])
    return torch.cat(means), torch.cat(cls)


def anisotropy(vectors: torch.Tensor) -> float:
    unit = F.normalize(vectors, dim=-1)
    sims = unit @ unit.T  # (N, N)
    n = len(unit)
    return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))


def linear_probe(train_x, train_y, test_x, test_y, l2: float = 1e-2) -> float:
    """Logistic regression (standardised features, L2, LBFGS); test accuracy."""
    mean, std = train_x.mean(0), train_x.std(0) + 1e-6
    xs, xt = (train_x - mean) / std, (test_x - mean) / std
    w = torch.zeros(xs.shape[1], 2, requires_grad=True)
    b = torch.zeros(2, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(xs @ w + b, train_y) + l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((xt @ w + b).argmax(-1) == test_y).float().mean())


@torch.no_grad()
def mlm_answers(folder, init: str, tokenizer, ids: list[list[int]], seed: int = 0) -> dict[str, float] | None:
    config = AutoConfig.from_pretrained(folder)
    if not any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in (config.architectures or [])):
        return None
    torch.manual_seed(seed)
    model = (AutoModelForMaskedLM.from_config(config) if init == "random"
             else AutoModelForMaskedLM.from_pretrained(folder)).eval()
    frequent = {t for t, _ in Counter(i for x in ids for i in x[1:-1]).most_common(10)}
    collator = MaskingCollator(tokenizer, mlm_probability=0.15)
    predicted, correct, total = Counter(), 0, 0
    for start in range(0, len(ids), 64):
        batch = collator([{"input_ids": x} for x in ids[start:start + 64]], seed + start)
        labels = batch.pop("labels")
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, T, V)
        where = labels != -100
        guesses = logits[where].argmax(-1)
        predicted.update(guesses.tolist())
        correct += int((guesses == labels[where]).sum())
        total += int(where.sum())
    return {"mlm_accuracy": correct / total, "distinct_predictions": len(predicted),
            "frequent_word_share": sum(n for t, n in predicted.items() if t in frequent) / total}


def probe(folder: str, init: str, seed: int = 0) -> dict[str, float]:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    torch.manual_seed(seed)
    model = (AutoModel.from_config(AutoConfig.from_pretrained(folder)) if init == "random"
             else AutoModel.from_pretrained(folder)).eval()
    splits = load_dataset("movie-sentences", seed=0)
    labels = sorted({e.label for e in splits["train"]})
    pad = tokenizer.pad_token_id
    few = subsample(splits["train"], 0.1, seed=seed, stratify=True)
    vectors = {}
    for name, items in (("train", splits["train"]), ("few", few), ("test", splits["test"])):
        mean, cls = sentence_vectors(model, encode(tokenizer, [e.text for e in items]), pad)
        vectors[name] = (mean, cls, torch.tensor([labels.index(e.label) for e in items]))
    test_mean, test_cls, test_y = vectors["test"]
    out = {"anisotropy_mean_pooled": anisotropy(test_mean), "anisotropy_cls": anisotropy(test_cls),
           "probe_10pct": linear_probe(vectors["few"][0], vectors["few"][2], test_mean, test_y),
           "probe_100pct": linear_probe(vectors["train"][0], vectors["train"][2], test_mean, test_y)}
    answers = mlm_answers(folder, init, tokenizer, encode(tokenizer, [e.text for e in splits["test"]]), seed)
    return {**out, **(answers or {})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", help="pretrained model folder (with its tokenizer)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {init: {k: round(v, 4) for k, v in probe(args.folder, init, args.seed).items()}
              for init in ("random", "pretrained")}
    print(json.dumps({"folder": args.folder, **result}, indent=2))


if __name__ == "__main__":
    main()
